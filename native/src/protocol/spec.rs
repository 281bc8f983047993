//! A protocol spec: the TOML file that names an experiment (data set, attacks, defenses, the
//! models per attack), read with every key's line so that a mistake is reported where it is.
//!
//! ```toml
//! [protocol]
//! dataset = "cifar10"                        # cifar10 | gtsrb | folder | synthetic
//! data = "../shared/data/cifar10-subset"     # the data set's directory (not for synthetic)
//! models = "single"                          # single | supplement | [{ target = 3, seed = 1 }, ...]
//! flags = { device = "cpu", threads = 1 }    # given to every run
//!
//! [clean]                                    # the clean reference, optional
//! flags = { preset = "subset" }              # `train` flags
//!
//! [[attack]]
//! kind = "badnets"                           # badnets | blended | sig | lc | wanet | iab
//! name = "badnets"                           # the row and its folder (default: the kind)
//! flags = { preset = "subset" }              # `attack` flags
//! poison_rates = [0.01, 0.05]                # optional: one row per rate (name-p1, name-p5)
//! models = [{ target = 0, seed = 1 }]        # optional: this row's models instead
//! tsne = true                                # optional: a t-SNE map of each model
//!
//! [[defense]]
//! method = "kd"                              # kd | ft | fp | nad | mcr | anp | ibau
//! name = "kd"                                # the column and its folder (default: the method)
//! flags = { epochs = 20 }                    # `defend <method>` flags
//! attacks = ["badnets"]                      # optional: only on these rows
//! tsne = true                                # optional: a t-SNE map of each defended model
//! ```
//!
//! With `[clean]`, a clean reference is trained for every seed of the models (LC makes its
//! adversarial images on it); without it, only where an LC attack needs one (default settings).
//!
//! A flag's key is the command-line flag without its dashes; `true` gives a switch, `false`
//! leaves it out, an array becomes a comma-separated list.

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Flags of one command, each key with its place in the file.
pub(crate) type RawFlags = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    protocol: RawProtocol,
    clean: Option<Spanned<RawClean>>,
    #[serde(default)]
    attack: Vec<RawAttack>,
    #[serde(default)]
    defense: Vec<RawDefense>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    dataset: Spanned<String>,
    data: Option<Spanned<String>>,
    models: Option<Spanned<toml::Value>>,
    #[serde(default)]
    flags: RawFlags,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClean {
    #[serde(default)]
    flags: RawFlags,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttack {
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(default)]
    flags: RawFlags,
    poison_rates: Option<Spanned<Vec<f64>>>,
    models: Option<Spanned<toml::Value>>,
    #[serde(default)]
    tsne: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefense {
    method: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(default)]
    flags: RawFlags,
    attacks: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    tsne: bool,
}

/// One command-line flag from the spec, with the line it was written on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Flag {
    /// Without dashes, e.g. `poison-rate`.
    pub key: String,
    /// The words after `--key`: none for a switch, one otherwise.
    pub value: Option<String>,
    pub line: usize,
}

impl Flag {
    /// `--key [value]`.
    pub fn words(&self) -> Vec<String> {
        match &self.value {
            // `--lr=-1`: a value that starts with a dash is not read as a flag of its own.
            Some(v) if v.starts_with('-') => vec![format!("--{}={v}", self.key)],
            v => std::iter::once(format!("--{}", self.key))
                .chain(v.clone())
                .collect(),
        }
    }
}

