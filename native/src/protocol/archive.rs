//! The results archive (`results/<spec name>/` in the repository): the finished runs behind a
//! protocol's table, kept with the code, checked on every read, restored into a run folder and
//! extended by `cleanse protocol run --archive`.
//!
//! An archive has the protocol's run layout (`badnets/t0-s0/attack/`, `badnets/t0-s0/kd/`, ...)
//! with, in each run's folder:
//! - `manifest.json` ([`Manifest`]): the command line, the cleanse commit, the arithmetic that
//!   computed it, its time, and the SHA-256 of every other file of the entry;
//! - every run: `report.json`, `split.json`, `model.json` and the configuration it started with
//!   (`checkpoint/started.json`);
//! - a model other runs start from (an attack's teacher, a clean reference): its weights as
//!   `model.safetensors` (`cleanse export`'s file: f32, BackdoorBench's names), `attack.json` and
//!   the trigger's files (WaNet's grid, IAB's two networks); a defended model's weights are not
//!   kept (its command line re-makes it);
//! - a run archived unfinished, to continue on another machine: its checkpoint as well (the
//!   files it resumes from), replaced when it finishes.
//!
//! Beside them: `archive.json` (the format's version), `protocols/<name>.json` (the plan, which
//! `protocol table` reads) and `tables/` (the table as `protocol table` prints it).
//!
//! Every write is atomic: an entry is built in a temporary folder and renamed into place; one
//! that replaces another moves the old one aside first (`.old-*`), and the next process that
//! opens the archive finishes or undoes a replacement a kill interrupted.

use super::plan::{Plan, Role, Run};
use crate::batch::{State, state};
use anyhow::{Context, Result, anyhow, bail};
use cleanse_core::engine::run_dir::{busy, files};
use cleanse_core::interop::files::{ReadOptions, read_state_dict};
use cleanse_core::interop::{ImportOptions, Naming, import};
use cleanse_core::model::ModelConfig;
use cleanse_core::report::{Report, RunStatus};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The version of the archive's format ([`Manifest`], the files of an entry).
pub(crate) const ARCHIVE_VERSION: u32 = 1;
/// An entry's manifest, in the run's folder.
pub(crate) const MANIFEST: &str = "manifest.json";
/// The archive's own file, at its root.
pub(crate) const INDEX: &str = "archive.json";
/// Held while a process writes to the archive (an OS lock; not part of the archive).
const LOCK: &str = "archive.lock";
/// A teacher's weights in the archive.
pub(crate) const WEIGHTS: &str = "model.safetensors";
/// The naming of archived weights: `cleanse export`'s default, which BackdoorBench's code loads.
const WEIGHT_NAMES: Naming = Naming::Backdoorbench;

/// The configuration a run started with (what a finished run's settings are compared by).
const STARTED: &str = "checkpoint/started.json";
/// The files of a finished run's configuration and results, kept for every run.
const RUN_FILES: [&str; 4] = [files::REPORT, files::SPLIT, files::MODEL_CONFIG, STARTED];
/// A teacher's attack and trigger files, kept beside its weights.
const TRIGGER_FILES: [&str; 4] = [
    cleanse_core::attack::files::ATTACK,
    cleanse_core::attack::files::WARP_GRID,
    cleanse_core::attack::files::IAB_GENERATOR,
    cleanse_core::attack::files::IAB_MASK,
];

/// Whether an entry holds a finished run or one to be continued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EntryStatus {
    Complete,
    InProgress,
}

