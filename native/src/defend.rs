//! `cleanse defend kd`: the paper's distillation cleanser.

use crate::{DatasetArg, DeviceArgs, describe_device, progress};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cleanse_core::data::augment::Augment;
use cleanse_core::data::{DataSpec, DatasetKind};
use cleanse_core::defend::cleanse::{KdConfig, UnlabeledSource, cleanse};
use cleanse_core::defend::kd::{PAPER_TEMPERATURE, TemperatureRange};
use cleanse_core::defend::reinit::{self, ADAPTIVE_RATIOS, InitMode};
use cleanse_core::io::read_json;
use cleanse_core::train::run::{SplitFile, files};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub(crate) enum DefendCommand {
    /// Distillation on unlabeled data from a layer-wise re-initialised student (Pang et al. 2023).
    Kd(KdArgs),
}

#[derive(Args, Debug)]
pub(crate) struct KdArgs {
    /// The suspicious model's run directory (a `train` or `attack` output).
    #[arg(long)]
    model: PathBuf,
    /// Unlabeled images from another data set's training part (default: the split held out
    /// from the model's training set). Its labels are never read.
    #[arg(long, value_enum)]
    unlabeled_dataset: Option<DatasetArg>,
    /// Directory of --unlabeled-dataset.
    #[arg(long)]
    unlabeled_data: Option<PathBuf>,
    /// Use only N of the unlabeled images (chosen at random with --seed), e.g. to measure how
    /// the cleanser depends on the size of the defender's set.
    #[arg(long, value_name = "N")]
    unlabeled_limit: Option<usize>,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Distillation temperature range FROM,TO: T rises linearly from FROM to TO over the
    /// epochs, reaching TO in the last (`T = FROM + (TO - FROM) (e + 1) / E`); equal values keep
    /// it constant.
    #[arg(long, value_delimiter = ',', num_args = 1, default_values_t = [PAPER_TEMPERATURE.from, PAPER_TEMPERATURE.to])]
    temperature: Vec<f64>,
    /// Re-initialisation ratios: stem, stage 1-4, fc.
    #[arg(long, value_delimiter = ',', default_values_t = ADAPTIVE_RATIOS)]
    ratios: Vec<f64>,
    /// Multiplies every ratio (each capped at 1): the same per-stage profile, re-initialising more
    /// (RESULTS.md measures 3 on small unlabeled sets).
    #[arg(long, default_value_t = 1.0)]
    ratio_scale: f64,
    /// adaptive | uniform | single:N | none | fresh
    #[arg(long, default_value = "adaptive")]
    init: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Zero padding of the random crop (0 disables it).
    #[arg(long, default_value_t = 4)]
    crop_padding: usize,
    #[arg(long)]
    no_flip: bool,
    /// Mix each batch's unlabeled images in pairs (uniform weights), the teacher and the student
    /// seeing the same mixed images. Not in the method spec; RESULTS.md measures it.
    #[arg(long)]
    mixup: bool,
    /// SGD weight decay (method spec: 5e-4).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    resume: bool,
}

pub(crate) fn run(cmd: &DefendCommand) -> Result<()> {
    let DefendCommand::Kd(a) = cmd;
    if a.ratios.len() != 6 || a.ratios.iter().any(|r| !(0.0..=1.0).contains(r)) {
        bail!(
            "--ratios: expected six fractions in [0, 1] (stem, stage 1-4, fc); got {:?}",
            a.ratios
        );
    }
    let temperature = match a.temperature[..] {
        [from, to] => TemperatureRange { from, to },
        _ => bail!(
            "--temperature: expected FROM,TO (e.g. 1,4); got {:?}",
            a.temperature
        ),
    };
    if let Some(reason) = temperature.check() {
        bail!("--temperature: {reason}");
    }
    let ratios: [f64; 6] = a.ratios.clone().try_into().expect("six");
    let ratios = reinit::scale_ratios(ratios, a.ratio_scale).context("--ratio-scale")?;
    let init = InitMode::parse(&a.init, ratios)?;
    let split: SplitFile = read_json(&a.model.join(files::SPLIT))
        .with_context(|| format!("--model {}: not a run directory", a.model.display()))?;
    let unlabeled = match (a.unlabeled_dataset, &a.unlabeled_data) {
        (None, None) => UnlabeledSource::Holdout,
        (Some(d), path) => {
            let kind = match d {
                DatasetArg::Cifar10 => DatasetKind::Cifar10,
                DatasetArg::Gtsrb => DatasetKind::Gtsrb,
                DatasetArg::Folder => DatasetKind::Folder,
                DatasetArg::Synthetic => DatasetKind::Synthetic,
            };
            let mut spec = DataSpec::new(kind, path.clone());
            spec.image_size = split.data.image_size;
            UnlabeledSource::Data { spec }
        }
        (None, Some(_)) => bail!("--unlabeled-data needs --unlabeled-dataset (its kind)"),
    };
    let flip = !a.no_flip && split.data.kind.allows_flip();
    let mut config = KdConfig::paper(a.model.clone(), flip);
    config.unlabeled = unlabeled;
    config.unlabeled_limit = a.unlabeled_limit;
    config.epochs = a.epochs;
    config.batch_size = a.batch_size;
    config.lr = a.lr;
    config.temperature = temperature;
    config.init = init;
    config.seed = a.seed;
    config.augment = Augment {
        crop_padding: a.crop_padding,
        flip,
    };
    config.mixup = a.mixup;
    config.sgd.weight_decay = a.weight_decay;
    if let Some(reason) = config.sgd.check_weight_decay() {
        bail!("--weight-decay: {reason}");
    }
    let selected = a.device.select()?;
    eprintln!("device: {}", describe_device(&selected));
    let mut bars = progress::Bars::new();
    let report = cleanse(&config, &a.out, a.resume, &selected, &mut bars)
        .with_context(|| format!("cleansing into {}", a.out.display()))?;
    bars.finish();
    let f = report.final_metrics.clone().context("run did not finish")?;
    println!(
        "kd: clean_acc {:.4} asr {} after {} epochs; report: {}",
        f.clean_acc,
        f.asr
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        report.epochs.len(),
        a.out.join(files::REPORT).display()
    );
    Ok(())
}