/// The models of each attack: a target class and a seed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Models {
    /// One model: the first target (CIFAR-10: class 0; GTSRB: its most frequent class), seed 0.
    Single,
    /// The supplement's 14: the first target at seeds 0-4, then the next nine targets at seed 0
    /// (GTSRB: its ten most frequent classes in order).
    Supplement,
    /// Exactly these (target class, seed) pairs.
    Explicit(Vec<(usize, u64)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AttackEntry {
    pub kind: String,
    pub name: String,
    pub flags: Vec<Flag>,
    /// This attack's models, when not the protocol's.
    pub models: Option<Models>,
    /// A t-SNE map of each of its models (`cleanse tsne`).
    pub tsne: bool,
    /// The line of `kind`.
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DefenseEntry {
    pub method: String,
    pub name: String,
    pub flags: Vec<Flag>,
    /// Only on these attacks (all when `None`).
    pub attacks: Option<Vec<String>>,
    /// A t-SNE map of each defended model.
    pub tsne: bool,
    /// The line of `method`.
    pub line: usize,
}

/// A parsed spec: every name checked, every flag with its line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Spec {
    pub file: PathBuf,
    pub dataset: String,
    pub data: Option<String>,
    pub models: Models,
    pub common: Vec<Flag>,
    pub clean: Option<Vec<Flag>>,
    pub attacks: Vec<AttackEntry>,
    pub defenses: Vec<DefenseEntry>,
}

/// Flags the protocol sets itself on every run.
const RESERVED: [&str; 5] = ["out", "dataset", "data", "resume", "help"];
/// ... on the runs that train a model (from the model's target and seed); their `model` (the
/// architecture) is the spec's to give.
const RESERVED_TRAINING: [&str; 3] = ["target", "seed", "clean-model"];
/// ... and on the defenses: their `model` is the suspect, a run of the protocol.
const RESERVED_DEFENSE: [&str; 1] = ["model"];

/// The 1-based line of byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Which command a set of flags is for.
#[derive(Clone, Copy, PartialEq)]
enum For {
    /// `train` or `attack`: the protocol sets the target and seed.
    Training,
    /// `defend`: the protocol sets the model.
    Defense,
    /// `[protocol]`'s flags, given to every run.
    Every,
}

fn flags(file: &Path, text: &str, raw: RawFlags, role: For) -> Result<Vec<Flag>> {
    let mut out = Vec::new();
    for (k, v) in raw {
        let line = line_of(text, k.span().start);
        let key = k.into_inner().replace('_', "-");
        let k = key.as_str();
        if RESERVED.contains(&k)
            || (role != For::Defense && RESERVED_TRAINING.contains(&k))
            || (role != For::Training && RESERVED_DEFENSE.contains(&k))
        {
            bail!(
                "{}:{line}: `{key}`: set by the protocol itself, not a flag a spec may give",
                file.display()
            );
        }
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!(
                    "{}:{line}: `{key}`: expected a string, number, boolean or list of them, got \
                     {}",
                    file.display(),
                    other.type_str()
                ),
            })
        };
        let value = match v.get_ref() {
            toml::Value::Boolean(true) => None,
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(a) => {
                Some(a.iter().map(scalar).collect::<Result<Vec<_>>>()?.join(","))
            }
            other => Some(scalar(other)?),
        };
        out.push(Flag { key, value, line });
    }
    Ok(out)
}

/// A folder name: letters, digits, `-`, `_` and `.`, not starting with a dot.
fn check_name(file: &Path, line: usize, what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "{}:{line}: {what} name `{name}`: expected letters, digits, `-`, `_` or `.` (it names \
             a folder)",
            file.display()
        );
    }
    Ok(())
}

