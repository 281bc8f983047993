//! `cleanse protocol run`: a protocol's runs (or one shard's), one after another in this
//! process, or several at once in processes of their own (`--jobs`, `pool.rs`). Complete runs
//! are skipped, unfinished ones resume, a failing run is reported and the rest go on (except the
//! runs that need it); a run another process holds is waited for.

use super::plan::{Plan, Role, Run, model_pairs};
use super::spec::{Models, Spec};
use crate::batch::{State, state};
use anyhow::{Context, Result, anyhow, bail};
use cleanse_core::data::{DataSpec, DatasetKind};
use std::path::Path;
use std::time::{Duration, Instant};

/// The class order that picks the targets of `single` and `supplement` model sets: GTSRB's
/// classes by frequency (the supplement attacks its most frequent ones), read from the data
/// when a spec on GTSRB uses such a set; class order otherwise.
fn class_order(spec: &Spec) -> Result<Option<Vec<usize>>> {
    let named = |m: &Models| matches!(m, Models::Single | Models::Supplement);
    let uses = named(&spec.models)
        || spec
            .attacks
            .iter()
            .any(|a| a.models.as_ref().is_some_and(named));
    if spec.dataset != "gtsrb" || !uses {
        return Ok(None);
    }
    let dir = spec.data.as_deref().expect("checked by the spec");
    let data = DataSpec::new(DatasetKind::Gtsrb, Some(dir.into()))
        .load()
        .with_context(|| format!("{}: reading the data set {dir}", spec.file.display()))?;
    Ok(Some(data.train.classes_by_frequency()))
}

/// The plan of `spec_path` into `out`, every command line checked by the command line's own
/// parser; an error names the spec's file, the line and the flag.
pub(crate) fn checked_plan(spec_path: &Path, out: &Path) -> Result<(Spec, Plan)> {
    let spec = Spec::read(spec_path)?;
    let order = class_order(&spec)?;
    let classes = order.as_ref().map_or(10, Vec::len);
    let plan = Plan::build(&spec, out, &|m| model_pairs(m, classes, order.as_deref()));
    check_commands(&spec, &plan, out)?;
    Ok((spec, plan))
}

/// Parses every run's command line as the command line would, naming the spec's file, line and
/// key of the first that fails.
pub(crate) fn check_commands(spec: &Spec, plan: &Plan, out: &Path) -> Result<()> {
    for r in &plan.runs {
        let words = r
            .words
            .iter()
            .cloned()
            .chain(["--out".to_string(), out.join(&r.name).display().to_string()]);
        if let Err(e) = crate::parse_command(words) {
            let msg = e.render().to_string();
            let msg = msg.lines().next().unwrap_or("").trim();
            let msg = msg.strip_prefix("error: ").unwrap_or(msg).to_string();
            let at = r
                .lines
                .iter()
                .find(|(key, _)| msg.contains(&format!("--{key}")))
                .map(|(key, line)| format!("{line}: `{key}`"))
                .unwrap_or_else(|| r.entry_line.to_string());
            bail!("{}:{at}: {msg} (in run {})", spec.file.display(), r.name);
        }
    }
    Ok(())
}

/// Whether `e` says another process holds a run directory.
pub(crate) fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<cleanse_core::Error>(),
            Some(cleanse_core::Error::Busy { .. })
        )
    })
}

/// What became of one run.
enum Outcome {
    Done,
    Skipped,
    Failed,
}

/// What became of a shard's runs.
#[derive(Default)]
pub(super) struct Tally<'a> {
    pub done: usize,
    pub skipped: usize,
    pub failed: Vec<&'a str>,
    /// Not run because a run they need failed (or was itself not run).
    pub blocked: Vec<&'a str>,
}

impl<'a> Tally<'a> {
    /// Whether `r` needs a run that failed or was not run; if so, `r` is counted (and reported)
    /// as not run.
    pub fn blocks(&mut self, r: &'a Run) -> bool {
        let need = r
            .needs
            .iter()
            .find(|n| self.failed.contains(&n.as_str()) || self.blocked.contains(&n.as_str()));
        if let Some(n) = need {
            eprintln!("protocol: {}: not run, it needs {n}, which failed", r.name);
            self.blocked.push(&r.name);
        }
        need.is_some()
    }
}

/// Says that another process holds `r`'s folder and this one waits for it.
pub(super) fn announce_held(r: &Run) {
    eprintln!(
        "protocol: {}: another process is running it; waiting",
        r.name
    );
}

/// The command line (without the program's name) that brings `r` to completion in `dir`:
/// `--resume` where it stopped, `--force` for a map drawn but not saved; `None` when it is
/// complete.
pub(super) fn command_words(r: &Run, dir: &Path) -> Option<Vec<String>> {
    let mut words = r.words.clone();
    match state(dir) {
        State::Complete => return None,
        State::Resume => words.push("--resume".into()),
        // A map whose picture was written but not its JSON (stopped in between) is redrawn.
        State::Fresh if r.role == Role::Map && dir.exists() => words.push("--force".into()),
        State::Fresh => {}
    }
    words.extend(["--out".to_string(), dir.display().to_string()]);
    Some(words)
}

