//! A protocol's runs: every command line, its folder, what it needs first and its shard group.
//! The plan is a pure function of the spec and the output folder, so every shard of a cluster
//! job computes the same one.

use super::spec::{Flag, Models, Spec};
use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a run is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// A clean reference model (LC's attacks need one per seed).
    Clean,
    /// A backdoored model: a row's "No defense".
    Attack,
    /// A defense of one backdoored model.
    Defense,
    /// A t-SNE map of a model (`cleanse tsne`).
    Map,
}

/// One run: `cleanse WORDS... --out OUT/NAME`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    /// The run's folder under the protocol's output folder, e.g. `badnets/t0-s0/kd`.
    pub name: String,
    pub role: Role,
    /// The row (attack name), for attack and defense runs.
    pub attack: Option<String>,
    /// The column (defense name), for defense runs.
    pub defense: Option<String>,
    /// The model (`t{target}-s{seed}`), for attack and defense runs.
    pub model: Option<String>,
    /// The command line without the program name and without `--out`.
    pub words: Vec<String>,
    /// Runs that must be complete first, by name.
    pub needs: Vec<String>,
    /// Runs of one group go to one shard: an attack model with its defenses.
    pub group: String,
    /// The spec line the run comes from, and the flags with theirs (for errors).
    #[serde(skip)]
    pub lines: Vec<(String, usize)>,
    #[serde(skip)]
    pub entry_line: usize,
}

/// The rows, columns and models of a protocol, with its runs in an order that puts every run
/// after those it needs. Saved as `protocol.json` in the output folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub spec: PathBuf,
    pub attacks: Vec<String>,
    pub defenses: Vec<String>,
    pub models: Vec<String>,
    pub runs: Vec<Run>,
}

/// The (target, seed) pairs of `models`; `by_frequency` is the data set's class order for the
/// supplement's GTSRB targets (most frequent first), `None` for class order.
pub(crate) fn model_pairs(
    models: &Models,
    num_classes: usize,
    by_frequency: Option<&[usize]>,
) -> Vec<(usize, u64)> {
    let target = |rank: usize| by_frequency.map_or(rank, |o| o[rank]);
    match models {
        Models::Single => vec![(target(0), 0)],
        Models::Supplement => (0..5u64)
            .map(|s| (target(0), s))
            .chain((1..10.min(num_classes)).map(|r| (target(r), 0)))
            .collect(),
        Models::Explicit(v) => v.clone(),
    }
}

pub(crate) fn model_name((target, seed): (usize, u64)) -> String {
    format!("t{target}-s{seed}")
}

fn flag_words(flags: &[Flag]) -> Vec<String> {
    flags.iter().flat_map(Flag::words).collect()
}

fn flag_lines(flags: &[Flag]) -> Vec<(String, usize)> {
    flags.iter().map(|f| (f.key.clone(), f.line)).collect()
}

