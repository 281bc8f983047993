//! The life of a run directory, shared by every command that trains something: a new run only
//! in a missing or empty directory, `--resume` only of a run with the same configuration (the
//! settings that differ are named), a finished run of the same configuration left as it is
//! ([`Error::Complete`]) and one of another configuration refused (the same comparison), `checkpoint/started.json` before any preparation, one
//! checkpoint per epoch, the report written atomically, and one live run per directory (an OS
//! file lock that dies with its process).
//!
//! Every stop point leaves the directory resumable or reusable: a run killed at any moment
//! resumes with the same flags; a run that fails with an error before its first checkpoint, in a
//! directory that was empty when it started, leaves it empty again, so the corrected command
//! runs as a new one.

use crate::engine::checkpoint::{self, CHECKPOINT_VERSION, CheckpointState};
use crate::io::{create_dir_all, read_json, write_json_atomic};
use crate::report::{EpochRecord, Report, now_unix};
use crate::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Names of the files of a run directory.
pub mod files {
    pub const REPORT: &str = "report.json";
    pub const MODEL: &str = "model.bpk";
    pub const MODEL_CONFIG: &str = "model.json";
    pub const SPLIT: &str = "split.json";
    pub const CHECKPOINT_DIR: &str = "checkpoint";
    /// Held (an OS lock) by the live run of the directory.
    pub const LOCK: &str = "run.lock";
    /// The clean model LC trains for its adversarial images, inside the attack's run directory,
    /// when no `--clean-model` is given; it is made by the run's preparation
    /// ([`crate::attack::poison::OwnCleanModel`]).
    pub const LC_CLEAN_MODEL: &str = "clean-model";
}

/// How a configuration saved by an earlier run is made comparable with today's: parsed into
/// its type and written back, so that a field added since (with its default) is no change.
pub type Canonical = fn(&Value) -> Value;

/// [`Canonical`] through the configuration type `T` (the value itself when it does not parse).
pub fn canonical_as<T: Serialize + DeserializeOwned>(v: &Value) -> Value {
    serde_json::from_value::<T>(v.clone())
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| v.clone())
}

/// `v` as JSON, a group of settings longer than a few words as `{...}` or `[...]`.
fn brief(v: &Value) -> String {
    let text = v.to_string();
    match v {
        Value::Object(_) if text.len() > 40 => "{...}".into(),
        Value::Array(_) if text.len() > 40 => "[...]".into(),
        _ => text,
    }
}

/// The settings whose values differ between two configurations, as `path: old -> new` (at most
/// a handful, then a count).
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {} -> {}", brief(a), brief(b))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

/// The settings that differ between `old` and `new`, for a message: the first six, then a count.
fn shown_differences(old: &Value, new: &Value) -> String {
    let diff = differences(old, new);
    let shown: Vec<&str> = diff.iter().take(6).map(String::as_str).collect();
    match diff.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        n => format!("{} and {n} more", shown.join(", ")),
    }
}

fn different_configuration(path: &Path, old: &Value, new: &Value) -> Error {
    Error::artifact(
        path,
        format!(
            "--resume: the run was started with a different configuration ({}); pass the same \
             flags as the original run, or start a new run in another --out",
            shown_differences(old, new)
        ),
    )
}

fn finished_differently(path: &Path, old: &Value, new: &Value) -> Error {
    Error::artifact(
        path,
        format!(
            "this folder holds a finished run of another configuration ({}); it is kept: choose \
             another --out, or remove the folder to run these settings in it",
            shown_differences(old, new)
        ),
    )
}

/// What a run directory says about a finished run in it.
#[derive(Debug)]
pub enum Finished {
    /// No run finished here (its report is missing, unreadable or not complete).
    No,
    /// A run finished here with the configuration `config`, recorded in `file` (the last
    /// checkpoint's state, else the configuration it started with).
    With { file: PathBuf, config: Value },
    /// A run finished here but kept no record of its configuration (its checkpoint folder was
    /// removed).
    Unrecorded,
}

/// `config` made comparable: [`Canonical`], then every string that names an existing file or
/// folder written as its absolute, resolved path, so that a path typed relative and one typed
/// absolute (a protocol run here and under Slurm) compare equal.
fn comparable(canonical: Canonical, config: &Value) -> Value {
    fn resolve(v: Value) -> Value {
        match v {
            Value::String(s) => match std::fs::canonicalize(&s) {
                Ok(p) if !s.is_empty() => Value::String(p.display().to_string()),
                _ => Value::String(s),
            },
            Value::Array(items) => Value::Array(items.into_iter().map(resolve).collect()),
            Value::Object(fields) => {
                Value::Object(fields.into_iter().map(|(k, v)| (k, resolve(v))).collect())
            }
            other => other,
        }
    }
    resolve(canonical(config))
}

