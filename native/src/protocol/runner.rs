//! `cleanse protocol run`: a protocol's runs (or one shard's), one after another in this
//! process, or several at once in processes of their own (`--jobs`, `pool.rs`). Complete runs
//! are skipped, unfinished ones resume, a failing run is reported and the rest go on (except the
//! runs that need it); a run another process holds is waited for.

use super::archive::{Archive, EntryStatus, Manifest, Restored};
use super::exec::{Tally, announce_held, archive_run, command_words};
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

/// The classes of the spec's data set where they are known without reading it (an image
/// folder's are counted when read).
fn classes_of(spec: &Spec) -> Option<usize> {
    match spec.dataset.as_str() {
        "cifar10" | "synthetic" => Some(10),
        "gtsrb" => Some(cleanse_core::data::gtsrb::NUM_CLASSES),
        _ => None,
    }
}

/// Parses every run's command line as the command line would and checks its settings as its run
/// would before any work, naming the spec's file, line and key of the first that fails.
pub(crate) fn check_commands(spec: &Spec, plan: &Plan, out: &Path) -> Result<()> {
    for r in &plan.runs {
        let words = r
            .words
            .iter()
            .cloned()
            .chain(["--out".to_string(), out.join(&r.name).display().to_string()]);
        // The command line's own parser first, then the settings its run would check before
        // any work (the target class against the data set's classes).
        let checked = crate::parse_command(words)
            .map_err(|e| {
                let msg = e.render().to_string();
                let msg = msg.lines().next().unwrap_or("").trim();
                msg.strip_prefix("error: ").unwrap_or(msg).to_string()
            })
            .and_then(|m| crate::check_planned(&m, classes_of(spec)));
        if let Err(msg) = checked {
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

/// Whether `e` says its run directory holds a finished run of the same settings (nothing to
/// do; a finished run of other settings is an error that names them).
pub(crate) fn is_complete(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<cleanse_core::Error>(),
            Some(cleanse_core::Error::Complete { .. })
        )
    })
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
    /// Run here, in this long.
    Done(Duration),
    Skipped,
    Failed,
}

/// Runs `r` to completion in this process unless it is complete already; waits while another
/// process holds it.
fn run_one(r: &Run, out: &Path, poll: Duration) -> Outcome {
    let started = Instant::now();
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
        let finished = state(&dir) == State::Complete;
        if !finished {
            errln!("protocol: {}: cleanse {}", r.name, words.join(" "));
        }
        match crate::run_command(words) {
            Ok(()) => return Outcome::Done(started.elapsed()),
            Err(e) if is_complete(&e) => return Outcome::Skipped,
            Err(e) if is_busy(&e) => {
                announced = true;
                std::thread::sleep(poll);
            }
            Err(e) => {
                errln!("protocol: {} FAILED: {e:#}", r.name);
                return Outcome::Failed;
            }
        }
    }
}

/// `runs` one after another in this process, each archived as it finishes.
fn run_in_turn<'a>(
    runs: &[&'a Run],
    out: &Path,
    poll: Duration,
    archive: Option<&Archive>,
) -> Tally<'a> {
    let mut tally = Tally::default();
    for &r in runs {
        if tally.blocks(r) {
            continue;
        }
        match run_one(r, out, poll) {
            Outcome::Done(took) => {
                tally.done += 1;
                archive_run(archive, r, out, Some(took), &mut tally);
            }
            Outcome::Skipped => tally.skipped += 1,
            Outcome::Failed => tally.failed.push(&r.name),
        }
    }
    tally
}

/// How `protocol run` goes about a protocol (its flags).
pub(crate) struct RunOptions<'a> {
    /// Shard `index` of `count`.
    pub shard: (usize, usize),
    /// Runs at a time (more than one: each in its own process).
    pub jobs: usize,
    /// How often a run another process holds is looked at.
    pub poll: Duration,
    /// Only print the command lines (and what the archive holds).
    pub dry_run: bool,
    /// Only these rows (all when empty).
    pub attacks: &'a [String],
    /// Only these columns, with the teachers they need (all when empty).
    pub defenses: &'a [String],
    /// The results archive to restore from and write into.
    pub archive: Option<&'a Path>,
}

