//! `cleanse protocol run --jobs N`: up to N runs at once, each in a process of its own (one GPU
//! with memory to spare for several small models, or one core per run), each started as soon as
//! the runs it needs are complete. A run's output goes to its log, `OUT/logs/<run>.log`; this
//! process prints one line when a run starts and one when it ends (the end of the log with it
//! when it failed).

use super::archive::Archive;
use super::exec::{Tally, announce_held, archive_run, command_words};
use super::plan::Run;
use crate::batch::{State, state};
use anyhow::{Context, Result};
use cleanse_core::engine::run_dir::busy;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the pool looks at its processes.
const TICK: Duration = Duration::from_millis(200);

/// Lines of a failed run's log printed with its failure.
const LOG_TAIL: usize = 8;

/// A run in its own process.
struct Running {
    /// Its place in the list of runs.
    at: usize,
    child: Child,
    log: PathBuf,
    started: Instant,
}

/// `OUT/logs/<run>.log` (a run's name is a relative path, e.g. `badnets/t0-s0/kd`).
pub(crate) fn log_path(out: &Path, run: &Run) -> PathBuf {
    out.join("logs").join(format!("{}.log", run.name))
}

/// Starts `words` as a child of this program, its output appended to `log`.
fn start(exe: &Path, words: &[String], log: &Path) -> Result<Child> {
    let parent = log.parent().expect("a log has a folder");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create the log folder", parent.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}: cannot open the log", log.display()))?;
    writeln!(file, "== cleanse {}", words.join(" "))
        .with_context(|| format!("{}: cannot write the log", log.display()))?;
    let err = file
        .try_clone()
        .with_context(|| format!("{}: cannot open the log", log.display()))?;
    Command::new(exe)
        .args(words)
        .env(super::POOL_CHILD, "1")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// A run's length for people: seconds up to two minutes, then minutes.
fn took(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// The last `n` lines of the file at `path` (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Runs `runs` (in plan order: every run after those it needs) into `out`, at most `jobs` at a
/// time, each written into `archive` (if any) as it finishes. A run waits for the runs it needs among `runs`, and for another process that holds its
/// folder; a run whose needed run failed is not run.
pub(super) fn run_all<'a>(
    runs: &[&'a Run],
    out: &Path,
    jobs: usize,
    poll: Duration,
    archive: Option<&Archive>,
) -> Result<Tally<'a>> {
    let exe = std::env::current_exe().context("finding the cleanse program to start runs with")?;
    let planned: HashSet<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    // Runs complete here (run or found complete): what the waiting ones need.
    let mut complete: HashSet<&str> = HashSet::new();
    let mut tally = Tally::default();
    // Places in `runs` (plan order) of the runs not started yet.
    let mut waiting: Vec<usize> = (0..runs.len()).collect();
    let mut running: Vec<Running> = Vec::new();
    // Runs another process holds: when this one last looked (it looks again after `poll`).
    let mut held: HashMap<&str, Instant> = HashMap::new();
    loop {
        // The runs that ended.
        let mut i = 0;
        while i < running.len() {
            let status = match running[i].child.try_wait() {
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Ok(Some(status)) => Ok(status),
                Err(e) => Err(e),
            };
            let r = running.swap_remove(i);
            let run = runs[r.at];
            let elapsed = r.started.elapsed();
            let took = took(elapsed);
            match status {
                Ok(s) if s.code() == Some(super::COMPLETE_EXIT) => {
                    // Finished already with the same settings (other ones fail).
                    tally.skipped += 1;
                    complete.insert(&run.name);
                }
                Ok(s) if s.success() => {
                    errln!("protocol: {}: done ({took})", run.name);
                    tally.done += 1;
                    complete.insert(&run.name);
                    archive_run(archive, run, out, Some(elapsed), &mut tally);
                }
                Ok(s) if s.code() == Some(super::BUSY_EXIT) => {
                    // Another process took the folder between the look and the start.
                    announce_held(run);
                    held.insert(&run.name, Instant::now());
                    waiting.insert(waiting.partition_point(|&w| w < r.at), r.at);
                }
                ended => {
                    let how = match ended {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("lost: {e}"),
                    };
                    errln!(
                        "protocol: {} FAILED ({how}, {took}); the end of {}:",
                        run.name,
                        r.log.display()
                    );
                    for line in tail(&r.log, LOG_TAIL) {
                        errln!("    {line}");
                    }
                    tally.failed.push(&run.name);
                }
            }
        }
        // Start what can start, in plan order.
        let mut i = 0;
        while i < waiting.len() && running.len() < jobs {
            let (at, r) = (waiting[i], runs[waiting[i]]);
            if tally.blocks(r) {
                waiting.remove(i);
                continue;
            }
            let ready = r
                .needs
                .iter()
                .all(|n| complete.contains(n.as_str()) || !planned.contains(n.as_str()));
            if !ready {
                i += 1;
                continue;
            }
            let dir = out.join(&r.name);
            if held
                .get(r.name.as_str())
                .is_some_and(|t| t.elapsed() < poll)
            {
                i += 1;
                continue;
            }
            if busy(&dir) {
                if !held.contains_key(r.name.as_str()) {
                    announce_held(r);
                }
                held.insert(&r.name, Instant::now());
                i += 1;
                continue;
            }
            held.remove(r.name.as_str());
            waiting.remove(i);
            let Some(words) = command_words(r, &dir) else {
                tally.skipped += 1;
                complete.insert(&r.name);
                continue;
            };
            let log = log_path(out, r);
            // A finished run's process only compares settings: no line for it.
            let finished = state(&dir) == State::Complete;
            match start(&exe, &words, &log) {
                Ok(child) => {
                    if !finished {
                        errln!(
                            "protocol: {}: started ({} running, {} waiting; log {})",
                            r.name,
                            running.len() + 1,
                            waiting.len(),
                            log.display()
                        );
                    }
                    running.push(Running {
                        at,
                        child,
                        log,
                        started: Instant::now(),
                    });
                }
                Err(e) => {
                    errln!("protocol: {} FAILED: {e:#}", r.name);
                    tally.failed.push(&r.name);
                }
            }
        }
        if waiting.is_empty() && running.is_empty() {
            return Ok(tally);
        }
        std::thread::sleep(TICK);
    }
}