fn models(file: &Path, text: &str, raw: Option<Spanned<toml::Value>>) -> Result<Models> {
    let Some(raw) = raw else {
        return Ok(Models::Single);
    };
    let line = line_of(text, raw.span().start);
    let bad = || {
        anyhow!(
            "{}:{line}: `models`: expected \"single\", \"supplement\" or a list of \
             {{ target = T, seed = S }}",
            file.display()
        )
    };
    match raw.into_inner() {
        toml::Value::String(s) if s == "single" => Ok(Models::Single),
        toml::Value::String(s) if s == "supplement" => Ok(Models::Supplement),
        toml::Value::Array(a) if !a.is_empty() => {
            let mut pairs = Vec::new();
            for m in a {
                let t = m.as_table().ok_or_else(bad)?;
                if t.keys().any(|k| k != "target" && k != "seed") {
                    return Err(bad());
                }
                let target = t.get("target").and_then(toml::Value::as_integer);
                let seed = t.get("seed").and_then(toml::Value::as_integer);
                match (target, seed) {
                    (Some(target), Some(seed)) if target >= 0 && seed >= 0 => {
                        pairs.push((target as usize, seed as u64))
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(Models::Explicit(pairs))
        }
        _ => Err(bad()),
    }
}

impl Spec {
    /// Parses `text`, the contents of `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Spec> {
        let raw: RawSpec = toml::from_str(text)
            .map_err(|e| anyhow!("{}: {}", file.display(), e.to_string().trim()))?;
        let p = raw.protocol;
        let dataset_line = line_of(text, p.dataset.span().start);
        let dataset = p.dataset.into_inner();
        let known = ["cifar10", "gtsrb", "folder", "synthetic"];
        if !known.contains(&dataset.as_str()) {
            bail!(
                "{}:{dataset_line}: dataset `{dataset}`: expected one of {}",
                file.display(),
                known.join(", ")
            );
        }
        let data = p.data.map(Spanned::into_inner);
        if data.is_none() && dataset != "synthetic" {
            bail!(
                "{}:{dataset_line}: dataset `{dataset}` needs `data = \"DIR\"` in [protocol]",
                file.display()
            );
        }
        let protocol_models = models(file, text, p.models)?;
        let common = flags(file, text, p.flags, For::Every)?;
        let clean = match raw.clean {
            Some(c) => Some(flags(file, text, c.into_inner().flags, For::Training)?),
            None => None,
        };
        let mut attacks: Vec<AttackEntry> = Vec::new();
        for a in raw.attack {
            let line = line_of(text, a.kind.span().start);
            let kind = a.kind.into_inner();
            let name = a
                .name
                .map(Spanned::into_inner)
                .unwrap_or_else(|| kind.clone());
            check_name(file, line, "attack", &name)?;
            let base = flags(file, text, a.flags, For::Training)?;
            let own_models = match a.models {
                Some(m) => Some(models(file, text, Some(m))?),
                None => None,
            };
            let tsne = a.tsne;
            match a.poison_rates {
                None => attacks.push(AttackEntry {
                    kind,
                    name,
                    flags: base,
                    models: own_models,
                    tsne,
                    line,
                }),
                Some(rates) => {
                    let rates_line = line_of(text, rates.span().start);
                    if base.iter().any(|f| f.key == "poison-rate") {
                        bail!(
                            "{}:{rates_line}: `poison_rates` and the flag `poison-rate` together",
                            file.display()
                        );
                    }
                    if rates.get_ref().is_empty() {
                        bail!(
                            "{}:{rates_line}: `poison_rates` is empty; give at least one rate, or \
                             leave the key out for the attack's own rate",
                            file.display()
                        );
                    }
                    for r in rates.into_inner() {
                        if !(r > 0.0 && r <= 1.0) {
                            bail!(
                                "{}:{rates_line}: poison rate {r}: expected a number in (0, 1]",
                                file.display()
                            );
                        }
                        let mut flags = base.clone();
                        flags.push(Flag {
                            key: "poison-rate".into(),
                            value: Some(r.to_string()),
                            line: rates_line,
                        });
                        attacks.push(AttackEntry {
                            kind: kind.clone(),
                            name: format!("{name}-p{}", (r * 1000.0).round() / 10.0),
                            flags,
                            models: own_models.clone(),
                            tsne,
                            line,
                        });
                    }
                }
            }
        }
        let mut defenses: Vec<DefenseEntry> = Vec::new();
        for d in raw.defense {
            let line = line_of(text, d.method.span().start);
            let method = d.method.into_inner();
            let name = d
                .name
                .map(Spanned::into_inner)
                .unwrap_or_else(|| method.clone());
            check_name(file, line, "defense", &name)?;
            let restrict = match d.attacks {
                Some(list) => {
                    let l = line_of(text, list.span().start);
                    let list = list.into_inner();
                    for a in &list {
                        if !attacks
                            .iter()
                            .any(|x| x.name == *a || x.name.starts_with(&format!("{a}-p")))
                        {
                            bail!(
                                "{}:{l}: `attacks`: no attack named `{a}` in this spec",
                                file.display()
                            );
                        }
                    }
                    Some(list)
                }
                None => None,
            };
            defenses.push(DefenseEntry {
                method,
                name,
                flags: flags(file, text, d.flags, For::Defense)?,
                attacks: restrict,
                tsne: d.tsne,
                line,
            });
        }
        for (what, names) in [
            (
                "attack",
                attacks
                    .iter()
                    .map(|a| (&a.name, a.line))
                    .collect::<Vec<_>>(),
            ),
            (
                "defense",
                defenses.iter().map(|d| (&d.name, d.line)).collect(),
            ),
        ] {
            for (i, (n, line)) in names.iter().enumerate() {
                if names[..i].iter().any(|(m, _)| m == n) {
                    bail!(
                        "{}:{line}: a second {what} named `{n}` (give it `name = \"...\"`)",
                        file.display()
                    );
                }
                if *n == "clean" || *n == "attack" {
                    bail!(
                        "{}:{line}: `{n}` is a name the protocol uses itself",
                        file.display()
                    );
                }
            }
        }
        if attacks.is_empty() {
            bail!("{}: no [[attack]]", file.display());
        }
        Ok(Spec {
            file: file.to_path_buf(),
            dataset,
            data,
            models: protocol_models,
            common,
            clean,
            attacks,
            defenses,
        })
    }

    /// Reads and parses `file`.
    pub fn read(file: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        Spec::parse(file, &text)
    }
}

impl DefenseEntry {
    /// Whether this defense runs on `attack`.
    pub fn applies_to(&self, attack: &AttackEntry) -> bool {
        self.attacks.as_ref().is_none_or(|list| {
            list.iter()
                .any(|a| attack.name == *a || attack.name.starts_with(&format!("{a}-p")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
[protocol]
dataset = "synthetic"
models = [{ target = 1, seed = 0 }, { target = 2, seed = 3 }]
flags = { device = "cpu", threads = 1 }

[[attack]]
kind = "badnets"
flags = { width = 4, all_to_all = false, no_flip = true }
poison_rates = [0.05, 0.2]

[[attack]]
kind = "blended"
name = "blend"

[[defense]]
method = "ft"
flags = { epochs = 2, lr = 0.02 }
attacks = ["badnets"]

[[defense]]
method = "kd"
name = "kd-s3"
flags = { init = "single:3", ratios = [0.1, 0.2] }
"#;

    #[test]
    fn a_spec_names_its_rows_columns_models_and_flags() {
        let s = Spec::parse(Path::new("p.toml"), SPEC).expect("valid");
        assert_eq!(s.models, Models::Explicit(vec![(1, 0), (2, 3)]));
        let names: Vec<&str> = s.attacks.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["badnets-p5", "badnets-p20", "blend"]);
        let bad = &s.attacks[0];
        assert_eq!(
            bad.flags.iter().flat_map(Flag::words).collect::<Vec<_>>(),
            ["--no-flip", "--width", "4", "--poison-rate", "0.05"]
        );
        assert_eq!(bad.flags[0].line, 9);
        // An attack's architecture is the spec's to give.
        let text = SPEC.replacen("width = 4,", "width = 4, model = \"resnet18-imagenet\",", 1);
        let s2 = Spec::parse(Path::new("p.toml"), &text).expect("an attack's model");
        assert!(
            s2.attacks[0]
                .flags
                .iter()
                .any(|f| f.key == "model" && f.value.as_deref() == Some("resnet18-imagenet"))
        );
        assert_eq!(s.defenses[1].name, "kd-s3");
        assert_eq!(s.defenses[1].flags[1].value.as_deref(), Some("0.1,0.2"));
        assert!(s.defenses[0].applies_to(&s.attacks[1]));
        assert!(!s.defenses[0].applies_to(&s.attacks[2]));
        assert!(s.defenses[1].applies_to(&s.attacks[2]));
    }

    #[test]
    fn mistakes_name_the_file_line_and_key() {
        for (from, to, needle) in [
            (
                "dataset = \"synthetic\"",
                "dataset = \"mnist\"",
                "p.toml:3: dataset `mnist`",
            ),
            (
                "kind = \"blended\"",
                "kind = \"blended\"\ncolour = 1",
                "unknown field `colour`",
            ),
            (
                "threads = 1 }",
                "threads = 1, out = \"x\" }",
                "p.toml:5: `out`: set by the protocol",
            ),
            (
                "attacks = [\"badnets\"]",
                "attacks = [\"sig\"]",
                "p.toml:19: `attacks`: no attack named `sig`",
            ),
            (
                "name = \"kd-s3\"",
                "name = \"blend\"\n[[defense]]\nmethod = \"ft\"",
                "a second defense named `ft`",
            ),
            (
                "lr = 0.02 }",
                "lr = { x = 1 } }",
                "p.toml:18: `lr`: expected a string",
            ),
            ("seed = 3 }]", "seed = -3 }]", "p.toml:4: `models`"),
            // `--model` is a defense's suspect, the protocol's to set; an attack's architecture.
            (
                "lr = 0.02 }",
                "lr = 0.02, model = \"x\" }",
                "p.toml:18: `model`: set by the protocol",
            ),
            (
                "threads = 1 }",
                "threads = 1, model = \"resnet18\" }",
                "p.toml:5: `model`: set by the protocol",
            ),
            (
                "no_flip = true }",
                "no_flip = true, seed = 2 }",
                "p.toml:9: `seed`: set by the protocol",
            ),
            ("name = \"blend\"", "name = \"../x\"", "attack name `../x`"),
            ("[0.05, 0.2]", "[0.05, 2.0]", "p.toml:10: poison rate 2"),
            ("[0.05, 0.2]", "[]", "p.toml:10: `poison_rates` is empty"),
        ] {
            assert!(SPEC.contains(from), "{from}");
            let text = SPEC.replacen(from, to, 1);
            let e = Spec::parse(Path::new("p.toml"), &text)
                .expect_err(needle)
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.starts_with("p.toml"), "{e}");
        }
    }

    /// A negative value is passed as `--key=value`, so that it is not read as a flag.
    #[test]
    fn negative_values_stay_values() {
        let f = Flag {
            key: "lr".into(),
            value: Some("-1".into()),
            line: 1,
        };
        assert_eq!(f.words(), ["--lr=-1"]);
        let g = Flag {
            key: "epochs".into(),
            value: Some("3".into()),
            line: 1,
        };
        assert_eq!(g.words(), ["--epochs", "3"]);
    }
}
