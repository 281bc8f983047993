//! Kill test: the real binary on tiny runs of `attack badnets`, `train`, `defend kd` and
//! `defend ft`, killed with SIGKILL at seeded pseudo-random moments (the first one right after
//! the process starts, before any epoch), restarted after every kill, and let finish after the
//! last one. The finished run must equal an uninterrupted run of the same command: every number
//! of `report.json` bit for bit (clock readings aside), every weight of the model bit for bit, and
//! the run's other files byte for byte.
//!
//! How a killed run is continued (the run directory's lifecycle, `core/src/engine/run_dir.rs`,
//! `RunDir::open`): with `--resume` when `checkpoint/state.json` (a finished epoch) or
//! `checkpoint/started.json` (started, no epoch finished yet) is there
//! (`cleanse_core::engine::checkpoint::resumable`); otherwise with the original command, which a
//! directory left by a run killed before `started.json` must accept (`dir_is_empty`: missing, or
//! only the lock file, an empty `checkpoint/` and `.tmp*` leftovers of interrupted atomic writes).
//!
//! `CLEANSE_KILL_SEED` (a number) changes the kill moments, `CLEANSE_KILL_TRIALS` the number of
//! killed runs per command (2); both are printed, so a failing draw can be replayed.

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cleanse");

/// The data and training flags of `train` and `attack`: 72 training images (5 batches), 24 held
/// out for the defenses (3 batches of 8), one CPU thread so that every run computes alike.
const DATA: &str = "--dataset synthetic --synthetic-train 96 --synthetic-test 32 --width 4 \
                    --epochs 3 --batch-size 16 --lr 0.05 --holdout 0.25 --seed 7 \
                    --device cpu --threads 1";

/// The flags of both defenses.
const DEFEND: &str = "--epochs 3 --batch-size 8 --seed 7 --device cpu --threads 1";

const DEFAULT_SEED: u64 = 0x4B11_1E57;
const DEFAULT_TRIALS: usize = 2;
/// Kills per killed run (the run is then let finish).
const KILLS: usize = 4;
/// A run that takes longer than this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Keys of `report.json` that hold clock readings, removed wherever they occur before reports
/// are compared: an epoch record's `seconds`, `eval_seconds` and `images_per_sec` (wall-clock
/// time and throughput, `core/src/engine/driver.rs`), and the report's `started_unix` and
/// `finished_unix` (Unix time; `started_unix` is read back from the report on resume and falls
/// back to the time of the resume when the kill came before the report's first write). Nothing
/// else in a report depends on time: the device record (`requested`, `backend`, `adapter`,
/// `cpu_threads`) is the same for the same flags, and no field names the output directory.
const CLOCK_KEYS: [&str; 5] = [
    "seconds",
    "eval_seconds",
    "images_per_sec",
    "started_unix",
    "finished_unix",
];

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Seeded pseudo-random numbers (xorshift64, seeded through splitmix64).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        match n {
            0 => 0,
            n => self.next_u64() % n,
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The last `n` bytes of `s` (on a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Every file and folder under `dir`, relative to it, sorted.
fn listing(dir: &Path) -> String {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(base)
                .unwrap_or(p.as_path())
                .display()
                .to_string();
            if p.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    if !dir.exists() {
        return "(no directory)".into();
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    match v.is_empty() {
        true => "(empty)".into(),
        false => v.join(" "),
    }
}

/// Whether a killed run in `out` is continued with `--resume` (else with the original command).
fn resumable(out: &Path) -> bool {
    cleanse_core::engine::checkpoint::resumable(&out.join("checkpoint"))
}

/// Starts `case` in `out` as a user continues a killed run: with `--resume` when the directory
/// holds a started run, else with the original command. Returns the process and which it was.
fn restart(case: &Case, out: &Path, logs: &Path, label: &str) -> (Proc, &'static str) {
    let resume = resumable(out);
    let p = Proc::spawn(case.argv(out, resume), out, logs, label);
    (p, if resume { "--resume" } else { "new run" })
}

/// When a run is killed, counted from its start.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// After this long (zero: right after the process started).
    After(Duration),
    /// As soon as `checkpoint/started.json` exists: started, no epoch finished.
    Started,
}

impl std::fmt::Display for Moment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Moment::After(d) => write!(f, "kill at {:.1} ms", d.as_secs_f64() * 1e3),
            Moment::Started => write!(f, "kill when checkpoint/started.json appears"),
        }
    }
}

/// How a run given a kill moment ended.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Killed this long after it started.
    Killed(Duration),
    /// Finished (successfully) before the kill came.
    Finished(Duration),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Killed(d) => write!(f, "killed after {:.1} ms", d.as_secs_f64() * 1e3),
            Stop::Finished(d) => write!(
                f,
                "finished before the kill, after {:.1} ms",
                d.as_secs_f64() * 1e3
            ),
        }
    }
}

