//! `cleanse import`: a PyTorch or safetensors checkpoint as a cleanse run directory.

use crate::attack::AsrArgs;
use crate::{DatasetArg, ModelArg};
use anyhow::{Context, Result};
use clap::Args;
use cleanse_core::data::DataSpec;
use cleanse_core::interop::files::{ReadOptions, read_state_dict};
use cleanse_core::interop::{ImportOptions, Naming, Provenance, RunSetup, import, write_run};
use cleanse_core::model::Normalization;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The checkpoint: `torch.save` output (.pt/.pth: a state dict, a dict holding one, or a
    /// whole model) or a .safetensors file.
    #[arg(long)]
    from: PathBuf,
    /// The key of the state dict inside the checkpoint (dotted when nested); default: `model`,
    /// `state_dict` or `net` when the file has one, else the whole file.
    #[arg(long)]
    key: Option<String>,
    /// Architecture (default: the one whose parameter names the file holds).
    #[arg(long, value_enum)]
    arch: Option<ModelArg>,
    /// Parameter naming: backdoorbench, bcu (= torchvision), cleanse (default: detected).
    #[arg(long)]
    names: Option<Naming>,
    /// Base width (default: read off the stem convolution).
    #[arg(long)]
    width: Option<usize>,
    /// Classes (default: read off the classifier).
    #[arg(long)]
    classes: Option<usize>,
    /// Replace a name prefix before matching, FROM=TO (repeatable; `backbone.=` drops one).
    #[arg(long, value_parser = parse_rename)]
    rename: Vec<(String, String)>,
    /// The data set the model classifies; the run evaluates on its test set.
    #[arg(long, value_enum)]
    dataset: DatasetArg,
    /// Data directory (not needed for synthetic data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Per-channel mean the model's inputs were normalised with (default: the data set's).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    mean: Option<Vec<f32>>,
    /// Per-channel std the model's inputs were normalised with (default: the data set's).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    std: Option<Vec<f32>>,
    /// Fraction of the training set given to the defenses as their clean data (the imported
    /// model may have trained on it, as in BackdoorBench's protocol).
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Take the defender's data from the test set instead: N images per class.
    #[arg(long, value_name = "N", conflicts_with = "holdout")]
    defender_per_class: Option<usize>,
    /// Take the defender's data from the test set as this fraction of every class instead.
    #[arg(long, value_name = "F", conflicts_with_all = ["holdout", "defender_per_class"])]
    defender_fraction: Option<f64>,
    /// Seed of the defender's selection.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side length images are resized to (image folders, official GTSRB).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// What the run's ASR is measured against (saved into it, so that eval, every defense and
    /// tsne use it).
    #[command(flatten)]
    asr: AsrArgs,
    /// Output run directory (new or empty).
    #[arg(long)]
    out: PathBuf,
}

fn parse_rename(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .filter(|(a, _)| !a.is_empty())
        .ok_or_else(|| format!("expected FROM=TO with a non-empty FROM; got `{s}`"))
}

fn three(v: &Option<Vec<f32>>, default: [f32; 3]) -> [f32; 3] {
    match v.as_deref() {
        Some([a, b, c]) => [*a, *b, *c],
        _ => default,
    }
}

pub(crate) fn run(a: &ImportArgs) -> Result<()> {
    let mut data = DataSpec::new(a.dataset.into(), a.data.clone());
    data.image_size = a.image_size;
    data.defender_per_class = a.defender_per_class;
    data.defender_fraction = a.defender_fraction;
    let default = data.normalization();
    let normalization = Normalization {
        mean: three(&a.mean, default.mean),
        std: three(&a.std, default.std),
    };
    normalization.validate()?;
    let read = ReadOptions {
        key: a.key.clone(),
        renames: a.rename.clone(),
    };
    let dict = read_state_dict(&a.from, &read).context("--from")?;
    let options = ImportOptions {
        architecture: a.arch.map(Into::into),
        naming: a.names,
        width: a.width,
        num_classes: a.classes,
        normalization,
    };
    let imported = import(&dict, &options, &a.from).context("--from")?;
    let provenance = Provenance {
        from: a.from.clone(),
        naming: imported.naming,
        key: a.key.clone(),
        renames: a.rename.iter().map(|(f, t)| format!("{f}={t}")).collect(),
        ignored: imported.ignored.clone(),
    };
    let asr = a.asr.source(data.kind, a.image_size)?;
    let setup = RunSetup {
        data,
        holdout: a.holdout,
        seed: a.seed,
        asr,
    };
    write_run(&imported, setup, &provenance, &a.out)
        .with_context(|| format!("importing into {}", a.out.display()))?;
    let c = &imported.config;
    outln!(
        "imported {} ({} names, width {}, {} classes, {} parameters) into {}",
        c.architecture.name(),
        imported.naming.name(),
        c.width,
        c.num_classes,
        imported.model.num_trainable_params(),
        a.out.display()
    );
    match (&a.asr.attack_spec, &a.asr.triggered_data) {
        (Some(s), _) => outln!(
            "measure it: cleanse eval --model {} (ASR against {s})",
            a.out.display()
        ),
        (None, Some(_)) => outln!(
            "measure it: cleanse eval --model {} (ASR on the triggered images)",
            a.out.display()
        ),
        (None, None) => outln!(
            "measure it: cleanse eval --model {} [--attack RUN | --attack-spec KIND:key=value,...]",
            a.out.display()
        ),
    }
    Ok(())
}