/// Runs the protocol in `spec_path` into `out` as `options` say.
pub(crate) fn run(spec_path: &Path, out: &Path, options: &RunOptions<'_>) -> Result<()> {
    let RunOptions {
        shard: (index, count),
        jobs,
        poll,
        dry_run,
        attacks: only,
        defenses: columns,
        archive,
    } = *options;
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
    if let Some(d) = columns.iter().find(|d| !plan.defenses.contains(d)) {
        bail!(
            "--defenses: `{d}` is not a column of {} (its columns: {})",
            spec_path.display(),
            plan.defenses.join(", ")
        );
    }
    // Only the columns asked for (with the teachers they need), when any are named.
    let in_columns = |r: &&Run| {
        let dropped = |name: &str| {
            plan.run(name).is_some_and(|n| {
                n.role == Role::Defense && n.defense.as_ref().is_some_and(|d| !columns.contains(d))
            })
        };
        columns.is_empty()
            || match r.role {
                Role::Defense => !dropped(&r.name),
                Role::Map => !r.needs.iter().any(|n| dropped(n)),
                Role::Clean | Role::Attack => true,
            }
    };
    if dry_run {
        let mine: Vec<&Run> = plan
            .shard(index, count, only)
            .into_iter()
            .filter(in_columns)
            .collect();
        for r in &mine {
            // Quoted where a shell would read a word otherwise, so that a line can be pasted.
            let dir = out.join(&r.name).display().to_string();
            let words: Vec<String> = r
                .words
                .iter()
                .chain([&"--out".to_string(), &dir])
                .map(|w| super::shell_word(w))
                .collect();
            outln!("cleanse {}", words.join(" "));
        }
        if let Some(root) = archive {
            dry_run_archive(root, &plan, &mine, out)?;
        }
        return Ok(());
    }
    refuse_another_spec_of_the_same_name(&plan, out)?;
    plan.save(out)?;
    let mine: Vec<&Run> = plan
        .shard(index, count, only)
        .into_iter()
        .filter(in_columns)
        .collect();
    errln!(
        "protocol: {} runs in all; shard {index}/{count} has {} of them",
        plan.runs.len(),
        mine.len()
    );
    let archive = match archive {
        Some(root) => {
            let a = Archive::open(root)?;
            a.save_plan(&plan)?;
            restore_all(&a, &mine, out)?;
            Some(a)
        }
        None => None,
    };
    let t0 = Instant::now();
    let mut tally = if jobs == 1 {
        run_in_turn(&mine, out, poll, archive.as_ref())
    } else {
        super::pool::run_all(&mine, out, jobs, poll, archive.as_ref())?
    };
    if let Some(a) = &archive {
        // Runs complete here that the archive lacks (made before --archive was given, or by
        // another process); not one that failed here (a finished run of other settings).
        for &r in &mine {
            let failed = tally.failed.contains(&r.name.as_str());
            if !failed && !tally.unarchived.contains(&r.name.as_str()) && a.wants(r, out, false)? {
                archive_run(Some(a), r, out, None, &mut tally);
            }
        }
    }
    let Tally {
        done,
        skipped,
        failed,
        blocked,
        unarchived,
    } = tally;
    errln!(
        "protocol: shard {index}/{count}: {done} run, {skipped} complete already, {} failed, {} \
         not run for a failed one they need, {:.0} s",
        failed.len(),
        blocked.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(a) = &archive {
        super::table::save(&plan, a.root())?;
    }
    if !failed.is_empty() || !blocked.is_empty() || !unarchived.is_empty() {
        return Err(anyhow!(
            "{}: failed: {failed:?}; not run: {blocked:?}; not archived: {unarchived:?}",
            spec_path.display()
        ));
    }
    if count == 1 && only.is_empty() && columns.is_empty() {
        // The whole protocol ran here: its table.
        super::table::write(&plan, out)?;
    }
    Ok(())
}

/// Refuses to run `plan` into `out` when another spec file of the same name ran there: its plan
/// and tables (`protocols/<name>.json`, `tables/<name>.*`) would be replaced.
fn refuse_another_spec_of_the_same_name(plan: &Plan, out: &Path) -> Result<()> {
    let saved = out
        .join(super::plan::PLANS_DIR)
        .join(format!("{}.json", plan.name()));
    if !saved.is_file() {
        return Ok(());
    }
    let old: Plan = cleanse_core::io::read_json(&saved)?;
    let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if same(&old.spec) != same(&plan.spec) {
        bail!(
            "{}: the spec {} of the same name already ran into this folder ({}); give this one \
             another --out, or rename it",
            plan.spec.display(),
            old.spec.display(),
            saved.display()
        );
    }
    Ok(())
}

/// Restores the archived runs of `runs` into `out`, saying what became of each.
fn restore_all(archive: &Archive, runs: &[&Run], out: &Path) -> Result<()> {
    let (mut complete, mut unfinished) = (0, 0);
    for &r in runs {
        match archive.restore(r, out)? {
            Restored::Complete => complete += 1,
            Restored::InProgress { epochs } => {
                errln!(
                    "protocol: {}: restored unfinished from the archive ({epochs} epochs done); \
                     it resumes",
                    r.name
                );
                unfinished += 1;
            }
            Restored::Absent => {}
            Restored::Kept(why) => errln!("protocol: {}: not restored: {why}", r.name),
        }
    }
    errln!(
        "protocol: restored from {}: {complete} complete runs, {unfinished} unfinished",
        archive.root().display()
    );
    Ok(())
}

/// `--dry-run --archive`: what the archive holds of the shard's runs, what would be restored,
/// what remains to run, and an estimate of its cost from the archived runs of the same column.
fn dry_run_archive(root: &Path, plan: &Plan, mine: &[&Run], out: &Path) -> Result<()> {
    let Some(archive) = Archive::at(root)? else {
        outln!(
            "# archive {}: none yet; all {} runs remain",
            root.display(),
            mine.len()
        );
        return Ok(());
    };
    let entries = archive.entries()?;
    // Seconds of an archived complete run of the same role and column, for the estimate.
    let column = |r: &Run| (r.role, r.defense.clone(), r.attack.clone());
    let cost = |r: &Run| -> Option<f64> {
        let same: Vec<f64> = entries
            .iter()
            .filter(|m| m.status == EntryStatus::Complete)
            .filter_map(|m| plan.run(&m.run))
            .filter(|x| column(x) == column(r) || (x.role, &x.defense) == (r.role, &r.defense))
            .filter_map(|x| entries.iter().find(|m| m.run == x.name))
            .map(Manifest::seconds)
            .collect();
        (!same.is_empty()).then(|| same.iter().sum::<f64>() / same.len() as f64)
    };
    let (mut archived, mut here, mut remaining, mut known, mut unknown) = (0, 0, 0, 0.0, 0);
    for &r in mine {
        let entry = entries
            .iter()
            .find(|m| m.run == r.name)
            .map(|m| (m, Archive::same_command(m, r, out)));
        let mut to_run = |why: &str| {
            remaining += 1;
            match cost(r) {
                Some(s) => {
                    known += s;
                    format!("{why} (about {:.0} min)", s / 60.0)
                }
                None => {
                    unknown += 1;
                    format!("{why} (no archived run of its kind to estimate from)")
                }
            }
        };
        let what = match (entry, state(&out.join(&r.name))) {
            (_, crate::batch::State::Complete) => {
                here += 1;
                "complete here (its settings are compared when it runs)".to_string()
            }
            (Some((m, true)), _) if m.status == EntryStatus::Complete => {
                archived += 1;
                "archived: restored, not run".to_string()
            }
            (Some((m, true)), _) => {
                remaining += 1;
                format!(
                    "archived unfinished ({} epochs): restored, resumes",
                    m.epochs_done
                )
            }
            (Some((_, false)), _) => {
                to_run("archived with another command line: to run, replacing it")
            }
            (None, _) => to_run("to run"),
        };
        outln!("# {}: {what}", r.name);
    }
    outln!(
        "# archive {}: {archived} of {} runs archived complete{}; {remaining} remain, about \
         {:.1} hours for the {} with an archived run of their kind{}",
        root.display(),
        mine.len(),
        match here {
            0 => String::new(),
            n => format!(", {n} complete here"),
        },
        known / 3600.0,
        remaining - unknown,
        match unknown {
            0 => String::new(),
            n => format!(", {n} without an estimate"),
        }
    );
    Ok(())
}

/// `cleanse protocol archive`: writes the runs of the protocol in `spec_path` that are complete
/// in `out` into the archive at `root` (and, with `unfinished`, the checkpoints of those still
/// running or stopped, so the next machine continues them).
pub(crate) fn archive_existing(
    spec_path: &Path,
    out: &Path,
    root: &Path,
    unfinished: bool,
) -> Result<()> {
    let (_, plan) = checked_plan(spec_path, out)?;
    let archive = Archive::open(root)?;
    archive.save_plan(&plan)?;
    let mut tally = Tally::default();
    let mut n = 0;
    for r in &plan.runs {
        if !archive.wants(r, out, unfinished)? {
            continue;
        }
        if state(&out.join(&r.name)) == State::Complete && !finished_as_planned(r, out) {
            tally.unarchived.push(&r.name);
            continue;
        }
        archive_run(Some(&archive), r, out, None, &mut tally);
        n += 1;
    }
    super::table::save(&plan, archive.root())?;
    errln!(
        "protocol: {n} runs written into {}, {} failed",
        root.display(),
        tally.unarchived.len()
    );
    if !tally.unarchived.is_empty() {
        bail!("not archived: {:?}", tally.unarchived);
    }
    Ok(())
}

/// Whether the finished run of `r` in `out` was made with the settings the plan gives it: its
/// command, run here, finds it complete (the comparison every run makes of a finished folder;
/// it loads nothing and runs nothing for a finished run). Says why not.
fn finished_as_planned(r: &Run, out: &Path) -> bool {
    let Some(words) = command_words(r, &out.join(&r.name)) else {
        return true;
    };
    match crate::run_command(words) {
        Err(e) if is_complete(&e) => true,
        Err(e) => {
            errln!("protocol: {}: not archived: {e:#}", r.name);
            false
        }
        Ok(()) => true,
    }
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