impl Plan {
    /// The plan of `spec` into `out`; `resolve` gives the (target, seed) pairs of a model set
    /// ([`model_pairs`] with the data set's class order).
    pub fn build(spec: &Spec, out: &Path, resolve: &dyn Fn(&Models) -> Vec<(usize, u64)>) -> Plan {
        let data: Vec<String> = std::iter::once("--dataset".to_string())
            .chain([spec.dataset.clone()])
            .chain(
                spec.data
                    .iter()
                    .flat_map(|d| ["--data".to_string(), d.clone()]),
            )
            .collect();
        let common = flag_words(&spec.common);
        // The protocol's flags a run does not set itself: a run's own flag (an attack's or a
        // defense's `precision`, `threads`, ...) wins over the protocol's.
        let common_for = |own: &[Flag]| -> Vec<Flag> {
            spec.common
                .iter()
                .filter(|c| own.iter().all(|f| f.key != c.key))
                .cloned()
                .collect()
        };
        let path = |name: &str| out.join(name).display().to_string();
        let protocol_pairs = resolve(&spec.models);
        // Each attack's models, in the order of `spec.attacks`.
        let attack_pairs: Vec<Vec<(usize, u64)>> = spec
            .attacks
            .iter()
            .map(|a| a.models.as_ref().map_or(protocol_pairs.clone(), resolve))
            .collect();
        // Every model in the order first planned, for the table's header.
        let mut all_pairs: Vec<(usize, u64)> = Vec::new();
        for &p in attack_pairs.iter().flatten() {
            if !all_pairs.contains(&p) {
                all_pairs.push(p);
            }
        }
        // A clean reference per seed: of every model with [clean], else of LC's models.
        let mut clean_seeds: Vec<u64> = spec
            .attacks
            .iter()
            .zip(&attack_pairs)
            .filter(|(a, _)| spec.clean.is_some() || a.kind == "lc")
            .flat_map(|(_, pairs)| pairs.iter().map(|p| p.1))
            .collect();
        clean_seeds.sort_unstable();
        clean_seeds.dedup();
        let clean_flags = spec.clean.clone().unwrap_or_default();
        let mut runs = Vec::new();
        for &seed in &clean_seeds {
            let name = format!("clean/s{seed}");
            runs.push(Run {
                name: name.clone(),
                role: Role::Clean,
                attack: None,
                defense: None,
                model: None,
                words: ["train".to_string()]
                    .into_iter()
                    .chain(data.clone())
                    .chain(flag_words(&clean_flags))
                    .chain(["--seed".into(), seed.to_string()])
                    .chain(flag_words(&common_for(&clean_flags)))
                    .collect(),
                needs: Vec::new(),
                group: name,
                lines: flag_lines(&[clean_flags.clone(), common_for(&clean_flags)].concat()),
                entry_line: 0,
            });
        }
        // A t-SNE map of the model in run `of` (`cleanse tsne`), in the same group.
        let map = |of: &str, group: &str, line: usize| Run {
            name: format!("{of}-tsne.png"),
            role: Role::Map,
            attack: None,
            defense: None,
            model: None,
            words: ["tsne".to_string(), "--model".into(), path(of)]
                .into_iter()
                .chain(common.clone())
                .collect(),
            needs: vec![of.to_string()],
            group: group.to_string(),
            lines: flag_lines(&spec.common),
            entry_line: line,
        };
        for &pair in &all_pairs {
            let model = model_name(pair);
            let with_pair = spec.attacks.iter().zip(&attack_pairs);
            for (a, _) in with_pair.filter(|(_, pairs)| pairs.contains(&pair)) {
                let teacher = format!("{}/{model}/attack", a.name);
                let group = format!("{}/{model}", a.name);
                let mut words: Vec<String> = ["attack".to_string(), a.kind.clone()]
                    .into_iter()
                    .chain(data.clone())
                    .chain(flag_words(&a.flags))
                    .chain([
                        "--target".into(),
                        pair.0.to_string(),
                        "--seed".into(),
                        pair.1.to_string(),
                    ])
                    .chain(flag_words(&common_for(&a.flags)))
                    .collect();
                let mut needs = Vec::new();
                if a.kind == "lc" {
                    let clean = format!("clean/s{}", pair.1);
                    words.extend(["--clean-model".to_string(), path(&clean)]);
                    needs.push(clean);
                }
                runs.push(Run {
                    name: teacher.clone(),
                    role: Role::Attack,
                    attack: Some(a.name.clone()),
                    defense: None,
                    model: Some(model.clone()),
                    words,
                    needs,
                    group: group.clone(),
                    lines: flag_lines(&[a.flags.clone(), common_for(&a.flags)].concat()),
                    entry_line: a.line,
                });
                if a.tsne {
                    runs.push(map(&teacher, &group, a.line));
                }
                for d in spec.defenses.iter().filter(|d| d.applies_to(a)) {
                    let name = format!("{group}/{}", d.name);
                    runs.push(Run {
                        name: name.clone(),
                        role: Role::Defense,
                        attack: Some(a.name.clone()),
                        defense: Some(d.name.clone()),
                        model: Some(model.clone()),
                        words: ["defend".to_string(), d.method.clone()]
                            .into_iter()
                            .chain(["--model".to_string(), path(&teacher)])
                            .chain(flag_words(&d.flags))
                            .chain(flag_words(&common_for(&d.flags)))
                            .collect(),
                        needs: vec![teacher.clone()],
                        group: group.clone(),
                        lines: flag_lines(&[d.flags.clone(), common_for(&d.flags)].concat()),
                        entry_line: d.line,
                    });
                    if d.tsne {
                        runs.push(map(&name, &group, d.line));
                    }
                }
            }
        }
        Plan {
            spec: spec.file.clone(),
            attacks: spec.attacks.iter().map(|a| a.name.clone()).collect(),
            defenses: spec.defenses.iter().map(|d| d.name.clone()).collect(),
            models: all_pairs.iter().map(|&p| model_name(p)).collect(),
            runs,
        }
    }