/// A running `cleanse`, its output going to log files.
struct Proc {
    child: Child,
    argv: Vec<String>,
    out: PathBuf,
    stderr: PathBuf,
    spawned: Instant,
}

impl Proc {
    fn spawn(argv: Vec<String>, out: &Path, logs: &Path, label: &str) -> Proc {
        let stdout_path = logs.join(format!("{label}.stdout"));
        let stderr_path = logs.join(format!("{label}.stderr"));
        let stdout = File::create(&stdout_path).expect("create the stdout log");
        let stderr = File::create(&stderr_path).expect("create the stderr log");
        let child = Command::new(BIN)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start cleanse {}: {e}", argv.join(" ")));
        Proc {
            child,
            argv,
            out: out.to_path_buf(),
            stderr: stderr_path,
            spawned: Instant::now(),
        }
    }

    /// The command, its run directory as it is now, and the end of its stderr.
    fn describe(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "command: {BIN} {}\nrun dir: {}\nfiles there: {}\nstderr of this process \
             (its end):\n{}",
            self.argv.join(" "),
            self.out.display(),
            listing(&self.out),
            tail(&err, 6000)
        )
    }

    fn fail(&mut self, what: &str, history: &[String]) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "{what}\n{}\nthis killed run so far:\n  {}",
            self.describe(),
            history.join("\n  ")
        )
    }

    /// Waits for the run to end; it must succeed. Returns how long it ran.
    fn finish(&mut self, history: &[String]) -> Duration {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return self.spawned.elapsed(),
                Ok(Some(status)) => self.fail(&format!("cleanse failed ({status})"), history),
                Ok(None) => {}
                Err(e) => self.fail(&format!("cannot wait for cleanse: {e}"), history),
            }
            if self.spawned.elapsed() > RUN_LIMIT {
                self.fail(
                    &format!("cleanse did not finish within {RUN_LIMIT:?}"),
                    history,
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the run (SIGKILL) at `moment` and waits for it, unless it finished first. A run
    /// that exits with an error before the kill fails the test.
    fn stop_at(&mut self, moment: Moment, history: &[String]) -> Stop {
        let started = self.out.join("checkpoint").join("started.json");
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    return Stop::Finished(self.spawned.elapsed());
                }
                Ok(Some(status)) => self.fail(
                    &format!("cleanse failed ({status}) before the {moment}"),
                    history,
                ),
                Ok(None) => {}
                Err(e) => self.fail(&format!("cannot wait for cleanse: {e}"), history),
            }
            let elapsed = self.spawned.elapsed();
            let due = match moment {
                Moment::After(d) => elapsed >= d,
                Moment::Started => started.is_file(),
            };
            if due {
                break;
            }
            if elapsed > RUN_LIMIT {
                self.fail(
                    &format!("the {moment} never came within {RUN_LIMIT:?}"),
                    history,
                );
            }
            let nap = match moment {
                Moment::After(d) => d.saturating_sub(elapsed).min(Duration::from_millis(1)),
                Moment::Started => Duration::from_micros(300),
            };
            std::thread::sleep(nap);
        }
        let at = self.spawned.elapsed();
        // Not reaped yet (try_wait saw it running), so this reaches the process even if it
        // exited a moment ago.
        if let Err(e) = self.child.kill() {
            self.fail(&format!("cannot kill cleanse: {e}"), history);
        }
        let status = match self.child.wait() {
            Ok(s) => s,
            Err(e) => self.fail(&format!("cannot wait for the killed cleanse: {e}"), history),
        };
        if status.success() {
            // It exited just before the signal.
            return Stop::Finished(at);
        }
        if status.code().is_some() {
            self.fail(
                &format!("cleanse failed ({status}) before the {moment}"),
                history,
            );
        }
        Stop::Killed(at)
    }
}

/// One command under test: its arguments without `--out` and `--resume`.
struct Case {
    name: &'static str,
    args: Vec<String>,
}

impl Case {
    fn argv(&self, out: &Path, resume: bool) -> Vec<String> {
        let mut v = self.args.clone();
        v.push("--out".into());
        v.push(out.display().to_string());
        if resume {
            v.push("--resume".into());
        }
        v
    }
}