/// `manifest.json`: what made an archived run, and the hash of each of its files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub archive_version: u32,
    /// The run's name in the protocol (its folder), e.g. `badnets/t0-s0/kd`.
    pub run: String,
    pub status: EntryStatus,
    /// The command line it was made with (without the program's name), `--out` included.
    pub command: Vec<String>,
    /// The protocol's output folder it ran in (paths in `command` start with it).
    pub out: String,
    /// The cleanse commit of the program that archived it (`+changes` when its sources differed
    /// from that commit).
    pub commit: String,
    /// The arithmetic that computed it, in order (a run resumed on another kind of machine has
    /// two): the CPU's vector extensions for the CPU backend, the adapter for wgpu. Runs repeat
    /// bit for bit on one kind, not across kinds.
    pub arithmetic: Vec<String>,
    /// Seconds of its epochs (training and evaluation), from its report.
    pub epoch_seconds: f64,
    /// Wall-clock seconds of the processes that ran it, where the archiving process ran it (a
    /// run resumed across sittings: the sum over the sittings that archived it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
    /// Epochs done (of an unfinished run: so far).
    pub epochs_done: usize,
    pub archived_unix: u64,
    /// Every file of the entry but the manifest, by path relative to the entry's folder, with
    /// its SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// Seconds the run took: its processes' wall-clock time where known, never less than its
    /// epochs' (a run resumed from an archive that did not record the earlier sittings).
    pub(crate) fn seconds(&self) -> f64 {
        self.wall_seconds
            .map_or(self.epoch_seconds, |w| w.max(self.epoch_seconds))
    }
}

/// The commit of this program's sources (set by the build script).
pub(crate) fn commit() -> &'static str {
    env!("CLEANSE_COMMIT")
}

/// This CPU's kind of vector arithmetic, which decides the CPU backend's summation order: the
/// x86-64 microarchitecture level (v4: AVX-512, v3: AVX2 and FMA, ...) the backend's vector
/// code dispatches on, or the architecture elsewhere.
pub(crate) fn cpu_arithmetic() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v4 = has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl");
        let v3 = has!("avx2") && has!("fma") && has!("bmi2") && has!("f16c");
        let v2 = has!("sse4.2") && has!("popcnt");
        let level = match (v4, v3, v2) {
            (true, true, _) => "v4",
            (_, true, _) => "v3",
            (_, _, true) => "v2",
            _ => "v1",
        };
        format!("cpu x86-64-{level}")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("cpu {}", std::env::consts::ARCH)
    }
}

/// The arithmetic that computed the run of `report`.
fn arithmetic_of(report: &Report) -> String {
    match (&report.device.adapter, report.device.backend) {
        (Some(a), _) => format!("wgpu {} ({})", a.name, a.api),
        (None, cleanse_core::device::Backend::Cuda) => "cuda".to_string(),
        (None, _) => cpu_arithmetic(),
    }
}

/// The SHA-256 of `bytes`, in hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `rel` as a path inside a folder: relative, of plain names only; an error naming `manifest`
/// otherwise.
fn inside(manifest: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !rel.contains('\\');
    if !plain {
        bail!(
            "{}: names the file `{rel}`, which is outside the archive entry (expected a relative \
             path of plain names)",
            manifest.display()
        );
    }
    Ok(p.to_path_buf())
}

/// Whether `run` makes a model other runs start from (its weights are archived).
fn keeps_weights(run: &Run) -> bool {
    matches!(run.role, Role::Attack | Role::Clean)
}

/// `words` without `--threads N`: the thread count does not change a run's numbers (a golden
/// test checks this), so a run made with another count is the same run.
fn without_threads(words: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if w == "--threads" {
            it.next();
        } else if !w.starts_with("--threads=") {
            out.push(w.clone());
        }
    }
    out
}

/// `words` with the protocol output folder `from` replaced by `to` at the start of every path.
fn rebased(words: &[String], from: &str, to: &str) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            if w == from {
                to.to_string()
            } else if let Some(rest) = w.strip_prefix(&format!("{from}/")) {
                format!("{to}/{rest}")
            } else {
                w.clone()
            }
        })
        .collect()
}