/// Whether a run of `config` may go on in `out`: yes (`Ok`) unless `out` holds a finished run.
/// A finished run of the same configuration (compared as `--resume` compares) is
/// [`Error::Complete`]: nothing to do; of another, an error naming the settings that differ; one
/// that kept no record of its configuration, an error too. Nothing in `out` is touched.
pub fn check_finished(out: &Path, config: &Value, canonical: Canonical) -> Result<()> {
    match finished(out)? {
        Finished::No => Ok(()),
        Finished::With { file, config: old } => {
            let (old, new) = (comparable(canonical, &old), comparable(canonical, config));
            if old == new {
                return Err(Error::Complete {
                    path: out.to_path_buf(),
                });
            }
            Err(finished_differently(&file, &old, &new))
        }
        Finished::Unrecorded => Err(Error::artifact(
            out,
            "this folder holds a finished run whose settings were not recorded (no \
             checkpoint/state.json or started.json); it is kept: choose another --out",
        )),
    }
}

/// Whether `out` holds a finished run (its report says complete), and with which configuration.
pub fn finished(out: &Path) -> Result<Finished> {
    let complete = std::fs::read_to_string(out.join(files::REPORT))
        .ok()
        .and_then(|text| Report::from_json("", &text).ok())
        .is_some_and(|r| r.status == crate::report::RunStatus::Complete);
    if !complete {
        return Ok(Finished::No);
    }
    let ckpt = out.join(files::CHECKPOINT_DIR);
    let state_path = checkpoint::state_path(&ckpt);
    if state_path.is_file() {
        let config = checkpoint::load_state(&ckpt)?.config;
        return Ok(Finished::With {
            file: state_path,
            config,
        });
    }
    let started_path = checkpoint::started_path(&ckpt);
    if started_path.is_file() {
        let config = read_json(&started_path)?;
        return Ok(Finished::With {
            file: started_path,
            config,
        });
    }
    Ok(Finished::Unrecorded)
}