/// Runs `r` to completion in this process unless it is complete already; waits while another
/// process holds it.
fn run_one(r: &Run, out: &Path, poll: Duration) -> Outcome {
    let dir = out.join(&r.name);
    let mut announced = false;
    loop {
        if cleanse_core::engine::run_dir::busy(&dir) {
            if !announced {
                announce_held(r);
                announced = true;
            }
            std::thread::sleep(poll);
            continue;
        }
        let Some(words) = command_words(r, &dir) else {
            // Complete already, or completed by the process it waited for.
            return Outcome::Skipped;
        };
        eprintln!("protocol: {}: cleanse {}", r.name, words.join(" "));
        match crate::run_command(words) {
            Ok(()) => return Outcome::Done,
            Err(e) if is_busy(&e) => {
                announced = true;
                std::thread::sleep(poll);
            }
            Err(e) => {
                eprintln!("protocol: {} FAILED: {e:#}", r.name);
                return Outcome::Failed;
            }
        }
    }
}

/// `runs` one after another in this process.
fn run_in_turn<'a>(runs: &[&'a Run], out: &Path, poll: Duration) -> Tally<'a> {
    let mut tally = Tally::default();
    for &r in runs {
        if tally.blocks(r) {
            continue;
        }
        match run_one(r, out, poll) {
            Outcome::Done => tally.done += 1,
            Outcome::Skipped => tally.skipped += 1,
            Outcome::Failed => tally.failed.push(&r.name),
        }
    }
    tally
}

/// Runs shard `index` of `count` of the protocol in `spec_path` into `out`, `jobs` runs at a
/// time (more than one: each in its own process).
pub(crate) fn run(
    spec_path: &Path,
    out: &Path,
    (index, count): (usize, usize),
    jobs: usize,
    poll: Duration,
    dry_run: bool,
    only: &[String],
) -> Result<()> {
    if jobs == 0 {
        bail!("--jobs: expected at least 1");
    }
    let (_, plan) = checked_plan(spec_path, out)?;
    if let Some(a) = only.iter().find(|a| !plan.attacks.contains(a)) {
        bail!(
            "--attacks: `{a}` is not a row of {} (its rows: {})",
            spec_path.display(),
            plan.attacks.join(", ")
        );
    }
    if dry_run {
        for r in plan.shard(index, count, only) {
            let dir = out.join(&r.name);
            println!("cleanse {} --out {}", r.words.join(" "), dir.display());
        }
        return Ok(());
    }
    plan.save(out)?;
    let mine = plan.shard(index, count, only);
    eprintln!(
        "protocol: {} runs in all; shard {index}/{count} has {} of them",
        plan.runs.len(),
        mine.len()
    );
    let t0 = Instant::now();
    let tally = if jobs == 1 {
        run_in_turn(&mine, out, poll)
    } else {
        super::pool::run_all(&mine, out, jobs, poll)?
    };
    let Tally {
        done,
        skipped,
        failed,
        blocked,
    } = tally;
    eprintln!(
        "protocol: shard {index}/{count}: {done} run, {skipped} complete already, {} failed, {} \
         not run for a failed one they need, {:.0} s",
        failed.len(),
        blocked.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failed.is_empty() || !blocked.is_empty() {
        return Err(anyhow!(
            "{}: failed: {failed:?}; not run: {blocked:?}",
            spec_path.display()
        ));
    }
    if count == 1 && only.is_empty() {
        // The whole protocol ran here: its table.
        super::table::write(&plan, out)?;
    }
    Ok(())
}

/// `i/n` with `i < n`.
pub(crate) fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("expected INDEX/COUNT (e.g. 0/4), got `{s}`"))?;
    let (i, n): (usize, usize) = (
        i.trim()
            .parse()
            .map_err(|_| format!("`{i}`: not a number"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("`{n}`: not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("expected 0 <= INDEX < COUNT, got {i}/{n}"));
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spec in the repository parses, and every command line it plans is one the command
    /// line accepts (GTSRB's targets by frequency stood in for by class order).
    #[test]
    fn the_repositorys_specs_plan_valid_commands() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("protocols/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let spec = Spec::read(&path).expect("spec");
            let plan = Plan::build(&spec, Path::new("out"), &|m| model_pairs(m, 43, None));
            check_commands(&spec, &plan, Path::new("out")).unwrap_or_else(|e| panic!("{e}"));
            assert!(!plan.runs.is_empty());
            n += 1;
        }
        assert!(n >= 3, "{n} specs");
    }
}