/// `value` with every string that is the folder `from` or a path in it re-based to `to`.
fn rebased_json(value: &serde_json::Value, from: &str, to: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(w) => Value::String(rebased(std::slice::from_ref(w), from, to).remove(0)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| rebased_json(v, from, to)).collect())
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), rebased_json(v, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The command line the plan gives `run` in the output folder `out`.
fn planned_command(run: &Run, out: &Path) -> Vec<String> {
    let mut words = run.words.clone();
    words.extend([
        "--out".to_string(),
        out.join(&run.name).display().to_string(),
    ]);
    words
}

/// What restoring one run did.
#[derive(Debug, PartialEq)]
pub(crate) enum Restored {
    /// Its archived files are in the output folder now.
    Complete,
    /// Its archived checkpoint is in the output folder; it resumes from there.
    InProgress { epochs: usize },
    /// Not archived.
    Absent,
    /// Left as it is, for the reason given.
    Kept(String),
}

/// A results archive. Writes (and the repair of an interrupted one) take its lock, so that
/// several processes may extend one archive.
pub(crate) struct Archive {
    root: PathBuf,
}

impl Archive {
    /// The archive at `root`, to read: `None` when there is none.
    pub fn at(root: &Path) -> Result<Option<Archive>> {
        if !root.exists() {
            return Ok(None);
        }
        let index = root.join(INDEX);
        if !index.is_file() {
            bail!("{}: not a results archive (no {INDEX})", root.display());
        }
        check_index(&index)?;
        Ok(Some(Archive {
            root: root.to_path_buf(),
        }))
    }

    /// Waits for the archive's lock (held by a process that writes to it) and takes it until
    /// the returned file is dropped.
    fn lock(&self) -> Result<File> {
        let lock_path = self.root.join(LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("{}: cannot open", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("{}: cannot lock", lock_path.display()))?;
        Ok(lock)
    }

    /// Opens (creating it if missing) the archive at `root` to extend it, and finishes or undoes
    /// a replacement a kill interrupted.
    pub fn open(root: &Path) -> Result<Archive> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("{}: cannot create the archive", root.display()))?;
        let index = root.join(INDEX);
        if index.is_file() {
            check_index(&index)?;
        } else {
            let non_empty = std::fs::read_dir(root)
                .with_context(|| format!("reading {}", root.display()))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != LOCK);
            if non_empty {
                bail!(
                    "{}: not a results archive (no {INDEX}) and not empty; give a new folder or \
                     an archive",
                    root.display()
                );
            }
            cleanse_core::io::write_json_atomic(
                &index,
                &serde_json::json!({ "archive_version": ARCHIVE_VERSION }),
            )?;
        }
        let archive = Archive {
            root: root.to_path_buf(),
        };
        let _held = archive.lock()?;
        archive.recover()?;
        Ok(archive)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Finishes replacements a kill interrupted (the new entry in place: the old one is removed;
    /// not in place: the old one goes back) and removes unfinished new entries.
    fn recover(&self) -> Result<()> {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.filter_map(|e| e.ok()) {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if !path.is_dir() {
                    continue;
                }
                if let Some(run) = name.strip_prefix(".old-") {
                    let current = dir.join(run);
                    if current.join(MANIFEST).is_file() {
                        std::fs::remove_dir_all(&path)
                            .with_context(|| format!("removing {}", path.display()))?;
                    } else {
                        if current.exists() {
                            std::fs::remove_dir_all(&current)
                                .with_context(|| format!("removing {}", current.display()))?;
                        }
                        std::fs::rename(&path, &current)
                            .with_context(|| format!("restoring {}", current.display()))?;
                    }
                } else if name.starts_with(".new-") {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                } else if !name.starts_with('.') && !path.join(MANIFEST).is_file() {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// The manifest of the entry of run `name`, checked: every file it names is inside the entry
    /// and has its recorded hash. `None` when the run is not archived.
    pub fn entry(&self, name: &str) -> Result<Option<Manifest>> {
        let dir = self.root.join(name);
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Ok(None);
        }
        let m: Manifest = cleanse_core::io::read_json(&path)?;
        if m.archive_version != ARCHIVE_VERSION {
            bail!(
                "{}: archive version {}; this build reads version {ARCHIVE_VERSION}",
                path.display(),
                m.archive_version
            );
        }
        if m.run != name {
            bail!(
                "{}: the manifest is of run `{}`, but it lies in the folder of `{name}`",
                path.display(),
                m.run
            );
        }
        for (rel, hash) in &m.files {
            let rel_path = inside(&path, rel)?;
            // A symbolic link on the way would lead out of the entry.
            let mut at = dir.clone();
            for c in rel_path.components() {
                at.push(c);
                if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                    bail!(
                        "{}: a symbolic link (named by {}); an archive holds plain files only",
                        at.display(),
                        path.display()
                    );
                }
            }
            let file = dir.join(rel_path);
            let bytes = std::fs::read(&file).map_err(|e| {
                anyhow!(
                    "{}: {e} (named by {}; the archive entry is incomplete)",
                    file.display(),
                    path.display()
                )
            })?;
            let got = sha256_hex(&bytes);
            if &got != hash {
                bail!(
                    "{}: SHA-256 {got} differs from the {hash} its manifest {} records: the file \
                     was changed or damaged; restore it from the repository's history",
                    file.display(),
                    path.display()
                );
            }
        }
        Ok(Some(m))
    }

    /// The runs archived, by name (every `manifest.json` under the root), each checked.
    pub fn entries(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for e in entries.filter_map(|e| e.ok()) {
                let path = e.path();
                let name = e.file_name();
                // Not followed: a link could lead out of the archive or round in a circle.
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if !is_dir || name.to_string_lossy().starts_with('.') {
                    continue;
                }
                if path.join(MANIFEST).is_file() {
                    let rel = path
                        .strip_prefix(&self.root)
                        .expect("under the root")
                        .to_string_lossy()
                        .into_owned();
                    if let Some(m) = self.entry(&rel)? {
                        out.push(m);
                    }
                } else {
                    stack.push(path);
                }
            }
        }
        out.sort_by(|a, b| a.run.cmp(&b.run));
        Ok(out)
    }

    /// Whether the archive's entry `m` is of the command the plan gives `run` in `out` (with
    /// any thread count).
    pub(super) fn same_command(m: &Manifest, run: &Run, out: &Path) -> bool {
        let archived = rebased(&m.command, &m.out, &out.display().to_string());
        without_threads(&archived) == without_threads(&planned_command(run, out))
    }

    /// Brings the archived run `run` into the output folder `out`, when it is archived with the
    /// command the plan gives it and `out` has nothing of it yet (a run folder that is there is
    /// kept: nothing local is overwritten).
    pub fn restore(&self, run: &Run, out: &Path) -> Result<Restored> {
        if run.role == Role::Map {
            return Ok(Restored::Absent);
        }
        let Some(m) = self.entry(&run.name)? else {
            return Ok(Restored::Absent);
        };
        let dir = out.join(&run.name);
        if busy(&dir) {
            return Ok(Restored::Kept("another process is running it here".into()));
        }
        match state(&dir) {
            State::Complete => return Ok(Restored::Kept("complete here already".into())),
            State::Resume => {
                return Ok(Restored::Kept(format!(
                    "unfinished here; the local run is kept (remove {} to take the archive's)",
                    dir.display()
                )));
            }
            State::Fresh if !cleanse_core::engine::run_dir::dir_is_empty(&dir)? => {
                return Ok(Restored::Kept(format!(
                    "{} holds other files; left as it is",
                    dir.display()
                )));
            }
            State::Fresh => {}
        }
        if !Self::same_command(&m, run, out) {
            return Ok(Restored::Kept(format!(
                "archived with another command line (`{}`); it runs again and its new result \
                 replaces the archived one",
                m.command.join(" ")
            )));
        }
        if m.status == EntryStatus::InProgress && m.out != out.display().to_string() {
            // An unfinished run's checkpoint records the paths it was started with.
            return Ok(Restored::Kept(format!(
                "archived unfinished from the output folder {}; it resumes only there",
                m.out
            )));
        }
        let _held = self.lock()?;
        let src = self.root.join(&run.name);
        let parent = cleanse_core::io::parent_dir(&dir);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".restore-")
            .tempdir_in(parent)
            .with_context(|| format!("{}: cannot create a temporary folder", parent.display()))?;
        for rel in m.files.keys() {
            let from = src.join(rel);
            if rel == WEIGHTS {
                let config: ModelConfig =
                    cleanse_core::io::read_json(&src.join(files::MODEL_CONFIG))?;
                weights_to_model(&from, &config, &tmp.path().join(files::MODEL))?;
                continue;
            }
            let to = tmp.path().join(rel);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("{}: cannot create", p.display()))?;
            }
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            if rel == STARTED {
                // The configuration a finished run is compared by names the folders it was run
                // in (a defense's suspect): here they are the ones of `out`.
                let config: serde_json::Value = cleanse_core::io::read_json(&to)?;
                let config = rebased_json(&config, &m.out, &out.display().to_string());
                cleanse_core::io::write_json_atomic(&to, &config)?;
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("{}: cannot replace", dir.display()))?;
        }
        let tmp = tmp.keep();
        std::fs::rename(&tmp, &dir).with_context(|| format!("restoring {}", dir.display()))?;
        Ok(match m.status {
            EntryStatus::Complete => Restored::Complete,
            EntryStatus::InProgress => Restored::InProgress {
                epochs: m.epochs_done,
            },
        })
    }

    /// Whether `run` (in `out`) should be written into the archive: it is complete there, and
    /// the archive has no complete entry of the same command; or, with `unfinished`, it has a
    /// checkpoint further on than the archive's.
    pub fn wants(&self, run: &Run, out: &Path, unfinished: bool) -> Result<bool> {
        if run.role == Role::Map {
            return Ok(false);
        }
        let dir = out.join(&run.name);
        let entry = self.entry(&run.name)?;
        let same = entry.as_ref().filter(|m| Self::same_command(m, run, out));
        Ok(match state(&dir) {
            State::Complete => same.is_none_or(|m| m.status != EntryStatus::Complete),
            State::Resume if unfinished => {
                let done = cleanse_core::engine::checkpoint::load_state(&dir.join("checkpoint"))
                    .map(|s| s.epochs_done)
                    .unwrap_or(0);
                match same {
                    None => entry.is_none_or(|m| m.status == EntryStatus::InProgress),
                    Some(m) => m.status == EntryStatus::InProgress && done > m.epochs_done,
                }
            }
            _ => false,
        })
    }

    /// Writes the run `run` of the output folder `out` into the archive (replacing its entry):
    /// complete, or with `unfinished` its checkpoint. `wall` is the time the process that ran it
    /// took, when known.
    pub fn add(&self, run: &Run, out: &Path, wall: Option<Duration>) -> Result<Manifest> {
        let dir = out.join(&run.name);
        // An unfinished run killed between its first checkpoint and its first report has none.
        let report: Option<Report> = match dir.join(files::REPORT).is_file() {
            true => Some(
                cleanse_core::io::read_json(&dir.join(files::REPORT))
                    .with_context(|| format!("archiving {}", run.name))?,
            ),
            false => None,
        };
        let complete = report
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Complete);
        let _held = self.lock()?;
        let dest = self.root.join(&run.name);
        let parent = cleanse_core::io::parent_dir(&dest);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        let leaf = dest
            .file_name()
            .expect("a run has a name")
            .to_string_lossy()
            .into_owned();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".new-{leaf}-"))
            .tempdir_in(parent)
            .with_context(|| format!("{}: cannot create a temporary folder", parent.display()))?;
        let mut hashes = BTreeMap::new();
        let mut put = |rel: &str, bytes: &[u8]| -> Result<()> {
            let to = tmp.path().join(rel);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("{}: cannot create", p.display()))?;
            }
            std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
            hashes.insert(rel.to_string(), sha256_hex(bytes));
            Ok(())
        };
        let (mut epochs_done, mut epoch_seconds) = match &report {
            Some(r) => (r.epochs.len(), r.epochs.iter().map(|e| e.seconds).sum()),
            None => (0, 0.0),
        };
        if complete {
            let mut names: Vec<&str> = RUN_FILES.to_vec();
            if keeps_weights(run) {
                names.extend(TRIGGER_FILES);
                let (bytes, _, _) = crate::export::safetensors_of(&dir, WEIGHT_NAMES)
                    .with_context(|| format!("archiving the weights of {}", run.name))?;
                put(WEIGHTS, &bytes)?;
            }
            for rel in names {
                if let Some(bytes) = read_if_there(&dir.join(rel))? {
                    put(rel, &bytes)?;
                }
            }
        } else {
            let (snapshot, state) = unfinished_snapshot(&dir)?;
            for (rel, bytes) in &snapshot {
                put(rel, bytes)?;
            }
            epochs_done = state.epochs_done;
            epoch_seconds = state.history.iter().map(|e| e.seconds).sum();
        }
        let arithmetic_now = report
            .as_ref()
            .map_or_else(|| "unknown (no report yet)".to_string(), arithmetic_of);
        // A resumed run's entry: its arithmetic and its earlier sittings' time carry on.
        let earlier = self
            .entry(&run.name)
            .ok()
            .flatten()
            .filter(|p| p.status == EntryStatus::InProgress);
        let mut arithmetic = earlier
            .as_ref()
            .map(|p| p.arithmetic.clone())
            .unwrap_or_default();
        if arithmetic.last() != Some(&arithmetic_now) {
            arithmetic.push(arithmetic_now);
        }
        let earlier_wall = earlier.as_ref().and_then(|p| p.wall_seconds).unwrap_or(0.0);
        if commit() == "unknown" || commit().ends_with("+changes") {
            eprintln!(
                "archive: {}: this program was built from {}, which its manifest records",
                run.name,
                match commit() {
                    "unknown" => "sources whose commit it could not read".to_string(),
                    c => format!(
                        "uncommitted changes to commit {}",
                        c.trim_end_matches("+changes")
                    ),
                }
            );
        }
        let manifest = Manifest {
            archive_version: ARCHIVE_VERSION,
            run: run.name.clone(),
            status: match complete {
                true => EntryStatus::Complete,
                false => EntryStatus::InProgress,
            },
            command: planned_command(run, out),
            out: out.display().to_string(),
            commit: commit().to_string(),
            arithmetic,
            epoch_seconds,
            wall_seconds: wall.map(|w| earlier_wall + w.as_secs_f64()),
            epochs_done,
            archived_unix: cleanse_core::report::now_unix(),
            files: hashes,
        };
        let mut text = serde_json::to_vec_pretty(&manifest)?;
        text.push(b'\n');
        std::fs::write(tmp.path().join(MANIFEST), &text)
            .with_context(|| format!("writing the manifest of {}", run.name))?;
        sync_tree(tmp.path())?;
        let tmp = tmp.keep();
        stall("publish");
        if dest.exists() {
            let old = parent.join(format!(".old-{leaf}"));
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("removing {}", old.display()))?;
            }
            std::fs::rename(&dest, &old)
                .with_context(|| format!("moving {} aside", dest.display()))?;
            stall("replace");
            std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        } else {
            std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        }
        Ok(manifest)
    }

    /// Saves the plan (for `protocol table`) into the archive.
    pub fn save_plan(&self, plan: &Plan) -> Result<()> {
        let _held = self.lock()?;
        plan.save(&self.root)
    }
}