/// Every float tensor of the run's model (parameters and batch-norm running statistics), in
/// module order, as bits. The model file itself is not compared byte for byte: Burn's burnpack
/// format stores each parameter's `ParamId`, drawn at random by every process that builds the
/// model, so two identical runs write different bytes.
fn weights(dir: &Path) -> Result<Vec<(String, Vec<u32>)>, String> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    struct Collect {
        path: Vec<String>,
        out: Vec<(String, Vec<u32>)>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let bits: Vec<u32> = p
                .val()
                .into_data()
                .iter::<f32>()
                .map(|v| v.to_bits())
                .collect();
            let name = format!("{} #{}", self.path.join("."), self.out.len());
            self.out.push((name, bits));
        }
    }
    let loaded = cleanse_core::engine::run_files::load_run_model(dir, &Device::flex())
        .map_err(|e| format!("cannot load the model of {}: {e}", dir.display()))?;
    let mut c = Collect {
        path: Vec::new(),
        out: Vec::new(),
    };
    loaded.model.visit(&mut c);
    if c.out.is_empty() {
        return Err(format!("the model of {} has no tensors", dir.display()));
    }
    Ok(c.out)
}

fn strip_clocks(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in CLOCK_KEYS {
                m.remove(k);
            }
            for x in m.values_mut() {
                strip_clocks(x);
            }
        }
        Value::Array(a) => {
            for x in a {
                strip_clocks(x);
            }
        }
        _ => {}
    }
}

/// Where two JSON values differ, as `path: a vs b`.
fn json_differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                json_differences(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_differences(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b || serde_json::to_string(a).ok() != serde_json::to_string(b).ok() => {
            out.push(format!("{path}: {a} (uninterrupted) vs {b} (killed)"));
        }
        _ => {}
    }
}

/// The top-level files compared byte for byte: all but the report and model (compared above),
/// the lock file, other Burn records (random `ParamId`s) and leftovers of killed atomic writes.
fn compared_file(name: &str) -> bool {
    !(name == "report.json"
        || name == "run.lock"
        || name.ends_with(".bpk")
        || name.starts_with(".tmp"))
}

/// What a finished run ended with.
struct Outcome {
    /// `report.json` without its clock readings.
    report: Value,
    weights: Vec<(String, Vec<u32>)>,
    /// The other top-level files ([`compared_file`]) and their bytes, by name.
    files: Vec<(String, Vec<u8>)>,
}

impl Outcome {
    fn read(dir: &Path) -> Result<Outcome, String> {
        let path = dir.join("report.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut report: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        if report["status"] != "complete" {
            return Err(format!(
                "{}: status {} (expected \"complete\")",
                path.display(),
                report["status"]
            ));
        }
        strip_clocks(&mut report);
        let mut files = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_file() || !compared_file(&name) {
                continue;
            }
            let bytes =
                std::fs::read(e.path()).map_err(|err| format!("cannot read {name}: {err}"))?;
            files.push((name, bytes));
        }
        files.sort();
        Ok(Outcome {
            report,
            weights: weights(dir)?,
            files,
        })
    }

    /// Why `got` (a killed and resumed run) is not this (the uninterrupted run), if it is not.
    fn differences(&self, got: &Outcome) -> Option<String> {
        let mut why = Vec::new();
        let mut diff = Vec::new();
        json_differences("report", &self.report, &got.report, &mut diff);
        if !diff.is_empty() {
            let n = diff.len();
            diff.truncate(20);
            why.push(format!(
                "report.json differs in {n} places (clock fields {CLOCK_KEYS:?} removed):\n    {}",
                diff.join("\n    ")
            ));
        }
        if self.weights.len() != got.weights.len() {
            why.push(format!(
                "the model has {} tensors, the uninterrupted run's {}",
                got.weights.len(),
                self.weights.len()
            ));
        } else {
            let mut bad = Vec::new();
            for ((name, a), (_, b)) in self.weights.iter().zip(&got.weights) {
                if a == b {
                    continue;
                }
                let first = a.iter().zip(b).position(|(x, y)| x != y);
                let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
                bad.push(match first {
                    Some(i) if a.len() == b.len() => format!(
                        "{name}: {differing} of {} values differ, first at {i}: {} vs {}",
                        a.len(),
                        f32::from_bits(a[i]),
                        f32::from_bits(b[i])
                    ),
                    _ => format!("{name}: {} values vs {}", a.len(), b.len()),
                });
            }
            if !bad.is_empty() {
                let n = bad.len();
                bad.truncate(10);
                why.push(format!(
                    "the weights differ in {n} of {} tensors:\n    {}",
                    self.weights.len(),
                    bad.join("\n    ")
                ));
            }
        }
        let names = |o: &Outcome| o.files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        if names(self) != names(got) {
            why.push(format!(
                "files {:?} vs the uninterrupted run's {:?}",
                names(got),
                names(self)
            ));
        } else {
            for ((name, a), (_, b)) in self.files.iter().zip(&got.files) {
                if a != b {
                    why.push(format!("{name} differs from the uninterrupted run's"));
                }
            }
        }
        match why.is_empty() {
            true => None,
            false => Some(why.join("\n")),
        }
    }
}