    /// The groups in plan order.
    pub fn groups(&self) -> Vec<&str> {
        let mut g: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !g.contains(&r.group.as_str()) {
                g.push(&r.group);
            }
        }
        g
    }

    /// The runs of shard `index` of `count`: its groups (every `count`-th, from `index`, of the
    /// groups of the attacks `only` names, or of all when it is empty), and the runs those need
    /// from other groups, in plan order.
    pub fn shard(&self, index: usize, count: usize, only: &[String]) -> Vec<&Run> {
        let groups: Vec<&str> = self
            .groups()
            .into_iter()
            .filter(|g| {
                only.is_empty()
                    || self.runs.iter().any(|r| {
                        r.group == *g && r.attack.as_ref().is_some_and(|a| only.contains(a))
                    })
            })
            .collect();
        let mine: Vec<&str> = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| i % count == index)
            .map(|(_, g)| *g)
            .collect();
        let mut wanted: Vec<&str> = self
            .runs
            .iter()
            .filter(|r| mine.contains(&r.group.as_str()))
            .map(|r| r.name.as_str())
            .collect();
        // Dependencies (a clean reference) outside the shard's own groups, transitively.
        let mut i = 0;
        while i < wanted.len() {
            let r = self.run(wanted[i]).expect("a planned run");
            for n in &r.needs {
                if !wanted.contains(&n.as_str()) {
                    wanted.push(n);
                }
            }
            i += 1;
        }
        self.runs
            .iter()
            .filter(|r| wanted.contains(&r.name.as_str()))
            .collect()
    }

    pub fn run(&self, name: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.name == name)
    }

    /// The protocol's name: its spec's file name without `.toml`.
    pub fn name(&self) -> String {
        self.spec
            .file_stem()
            .map_or_else(|| "protocol".into(), |s| s.to_string_lossy().into_owned())
    }

    /// Saves the plan as `out/protocols/<name>.json` (atomically: every shard writes the same).
    pub fn save(&self, out: &Path) -> Result<()> {
        let dir = out.join(PLANS_DIR);
        cleanse_core::io::create_dir_all(&dir)?;
        cleanse_core::io::write_json_atomic(&dir.join(format!("{}.json", self.name())), self)?;
        Ok(())
    }

    /// The plans of the protocols run into `out` (several specs may share one output folder,
    /// and with it the runs they have in common), by name.
    pub fn read_all(out: &Path) -> Result<Vec<Plan>> {
        let dir = out.join(PLANS_DIR);
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            anyhow!(
                "{}: {e} (is {} the output folder of `cleanse protocol run`?)",
                dir.display(),
                out.display()
            )
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| cleanse_core::io::read_json(f).map_err(anyhow::Error::from))
            .collect()
    }
}

