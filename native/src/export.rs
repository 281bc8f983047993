//! `cleanse export`: a run's model as a safetensors file PyTorch loads.

use anyhow::{Context, Result};
use burn::prelude::Device;
use clap::Args;
use cleanse_core::interop::files::safetensors_bytes;
use cleanse_core::interop::{Naming, export};
use cleanse_core::model::ModelConfig;
use cleanse_core::output::{check_output, write_output};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// A run directory with model.json and model.bpk.
    #[arg(long)]
    model: PathBuf,
    /// The safetensors file to write (a new file unless --force).
    #[arg(long)]
    to: PathBuf,
    /// Parameter names: backdoorbench, bcu (= torchvision), cleanse.
    #[arg(long, default_value = "backdoorbench")]
    names: Naming,
    /// Replace --to if it exists.
    #[arg(long)]
    force: bool,
}

/// The model of the run directory `model` as the bytes of a safetensors file under `names`
/// (f32, with the model's configuration in the metadata), and its state dict.
pub(crate) fn safetensors_of(
    model: &Path,
    names: Naming,
) -> Result<(Vec<u8>, cleanse_core::interop::StateDict, ModelConfig)> {
    let (config, m) = cleanse_core::engine::run_files::load_model(model, &Device::flex())
        .with_context(|| format!("loading --model {}", model.display()))?;
    let dict = export(&m, names);
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("cleanse.naming".to_string(), names.name().to_string()),
        ("cleanse.model".to_string(), serde_json::to_string(&config)?),
    ]);
    Ok((safetensors_bytes(&dict, metadata)?, dict, config))
}

pub(crate) fn run(a: &ExportArgs) -> Result<()> {
    check_output(&a.to, "to", a.force)?;
    let (bytes, dict, config) = safetensors_of(&a.model, a.names)?;
    write_output(&a.to, &bytes, "to", a.force)?;
    let n = &config.normalization;
    outln!(
        "wrote {} ({} tensors, {} names); in PyTorch: model.load_state_dict(safetensors.torch.load_file(...)); \
         inputs in [0,1] normalised with mean {:?}, std {:?}",
        a.to.display(),
        dict.len(),
        a.names.name(),
        n.mean,
        n.std
    );
    Ok(())
}