/// The entries of `dir` other than the lock file; `None` when `dir` does not exist.
fn entries_besides_lock(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    match std::fs::read_dir(dir) {
        Ok(it) => {
            let mut v = Vec::new();
            for e in it {
                let e = e.map_err(|e| Error::io(dir, e))?;
                let name = e.file_name();
                let leftover = name == files::LOCK
                    || is_write_leftover(&name)
                    || (name == files::CHECKPOINT_DIR
                        && entries_besides_lock(&e.path())?.is_some_and(|v| v.is_empty()));
                if !leftover {
                    v.push(e.path());
                }
            }
            Ok(Some(v))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// A temporary file of [`crate::io::write_atomic`] that a kill left before its rename: never
/// part of a run.
fn is_write_leftover(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(".tmp"))
}

/// Whether `dir` is missing or holds nothing but a lock file, an empty checkpoint folder and
/// leftovers of interrupted writes: what a run killed before writing `started.json` leaves, so a
/// new run may start in it.
pub fn dir_is_empty(dir: &Path) -> Result<bool> {
    Ok(entries_besides_lock(dir)?.is_none_or(|v| v.is_empty()))
}

/// Takes the OS's exclusive lock on `file` without waiting: `false` when another process (or
/// another handle in this one) holds it.
#[cfg(not(target_arch = "wasm32"))]
fn try_lock(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The browser has no file system to share: run directories are a native concept.
#[cfg(target_arch = "wasm32")]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Whether a live run (of this or another process) holds the run directory `out` now.
pub fn busy(out: &Path) -> bool {
    let Ok(file) = File::open(out.join(files::LOCK)) else {
        return false;
    };
    // The lock taken here, if it is free, is released when `file` drops.
    matches!(try_lock(&file), Ok(false))
}

/// A run directory owned by this process for the length of a run.
pub struct RunDir {
    out: PathBuf,
    /// Held while the run lives; the OS releases it when the process ends.
    _lock: File,
    config: Value,
    seed: u64,
    resumed: Option<CheckpointState>,
    history: Vec<EpochRecord>,
    started_unix: u64,
    /// The directory was missing or empty when the run started.
    fresh: bool,
    /// The run created the directory.
    created: bool,
    finished: bool,
}

impl RunDir {
    /// Takes `out` for a run of `config` (the JSON compared on resume, made comparable by
    /// `canonical`): new (`out` missing or empty) or, with `resume`, continuing the run in it.
    /// Writes `checkpoint/started.json` before returning, so that whatever the run prepares
    /// next can be resumed.
    pub fn open(
        out: &Path,
        config: Value,
        canonical: Canonical,
        seed: u64,
        resume: bool,
    ) -> Result<RunDir> {
        let existed = out.is_dir();
        create_dir_all(out)?;
        let lock_path = out.join(files::LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        if !try_lock(&lock).map_err(|e| Error::io(&lock_path, e))? {
            return Err(Error::Busy {
                path: out.to_path_buf(),
            });
        }
        let ckpt = out.join(files::CHECKPOINT_DIR);
        let state_path = checkpoint::state_path(&ckpt);
        let started_path = checkpoint::started_path(&ckpt);
        // A finished run is never run over: nothing to do for its own configuration, an
        // error for another.
        check_finished(out, &config, canonical)?;
        let empty = dir_is_empty(out)?;
        let mut resumed = None;
        if resume {
            if state_path.is_file() {
                let state = checkpoint::load_state(&ckpt)?;
                let (old, new) = (
                    comparable(canonical, &state.config),
                    comparable(canonical, &config),
                );
                if old != new {
                    return Err(different_configuration(&state_path, &old, &new));
                }
                resumed = Some(state);
            } else if started_path.is_file() {
                // Stopped before its first epoch ended: training starts over; what preparation
                // saved (and its own checkpoints) is kept and reused.
                let started: Value = read_json(&started_path)?;
                let (old, new) = (
                    comparable(canonical, &started),
                    comparable(canonical, &config),
                );
                if old != new {
                    return Err(different_configuration(&started_path, &old, &new));
                }
            } else {
                return Err(Error::artifact(
                    out,
                    "--resume: no checkpoint here (expected checkpoint/state.json or \
                     checkpoint/started.json); start a new run without --resume",
                ));
            }
        } else if !empty {
            return Err(Error::artifact(
                out,
                "output directory exists and is not empty; choose another --out, or pass \
                 --resume to continue the run in it",
            ));
        }
        let started_unix = match &resumed {
            Some(_) => read_json::<Report>(&out.join(files::REPORT))
                .map(|r| r.started_unix)
                .unwrap_or_else(|_| now_unix()),
            None => now_unix(),
        };
        let run = RunDir {
            out: out.to_path_buf(),
            _lock: lock,
            history: resumed
                .as_ref()
                .map(|s| s.history.clone())
                .unwrap_or_default(),
            config,
            seed,
            resumed,
            started_unix,
            fresh: !existed || empty,
            created: !existed,
            finished: false,
        };
        if !started_path.is_file() {
            create_dir_all(&ckpt)?;
            write_json_atomic(&started_path, &run.config)?;
        }
        Ok(run)
    }

    /// The directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// `out/checkpoint`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.out.join(files::CHECKPOINT_DIR)
    }

    /// The checkpoint the run continues from, if it resumed one.
    pub fn resumed(&self) -> Option<&CheckpointState> {
        self.resumed.as_ref()
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }

    /// The records of the epochs completed so far.
    pub fn history(&self) -> &[EpochRecord] {
        &self.history
    }

    /// When the run first started (kept across resumes).
    pub fn started_unix(&self) -> u64 {
        self.started_unix
    }

    /// Records an epoch whose model and optimiser files (`files`, in the checkpoint directory)
    /// are written: the checkpoint's state file, then older epochs' files are removed.
    pub fn checkpoint(&mut self, record: EpochRecord, files: (String, String)) -> Result<()> {
        self.history.push(record);
        let dir = self.checkpoint_dir();
        let state = CheckpointState {
            checkpoint_version: CHECKPOINT_VERSION,
            epochs_done: self.history.len(),
            seed: self.seed,
            config: self.config.clone(),
            model_file: files.0,
            optimizer_file: files.1,
            history: self.history.clone(),
        };
        write_json_atomic(&checkpoint::state_path(&dir), &state)?;
        // Only now are older epochs' files unreferenced: every optimiser's (SGD's, ANP's, I-BAU's
        // Adam), by the prefix of the files this epoch wrote.
        let current = [state.model_file.as_str(), state.optimizer_file.as_str()];
        let prefixes: Vec<&str> = current
            .iter()
            .filter_map(|f| checkpoint::epoch_prefix(f))
            .collect();
        checkpoint::remove_stale(&dir, &prefixes, &current);
        Ok(())
    }

    /// Writes the run's report (atomically).
    pub fn write_report(&self, report: &Report) -> Result<()> {
        write_json_atomic(&self.out.join(files::REPORT), report)
    }

    /// Marks the run finished: its directory is kept whatever happens next.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for RunDir {
    /// A run that ends with an error before its first checkpoint, in a
    /// directory that was empty when it started, empties it again: nothing of value is lost and
    /// the corrected command can use it.
    fn drop(&mut self) {
        // A panic stands for a crash: like a killed run, it stays resumable.
        if self.finished || !self.fresh || std::thread::panicking() {
            return;
        }
        if checkpoint::state_path(&self.checkpoint_dir()).exists() {
            return;
        }
        if self.created {
            let _ = std::fs::remove_dir_all(&self.out);
            return;
        }
        if let Ok(Some(entries)) = entries_besides_lock(&self.out) {
            for p in entries {
                let _ = match p.is_dir() {
                    true => std::fs::remove_dir_all(&p),
                    false => std::fs::remove_file(&p),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_killed_before_started_json_leaves_a_reusable_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("run");
        assert!(dir_is_empty(&out).expect("missing"));
        std::fs::create_dir_all(out.join(files::CHECKPOINT_DIR)).expect("mkdir");
        std::fs::write(out.join(files::LOCK), b"").expect("lock");
        std::fs::write(out.join(files::CHECKPOINT_DIR).join(".tmpAbC12"), b"{").expect("tmp");
        assert!(dir_is_empty(&out).expect("leftovers only"));
        std::fs::write(out.join(files::CHECKPOINT_DIR).join("started.json"), b"{}").expect("w");
        assert!(!dir_is_empty(&out).expect("started"));
        std::fs::remove_dir_all(out.join(files::CHECKPOINT_DIR)).expect("rm");
        std::fs::write(out.join("notes.txt"), b"mine").expect("w");
        assert!(!dir_is_empty(&out).expect("foreign file"));
    }

    fn identity(v: &Value) -> Value {
        v.clone()
    }

    /// Marks the run in `out` finished, as a run's last report does.
    fn write_complete_report(out: &Path) {
        let report = serde_json::json!({
            "schema_version": crate::report::SCHEMA_VERSION, "kind": "train", "status": "complete",
            "tool_version": "0", "config": {},
            "device": {"requested": "cpu", "backend": "flex", "adapter": null, "cpu_threads": 1},
            "data": {"num_classes": 2, "train_size": 1, "holdout_size": 0, "test_size": 1},
            "epochs": [], "final": {"clean_acc": 0.5, "asr": null}, "model_file": null,
            "started_unix": 0, "finished_unix": 0
        });
        write_json_atomic(&out.join(files::REPORT), &report).expect("report");
    }

    #[test]
    fn a_finished_run_is_left_alone_for_its_settings_and_refused_for_others() {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("run");
        let config = serde_json::json!({"epochs": 3, "lr": 0.1});
        let mut run = RunDir::open(&out, config.clone(), identity, 0, false).expect("new run");
        run.finish();
        drop(run);
        // Started but not finished: a plain run refuses the folder, --resume continues it.
        assert!(matches!(finished(&out), Ok(Finished::No)));
        let e = RunDir::open(&out, config.clone(), identity, 0, false)
            .err()
            .expect("not empty");
        assert!(e.to_string().contains("not empty"), "{e}");
        write_complete_report(&out);
        assert!(matches!(finished(&out), Ok(Finished::With { .. })));
        for resume in [false, true] {
            let e = RunDir::open(&out, config.clone(), identity, 0, resume)
                .err()
                .expect("done");
            assert!(matches!(e, Error::Complete { .. }), "{e}");
        }
        let other = serde_json::json!({"epochs": 4, "lr": 0.1});
        for resume in [false, true] {
            let e = RunDir::open(&out, other.clone(), identity, 0, resume)
                .err()
                .expect("other");
            let text = e.to_string();
            assert!(text.contains("started.json"), "{text}");
            assert!(text.contains("epochs: 3 -> 4"), "{text}");
            assert!(
                text.contains("finished run of another configuration"),
                "{text}"
            );
        }
        // A path compares as the file it names, however it is written.
        let here = tmp.path().display().to_string();
        let typed = serde_json::json!({"epochs": 3, "lr": 0.1, "teacher": here});
        std::fs::write(
            out.join(files::CHECKPOINT_DIR).join("started.json"),
            serde_json::to_vec(&typed).expect("json"),
        )
        .expect("write");
        let dotted =
            serde_json::json!({"epochs": 3, "lr": 0.1, "teacher": format!("{here}/./run/..")});
        let e = RunDir::open(&out, dotted, identity, 0, false)
            .err()
            .expect("done");
        assert!(matches!(e, Error::Complete { .. }), "{e}");
        // A run that kept no record of its configuration cannot be compared: refused, kept.
        std::fs::remove_dir_all(out.join(files::CHECKPOINT_DIR)).expect("rm");
        assert!(matches!(finished(&out), Ok(Finished::Unrecorded)));
        let e = RunDir::open(&out, config, identity, 0, false)
            .err()
            .expect("unrecorded");
        assert!(e.to_string().contains("settings were not recorded"), "{e}");
        // Nothing of the finished run was touched.
        assert!(out.join(files::REPORT).is_file());
    }
}
