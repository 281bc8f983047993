//! Per-epoch checkpoints: model weights, optimiser state, epoch and the history so far.
//!
//! Layout of `DIR/checkpoint/`: `model-eN.bpk` (Burn's burnpack record), `sgd-eN.bin` (momentum
//! buffers) and `state.json`, written last and atomically by the engine's run directory
//! ([`crate::engine::RunDir::checkpoint`]), which names the files of the latest complete epoch.
//! A crash at any point leaves the previous checkpoint valid.

use crate::io::{read_json, write_atomic};
use crate::report::EpochRecord;
use crate::train::adam::Adam;
use crate::train::sgd::Sgd;
use crate::{Error, Result};
use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout.
pub const CHECKPOINT_VERSION: u32 = 1;

/// The `state.json` of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    pub checkpoint_version: u32,
    /// Epochs completed (the next epoch to run, 0-based).
    pub epochs_done: usize,
    pub seed: u64,
    /// The run's configuration, compared on resume.
    pub config: serde_json::Value,
    pub model_file: String,
    pub optimizer_file: String,
    pub history: Vec<EpochRecord>,
}

/// Writes the model weights to `path` atomically.
pub fn save_model<M: Module>(model: &M, path: &Path) -> Result<()> {
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| Error::artifact(path, format!("cannot serialise model: {e:?}")))?;
    write_atomic(path, &bytes)
}

/// Loads weights from `path` into `model` (built with the same [`crate::model::ModelConfig`]).
pub fn load_model<M: Module>(model: M, path: &Path) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    model_from_bytes(model, bytes, path)
}

/// Loads weights from the bytes of a model file (`name` is what errors call it) into `model`.
pub fn model_from_bytes<M: Module>(model: M, bytes: Vec<u8>, name: &Path) -> Result<M> {
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::artifact(name, format!("not a model file: {e:?}")))?;
    model
        .try_load_record(record)
        .map_err(|e| Error::artifact(name, format!("weights do not fit this model: {e:?}")))
}

/// An optimiser whose state is checkpointed next to the weights it steps.
pub trait OptimizerState {
    /// The state as bytes.
    fn state_bytes(&self) -> Vec<u8>;
    /// Restores what [`OptimizerState::state_bytes`] wrote (`path` names the file in errors).
    fn load_state_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()>;
}

impl OptimizerState for Sgd {
    fn state_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn load_state_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()> {
        self.load_bytes(path, bytes, device)
    }
}

impl OptimizerState for Adam {
    fn state_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn load_state_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()> {
        self.load_bytes(path, bytes, device)
    }
}

/// Writes `module`'s weights to `dir/model_file` and `optimizer`'s state to
/// `dir/optimizer_file`, each atomically (creating `dir`).
pub fn save_with_optimizer<M: Module, O: OptimizerState>(
    dir: &Path,
    (model_file, optimizer_file): (&str, &str),
    module: &M,
    optimizer: &O,
) -> Result<()> {
    crate::io::create_dir_all(dir)?;
    save_model(module, &dir.join(model_file))?;
    write_atomic(&dir.join(optimizer_file), &optimizer.state_bytes())
}

/// Loads what [`save_with_optimizer`] wrote into `module` (built with the same configuration)
/// and `optimizer`.
pub fn load_with_optimizer<M: Module, O: OptimizerState>(
    dir: &Path,
    (model_file, optimizer_file): (&str, &str),
    module: M,
    optimizer: &mut O,
    device: &Device,
) -> Result<M> {
    let module = load_model(module, &dir.join(model_file))?;
    let path = dir.join(optimizer_file);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    optimizer.load_state_bytes(&path, &bytes, device)?;
    Ok(module)
}

/// Removes the files of `dir` whose names start with one of `prefixes`, except those named in
/// `keep`: older epochs' checkpoint files, once a newer checkpoint no longer needs them. A file
/// that cannot be removed is left (it costs disk space, not correctness).
pub fn remove_stale(dir: &Path, prefixes: &[&str], keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) && !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The state file of a checkpoint directory.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// The file a run writes into its checkpoint directory when it starts, before any preparation
/// (IAB's mask pre-training, LC's adversarial images): its configuration, so that a run stopped
/// before its first checkpoint can be resumed with the same flags, keeping what preparation saved.
pub fn started_path(dir: &Path) -> PathBuf {
    dir.join("started.json")
}

/// Whether `dir` (a checkpoint directory) holds a run that can be resumed: a checkpoint, or a
/// run stopped before its first one.
pub fn resumable(dir: &Path) -> bool {
    state_path(dir).is_file() || started_path(dir).is_file()
}

/// Reads a checkpoint's state.
pub fn load_state(dir: &Path) -> Result<CheckpointState> {
    let path = state_path(dir);
    let state: CheckpointState = read_json(&path)?;
    if state.checkpoint_version != CHECKPOINT_VERSION {
        return Err(Error::artifact(
            path,
            format!(
                "checkpoint version {} (this build reads version {CHECKPOINT_VERSION})",
                state.checkpoint_version
            ),
        ));
    }
    Ok(state)
}