/// The folder of the plans in an output folder.
pub(crate) const PLANS_DIR: &str = "protocols";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::spec::Spec;

    fn spec() -> Spec {
        Spec::parse(
            Path::new("p.toml"),
            r#"
[protocol]
dataset = "synthetic"
models = "supplement"
flags = { threads = 1 }
[[attack]]
kind = "lc"
[[attack]]
kind = "badnets"
[[defense]]
method = "kd"
[[defense]]
method = "ft"
attacks = ["badnets"]
"#,
        )
        .expect("spec")
    }

    #[test]
    fn rows_with_their_own_models_maps_and_clean_references() {
        let spec = Spec::parse(
            Path::new("p.toml"),
            r#"
[protocol]
dataset = "synthetic"
models = [{ target = 0, seed = 1 }, { target = 0, seed = 2 }]
[clean]
flags = { epochs = 2 }
[[attack]]
kind = "badnets"
tsne = true
[[attack]]
kind = "blended"
models = [{ target = 0, seed = 1 }]
[[defense]]
method = "kd"
flags = { seed = 3 }
tsne = true
attacks = ["blended"]
"#,
        )
        .expect("spec");
        let plan = Plan::build(&spec, Path::new("o"), &|m| model_pairs(m, 10, None));
        let names: Vec<&str> = plan.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "clean/s1",
                "clean/s2",
                "badnets/t0-s1/attack",
                "badnets/t0-s1/attack-tsne.png",
                "blended/t0-s1/attack",
                "blended/t0-s1/kd",
                "blended/t0-s1/kd-tsne.png",
                "badnets/t0-s2/attack",
                "badnets/t0-s2/attack-tsne.png",
            ]
        );
        let map = plan.run("blended/t0-s1/kd-tsne.png").expect("map");
        assert_eq!(map.words[..3], ["tsne", "--model", "o/blended/t0-s1/kd"]);
        assert_eq!(map.needs, ["blended/t0-s1/kd"]);
        assert!(
            plan.run("blended/t0-s1/kd")
                .expect("kd")
                .words
                .ends_with(&["--seed".into(), "3".into()])
        );
        assert_eq!(plan.models, ["t0-s1", "t0-s2"]);
    }

    /// A flag an attack or a defense sets itself replaces the protocol's flag of that name
    /// (e.g. ANP and I-BAU in f32 in a protocol that trains in f16); the others keep it.
    #[test]
    fn a_runs_own_flag_wins_over_the_protocols() {
        let spec = Spec::parse(
            Path::new("p.toml"),
            r#"
[protocol]
dataset = "synthetic"
flags = { device = "wgpu", precision = "f16" }
[[attack]]
kind = "badnets"
flags = { device = "cpu", precision = "f32" }
[[defense]]
method = "ft"
[[defense]]
method = "anp"
flags = { precision = "f32" }
"#,
        )
        .expect("spec");
        let plan = Plan::build(&spec, Path::new("o"), &|m| model_pairs(m, 10, None));
        let value = |run: &str, flag: &str| -> Vec<String> {
            let w = &plan.run(run).expect("run").words;
            w.windows(2)
                .filter(|p| p[0] == flag)
                .map(|p| p[1].clone())
                .collect()
        };
        assert_eq!(value("badnets/t0-s0/attack", "--precision"), ["f32"]);
        assert_eq!(value("badnets/t0-s0/attack", "--device"), ["cpu"]);
        assert_eq!(value("badnets/t0-s0/ft", "--precision"), ["f16"]);
        assert_eq!(value("badnets/t0-s0/anp", "--precision"), ["f32"]);
        assert_eq!(value("badnets/t0-s0/anp", "--device"), ["wgpu"]);
    }

    #[test]
    fn the_supplements_models_and_every_run_after_what_it_needs() {
        let pairs = model_pairs(
            &Models::Supplement,
            43,
            Some(&(0..43).rev().collect::<Vec<_>>()),
        );
        assert_eq!(pairs.len(), 14);
        assert_eq!(&pairs[..5], &[(42, 0), (42, 1), (42, 2), (42, 3), (42, 4)]);
        assert_eq!(pairs[5], (41, 0));
        assert_eq!(pairs[13], (33, 0));
        let cifar = model_pairs(&Models::Supplement, 10, None);
        assert_eq!(cifar[13], (9, 0));
        let plan = Plan::build(&spec(), Path::new("out"), &|m| model_pairs(m, 10, None));
        // 5 clean references (seeds 0-4), 14 x (lc + kd, badnets + kd + ft).
        assert_eq!(plan.runs.len(), 5 + 14 * 5);
        for (i, r) in plan.runs.iter().enumerate() {
            for n in &r.needs {
                let j = plan
                    .runs
                    .iter()
                    .position(|x| &x.name == n)
                    .expect("planned");
                assert!(j < i, "{} before {}", n, r.name);
            }
        }
        let lc = plan.run("lc/t3-s0/attack").expect("lc");
        assert_eq!(lc.needs, ["clean/s0"]);
        assert!(
            lc.words
                .windows(2)
                .any(|w| w == ["--clean-model", "out/clean/s0"])
        );
        assert!(lc.words.windows(2).any(|w| w == ["--target", "3"]));
        assert!(plan.run("lc/t3-s0/ft").is_none());
        let ft = plan.run("badnets/t0-s4/ft").expect("ft");
        assert_eq!(
            ft.words,
            [
                "defend",
                "ft",
                "--model",
                "out/badnets/t0-s4/attack",
                "--threads",
                "1"
            ]
        );
        // Shards: disjoint groups, together all runs; a shard with an LC model also plans the
        // clean reference it needs.
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..4 {
            let mine = plan.shard(k, 4, &[]);
            for r in &mine {
                for n in &r.needs {
                    assert!(mine.iter().any(|x| &x.name == n), "{n} in shard {k}");
                }
                if r.role != Role::Clean {
                    assert!(seen.insert(r.name.clone()), "{} twice", r.name);
                }
            }
        }
        assert_eq!(seen.len(), 14 * 5);
        // One row only: its groups, and the clean references LC needs.
        let lc = plan.shard(0, 1, &["lc".to_string()]);
        assert!(
            lc.iter()
                .all(|r| r.attack.as_deref() == Some("lc") || r.role == Role::Clean)
        );
        assert_eq!(lc.len(), 5 + 14 * 2);
    }
}
