//! Per-epoch checkpoints: model weights, optimiser state, epoch and the history so far.
//!
//! Layout of `DIR/checkpoint/`: `model-eN.bpk` (Burn's burnpack record), `sgd-eN.bin` (momentum
//! buffers) and `state.json`, written last and atomically by the engine's run directory
//! ([`crate::engine::RunDir::checkpoint`]), which names the files of the latest complete epoch.
//! A crash at any point leaves the previous checkpoint valid.

use crate::io::{read_json, write_atomic};
use crate::optim::adam::Adam;
use crate::optim::sgd::Sgd;
use crate::report::EpochRecord;
use crate::{Error, Result};
use burn::module::Module;
use burn::prelude::*;
use burn::store::{ModuleRecord, RecordError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    let record =
        ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(|e| {
            Error::artifact(name, format!("not a model file: {}", record_error_line(&e)))
        })?;
    // Cast to the module's dtype: a record claiming another dtype (same byte length, e.g. i32
    // for f32) must not put integers into a float parameter.
    model
        .try_load_record(record.cast_to_module_dtype())
        .map_err(|e| {
            Error::artifact(
                name,
                format!("weights do not fit this model: {}", record_error_line(&e)),
            )
        })
}

/// One readable line for a Burn record error. Burn lists every mismatched or missing tensor in
/// one `Debug`-formatted vector (thousands of characters for a model of the wrong width); this
/// keeps the first, with both shapes, and counts the rest.
fn record_error_line(e: &RecordError) -> String {
    let msg = match e {
        RecordError::Io(m) | RecordError::Validation(m) => m,
    };
    for (prefix, what) in [
        ("Apply errors: ", "mismatched"),
        ("Missing tensors: ", "missing"),
    ] {
        if let Some(list) = msg.strip_prefix(prefix) {
            let items = quoted_items(list);
            let Some(first) = items.first() else { break };
            let first = first.replace("Shape { dims: ", "").replace("] }", "]");
            let first = if what == "missing" {
                format!("tensor `{first}` missing from the file")
            } else {
                first
            };
            return match items.len() - 1 {
                0 => first,
                more => format!("{first} (and {more} more {what})"),
            };
        }
    }
    first_chars(msg, 300)
}

/// The strings of a `Debug`-formatted `Vec<String>` (`["a", "b\"c"]`), unescaped.
fn quoted_items(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut item = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => item.extend(chars.next()),
                '"' => break,
                c => item.push(c),
            }
        }
        items.push(item);
    }
    items
}

/// At most `n` characters of `s`, marked when cut.
fn first_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// An optimiser whose state is checkpointed next to the weights it steps.
pub trait OptimizerState {
    /// The state as bytes.
    fn state_bytes(&self) -> Vec<u8>;
    /// Restores what [`OptimizerState::state_bytes`] wrote (`path` names the file in errors).
    fn load_state_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()>;
    /// Why the state does not fit parameters of `sizes` (by path), if it does not.
    fn check_sizes(&self, sizes: &BTreeMap<String, usize>) -> Option<String>;
}

impl OptimizerState for Sgd {
    fn state_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn load_state_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()> {
        self.load_bytes(path, bytes, device)
    }
    fn check_sizes(&self, sizes: &BTreeMap<String, usize>) -> Option<String> {
        check_buffer_sizes(self.buffers().map(|(k, t)| (k.as_str(), t)), sizes)
    }
}

