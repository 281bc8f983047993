//! A run directory's files as the layers above read them: by name, from a folder on disk or from
//! the files a browser's file picker gives ([`RunFiles`]); the model they hold; the defender's
//! held-out images.

use crate::data::ImageSet;
use crate::data::split::SplitFile;
use crate::engine::checkpoint::model_from_bytes;
use crate::engine::run_dir::files;
use crate::io::read_json;
use crate::model::{Classifier, ModelConfig};
use crate::{Error, Result};
use burn::prelude::*;
use std::path::{Path, PathBuf};

/// The files of a run directory, read by name: a folder on disk, or the files a browser's file
/// picker gives.
pub trait RunFiles {
    /// The bytes of file `name`; `None` when there is no such file.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// How errors name file `name`.
    fn path(&self, name: &str) -> PathBuf;
    /// The error for a file that must be there.
    fn missing(&self, name: &str, why: &str) -> Error {
        Error::artifact(self.path(name), format!("missing ({why})"))
    }
    /// The bytes of file `name`, which must be there (`why` says what it is).
    fn need(&self, name: &str, why: &str) -> Result<Vec<u8>> {
        self.read(name)?.ok_or_else(|| self.missing(name, why))
    }
}

impl RunFiles for Path {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.join(name)
    }
}

/// The model of a run's files: its configuration (`model.json`) and weights (`model.bpk`), as an
/// evaluation copy on `device`.
pub fn load_model<F: RunFiles + ?Sized>(
    files: &F,
    device: &Device,
) -> Result<(ModelConfig, Classifier)> {
    let config_bytes = files.need(files::MODEL_CONFIG, "the model's configuration")?;
    let config: ModelConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
        Error::artifact(
            files.path(files::MODEL_CONFIG),
            format!("not a model configuration: {e}"),
        )
    })?;
    config
        .validate()
        .map_err(|e| Error::artifact(files.path(files::MODEL_CONFIG), e.to_string()))?;
    let weights = files.need(files::MODEL, "the model's weights")?;
    let model = model_from_bytes(config.init(device), weights, &files.path(files::MODEL))?;
    Ok((config, model.valid()))
}

/// A trained model loaded from a run directory.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub model: Classifier,
    pub dir: PathBuf,
}

/// Loads `DIR/model.json` + `DIR/model.bpk` onto `device` (for evaluation).
pub fn load_run_model(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let (config, model) = load_model(dir, device)?;
    Ok(LoadedModel {
        config,
        model,
        dir: dir.to_path_buf(),
    })
}

/// The held-out images of a run (the defender's clean data), read from its split file: held out
/// from the training set, or the test set's slice when the data spec takes it from there.
pub fn load_holdout(dir: &Path) -> Result<ImageSet> {
    let path = dir.join(files::SPLIT);
    let split: SplitFile = read_json(&path)?;
    split.defender_data(&mut split.data.load()?, &path)
}