/// For the test that kills a process while it archives: with `CLEANSE_ARCHIVE_STALL` set to
/// `stage` (`publish`: a new entry written, not yet in place; `replace`: the old entry moved
/// aside, the new one not yet in place), waits there for a minute.
fn stall(stage: &str) {
    if std::env::var("CLEANSE_ARCHIVE_STALL").is_ok_and(|s| s == stage) {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Checks the archive's own file: an archive of this build's format.
fn check_index(index: &Path) -> Result<()> {
    let v: serde_json::Value = cleanse_core::io::read_json(index)?;
    match v.get("archive_version").and_then(|v| v.as_u64()) {
        Some(n) if n == ARCHIVE_VERSION as u64 => Ok(()),
        other => bail!(
            "{}: archive version {other:?}; this build reads version {ARCHIVE_VERSION}",
            index.display()
        ),
    }
}

/// An unfinished run's files (relative path, bytes) and the checkpoint state they belong to.
type Snapshot = (
    Vec<(String, Vec<u8>)>,
    cleanse_core::engine::checkpoint::CheckpointState,
);

/// The bytes of the file at `path`; `None` when there is none.
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("{}: {e}", path.display())),
    }
}

/// The files an unfinished run resumes from, read as one consistent snapshot (the run may be
/// going on): its checkpoint's state first, then the epoch files that state names and
/// everything else in its folder but the lock, leftovers of interrupted writes and earlier
/// epochs' files. A run that moves on to the next epoch while it is read (its previous epoch's
/// files removed) is read again. Returns the files by relative path, and the state.
fn unfinished_snapshot(dir: &Path) -> Result<Snapshot> {
    let ckpt = dir.join(files::CHECKPOINT_DIR);
    let state_path = cleanse_core::engine::checkpoint::state_path(&ckpt);
    let state_rel = state_path
        .strip_prefix(dir)
        .expect("inside the run")
        .to_string_lossy()
        .into_owned();
    for _attempt in 0..5 {
        let state_bytes = std::fs::read(&state_path)
            .with_context(|| format!("{}: no checkpoint to archive", dir.display()))?;
        let state: cleanse_core::engine::checkpoint::CheckpointState =
            serde_json::from_slice(&state_bytes)
                .with_context(|| format!("{}: not a checkpoint state", state_path.display()))?;
        let current = [state.model_file.as_str(), state.optimizer_file.as_str()];
        let mut out = vec![(state_rel.clone(), state_bytes.clone())];
        let mut moved_on = false;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)
                .with_context(|| format!("reading {}", d.display()))?
                .filter_map(|e| e.ok())
            {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name == files::LOCK || name.starts_with(".tmp") {
                    continue;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(dir)
                    .expect("under the run")
                    .to_string_lossy()
                    .into_owned();
                let epoch_file = d == ckpt
                    && current
                        .iter()
                        .filter_map(|f| cleanse_core::engine::checkpoint::epoch_prefix(f))
                        .any(|p| name.starts_with(p));
                if rel == state_rel || (epoch_file && !current.contains(&name.as_str())) {
                    continue;
                }
                match read_if_there(&path)? {
                    Some(bytes) => out.push((rel, bytes)),
                    None if epoch_file => moved_on = true,
                    None => {}
                }
            }
        }
        let named_there = current.iter().all(|f| {
            out.iter()
                .any(|(rel, _)| Path::new(rel) == Path::new(files::CHECKPOINT_DIR).join(f))
        });
        if !moved_on && named_there {
            out.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok((out, state));
        }
    }
    bail!(
        "{}: the run kept moving on to its next epoch while it was read; archive it again",
        dir.display()
    )
}