impl OptimizerState for Adam {
    fn state_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn load_state_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()> {
        self.load_bytes(path, bytes, device)
    }
    fn check_sizes(&self, sizes: &BTreeMap<String, usize>) -> Option<String> {
        // Moments are kept as `m:PATH` and `v:PATH`.
        let moments = self.moments().map(|(k, t)| {
            let path = k.split_once(':').map_or(k.as_str(), |(_, p)| p);
            (path, t)
        });
        check_buffer_sizes(moments, sizes)
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

/// Saves `module` and `optimizer` as the checkpoint of `epochs_done` epochs of an engine step
/// (`model-e{n}.bpk`, `{optimizer_tag}-e{n}.bin`); returns the two file names for its state.
pub fn save_epoch<M: Module, O: OptimizerState>(
    dir: &Path,
    epochs_done: usize,
    optimizer_tag: &str,
    module: &M,
    optimizer: &O,
) -> Result<(String, String)> {
    let names = (
        format!("model-e{epochs_done}.bpk"),
        format!("{optimizer_tag}-e{epochs_done}.bin"),
    );
    save_with_optimizer(dir, (&names.0, &names.1), module, optimizer)?;
    Ok(names)
}

/// Loads what [`save_epoch`] wrote, as `state` names it, into `module` and `optimizer`.
pub fn load_epoch<M: Module, O: OptimizerState>(
    dir: &Path,
    state: &CheckpointState,
    module: M,
    optimizer: &mut O,
    device: &Device,
) -> Result<M> {
    let files = (state.model_file.as_str(), state.optimizer_file.as_str());
    load_with_optimizer(dir, files, module, optimizer, device)
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
    if let Some(reason) = optimizer.check_sizes(&crate::model::param_sizes(&module)) {
        return Err(Error::artifact(path, format!("optimizer state: {reason}")));
    }
    Ok(module)
}

/// Why optimiser state `buffers` (by parameter path) does not fit parameters of `sizes`, if it
/// does not: a buffer for a parameter the model lacks, or of another length.
pub(crate) fn check_buffer_sizes<'a>(
    buffers: impl IntoIterator<Item = (&'a str, &'a Tensor<1>)>,
    sizes: &BTreeMap<String, usize>,
) -> Option<String> {
    for (key, t) in buffers {
        let n = t.dims()[0];
        match sizes.get(key) {
            None => {
                return Some(format!(
                    "a buffer for `{key}`, which the model does not have"
                ));
            }
            Some(&want) if want != n => {
                return Some(format!(
                    "the buffer of `{key}` has {n} values; the parameter has {want}"
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// The part of an epoch file's name before its epoch number (`model-e` of `model-e12.bpk`,
/// `adam-e` of `adam-e3.bin`): what every epoch's file of that kind starts with.
pub fn epoch_prefix(name: &str) -> Option<&str> {
    let at = name.rfind("-e")?;
    let rest = &name[at + 2..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    (digits > 0 && rest[digits..].starts_with('.')).then(|| &name[..at + 2])
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
    for name in [&state.model_file, &state.optimizer_file] {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\'])
            && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name));
        if !plain {
            return Err(Error::artifact(
                path,
                format!("`{name}` is not a file name inside the checkpoint folder"),
            ));
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_files_are_known_by_their_prefix() {
        assert_eq!(epoch_prefix("model-e12.bpk"), Some("model-e"));
        assert_eq!(epoch_prefix("adam-e3.bin"), Some("adam-e"));
        assert_eq!(
            epoch_prefix("iab-mask-adam-e7.bin"),
            Some("iab-mask-adam-e")
        );
        for other in [
            "state.json",
            "started.json",
            "model-e.bpk",
            "model-ex.bpk",
            "e1.bin",
        ] {
            assert_eq!(epoch_prefix(other), None, "{other}");
        }
    }

    #[test]
    fn record_errors_become_one_line_naming_the_first_tensor() {
        let e = RecordError::Validation(format!(
            "Apply errors: {:?}",
            vec![
                "stem_conv.weight: shape mismatch, expected Shape { dims: [8, 3, 3, 3] } but \
                 record has Shape { dims: [4, 3, 3, 3] }"
                    .to_string(),
                "stem_bn.gamma: shape mismatch".to_string(),
                "x \"quoted\"".to_string(),
            ]
        ));
        assert_eq!(
            record_error_line(&e),
            "stem_conv.weight: shape mismatch, expected [8, 3, 3, 3] but record has \
             [4, 3, 3, 3] (and 2 more mismatched)"
        );
        let e = RecordError::Validation(format!("Missing tensors: {:?}", vec!["fc.bias"]));
        assert_eq!(
            record_error_line(&e),
            "tensor `fc.bias` missing from the file"
        );
        let long = RecordError::Io("x".repeat(1000));
        assert_eq!(record_error_line(&long).len(), 303);
    }
}