/// Runs `case` once uninterrupted, then `trials` times killed at [`KILLS`] moments and let
/// finish; every killed run must end as the uninterrupted one. Returns the uninterrupted run's
/// directory.
fn check(case: &Case, root: &Path, logs: &Path, seed: u64, trials: usize) -> PathBuf {
    let reference = root.join(format!("{}-uninterrupted", case.name));
    let mut p = Proc::spawn(
        case.argv(&reference, false),
        &reference,
        logs,
        &format!("{}-uninterrupted", case.name),
    );
    let wall = p.finish(&[]);
    eprintln!(
        "kill test: {}: uninterrupted run took {:.0} ms",
        case.name,
        wall.as_secs_f64() * 1e3
    );
    let expected = Outcome::read(&reference)
        .unwrap_or_else(|e| panic!("the uninterrupted run: {e}\n{}", p.describe()));
    let span = u64::try_from(wall.as_micros()).unwrap_or(u64::MAX).max(1);
    for trial in 0..trials {
        let out = root.join(format!("{}-killed-{trial}", case.name));
        let mut rng = XorShift::new(seed ^ fnv1a(case.name) ^ (trial as u64).wrapping_mul(0x9E37));
        // The first kill comes right after the start (before any epoch); the first trial also
        // kills a run as soon as it has started (started.json, no epoch); the rest at random
        // moments within the uninterrupted run's time.
        let mut moments = vec![Moment::After(Duration::ZERO)];
        if trial == 0 {
            moments.push(Moment::Started);
        }
        while moments.len() < KILLS {
            moments.push(Moment::After(Duration::from_micros(rng.below(span))));
        }
        let mut history: Vec<String> = Vec::new();
        for (k, &moment) in moments.iter().enumerate() {
            let (mut p, how) = restart(
                case,
                &out,
                logs,
                &format!("{}-killed-{trial}-{k}", case.name),
            );
            let stop = p.stop_at(moment, &history);
            let line = format!(
                "start {k} ({how}): {moment}: {stop}; left: {}",
                listing(&out)
            );
            eprintln!("kill test: {} trial {trial}: {line}", case.name);
            history.push(line);
        }
        let (mut p, how) = restart(
            case,
            &out,
            logs,
            &format!("{}-killed-{trial}-last", case.name),
        );
        let took = p.finish(&history);
        history.push(format!(
            "last start ({how}): finished after {:.1} ms",
            took.as_secs_f64() * 1e3
        ));
        eprintln!(
            "kill test: {} trial {trial}: {}",
            case.name,
            history.last().map(String::as_str).unwrap_or_default()
        );
        let got = Outcome::read(&out).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n{}\nthis killed run:\n  {}",
                case.name,
                p.describe(),
                history.join("\n  ")
            )
        });
        if let Some(why) = expected.differences(&got) {
            panic!(
                "{}: the killed and resumed run in {} does not end as the uninterrupted one in \
                 {}:\n{why}\n{}\nthis killed run:\n  {}",
                case.name,
                out.display(),
                reference.display(),
                p.describe(),
                history.join("\n  ")
            );
        }
        if trial == 0 {
            // Nothing a killed run left behind blocks a later --resume of the finished run, which
            // changes nothing.
            if !resumable(&out) {
                panic!(
                    "{}: the finished run in {} cannot be resumed (no checkpoint): {}",
                    case.name,
                    out.display(),
                    listing(&out)
                );
            }
            let mut again = Proc::spawn(
                case.argv(&out, true),
                &out,
                logs,
                &format!("{}-killed-{trial}-again", case.name),
            );
            again.finish(&history);
            let got = Outcome::read(&out)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", case.name, again.describe()));
            if let Some(why) = expected.differences(&got) {
                panic!(
                    "{}: --resume of the finished run in {} changed it:\n{why}\n{}",
                    case.name,
                    out.display(),
                    again.describe()
                );
            }
        }
    }
    reference
}

#[test]
fn runs_killed_at_random_moments_resume_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).expect("logs folder");
    let seed: u64 = env_or("CLEANSE_KILL_SEED", DEFAULT_SEED);
    let trials: usize = env_or("CLEANSE_KILL_TRIALS", DEFAULT_TRIALS);
    eprintln!("kill test: CLEANSE_KILL_SEED={seed} CLEANSE_KILL_TRIALS={trials}");

    let attack = Case {
        name: "attack",
        args: words(&format!("attack badnets {DATA} --poison-rate 0.2")),
    };
    let suspect = check(&attack, root, &logs, seed, trials);

    let train = Case {
        name: "train",
        args: words(&format!("train {DATA}")),
    };
    check(&train, root, &logs, seed, trials);

    // Both defenses defend the uninterrupted attack run.
    for method in ["kd", "ft"] {
        let mut args = words(&format!("defend {method} --model"));
        args.push(suspect.display().to_string());
        args.extend(words(DEFEND));
        let case = Case { name: method, args };
        check(&case, root, &logs, seed, trials);
    }
}