/// Flushes every file under `dir` to disk (before the rename that publishes it).
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
    {
        let path = e.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Converts archived weights (`cleanse export`'s safetensors) into the model file of a run
/// folder, checking that they are the model `config` describes.
fn weights_to_model(from: &Path, config: &ModelConfig, to: &Path) -> Result<()> {
    let dict = read_state_dict(from, &ReadOptions::default())
        .with_context(|| format!("reading {}", from.display()))?;
    let imported = import(
        &dict,
        &ImportOptions {
            architecture: Some(config.architecture),
            naming: Some(WEIGHT_NAMES),
            width: Some(config.width),
            num_classes: Some(config.num_classes),
            normalization: config.normalization.clone(),
        },
        from,
    )?;
    if &imported.config != config {
        bail!(
            "{}: the weights are of another model than its model.json describes",
            from.display()
        );
    }
    cleanse_core::engine::checkpoint::save_model(&imported.model, to)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_an_entry_are_refused() {
        let m = Path::new("a/manifest.json");
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "./a", "a\\..\\b"] {
            let e = inside(m, bad).expect_err(bad).to_string();
            assert!(e.contains("outside the archive entry") && e.contains("a/manifest.json"));
        }
        assert_eq!(
            inside(m, "checkpoint/started.json").expect("plain"),
            Path::new("checkpoint/started.json")
        );
    }

    #[test]
    fn command_lines_move_with_the_output_folder() {
        let words: Vec<String> = [
            "defend",
            "kd",
            "--model",
            "runs/q/a/attack",
            "--out",
            "runs/q",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            rebased(&words, "runs/q", "/tmp/x"),
            [
                "defend",
                "kd",
                "--model",
                "/tmp/x/a/attack",
                "--out",
                "/tmp/x"
            ]
        );
        // A folder whose name merely starts the same is another folder.
        let other = vec!["runs/q2/a".to_string()];
        assert_eq!(rebased(&other, "runs/q", "/tmp/x"), other);
        let threads: Vec<String> = ["a", "--threads", "1", "b", "--threads=2"]
            .map(String::from)
            .to_vec();
        assert_eq!(without_threads(&threads), ["a", "b"]);
    }
}
