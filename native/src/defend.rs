//! `cleanse defend <method>`: one arm per member of the defense family, each with the flags every
//! defense shares ([`CommonArgs`]) and its own.

use crate::attack::AsrArgs;
use crate::{DatasetArg, DeviceArgs, describe_device, progress};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cleanse_core::data::DataSpec;
use cleanse_core::data::augment::Augment;
use cleanse_core::defend::Defense;
use cleanse_core::defend::anp::AnpConfig;
use cleanse_core::defend::cleanse::{KdConfig, UnlabeledSource};
use cleanse_core::defend::fp::FpConfig;
use cleanse_core::defend::ft::FtConfig;
use cleanse_core::defend::ibau::IbauConfig;
use cleanse_core::defend::kd::{PAPER_TEMPERATURE, TemperatureRange};
use cleanse_core::defend::mcr::McrConfig;
use cleanse_core::defend::nad::{NadConfig, PAPER_BETAS};
use cleanse_core::defend::reinit::{self, ADAPTIVE_RATIOS, InitMode};
use cleanse_core::defend::suspect::AsrSource;
use cleanse_core::io::read_json;
use cleanse_core::train::run::{SplitFile, files};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub(crate) enum DefendCommand {
    /// Distillation on unlabeled data from a layer-wise re-initialised student (Pang et al. 2023).
    Kd(KdArgs),
    /// Fine-tuning with cross-entropy on the defender's labelled held-out split.
    Ft(FtArgs),
    /// Fine-Pruning: prune the last stage's least active channels while the defender's own
    /// accuracy holds, then fine-tune with them kept at zero.
    Fp(FpArgs),
    /// Neural Attention Distillation: the suspect trained with cross-entropy and the attention
    /// maps of a briefly fine-tuned copy of itself.
    Nad(NadArgs),
    /// Mode Connectivity Repair: a curve between the suspect and its fine-tuned copy, trained
    /// on the defender's data; the model at --t is the result.
    Mcr(McrArgs),
    /// Adversarial Neuron Pruning: masks on every batch-norm channel trained against weight
    /// noise; channels whose mask ends at most --threshold are pruned.
    Anp(AnpArgs),
    /// Implicit Backdoor Adversarial Unlearning: per round a universal perturbation, then Adam
    /// steps along the implicit hypergradient of the loss on perturbed images (no augmentation).
    Ibau(IbauArgs),
}

/// The flags of every defense (defaults: the method spec's).
#[derive(Args, Debug)]
pub(crate) struct CommonArgs {
    /// The suspicious model's run directory (a `train` or `attack` output).
    #[arg(long)]
    model: PathBuf,
    /// Training epochs [default: 100] (ANP counts --iterations, I-BAU --rounds instead).
    #[arg(long)]
    epochs: Option<usize>,
    /// [default: 256; ANP: 128; I-BAU: 100]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate [default: 0.01; ANP's mask: 0.2; I-BAU's Adam: 1e-4]
    #[arg(long)]
    lr: Option<f64>,
    /// The cosine schedule's horizon in epochs (FT, FP, NAD, MCR's endpoint, KD) [default: 100,
    /// the authors' whatever --epochs is: a shorter run stops part of the way down; give
    /// --epochs' value to anneal to zero over the run].
    #[arg(long, value_name = "EPOCHS")]
    cosine_t_max: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate after every Nth epoch (ANP: group of mask updates, I-BAU: round) and after the
    /// last; the defended model does not depend on it, only the report's curve does.
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Zero padding of the random crop (0 disables it) [default: 4; I-BAU: no augmentation].
    #[arg(long)]
    crop_padding: Option<usize>,
    /// No horizontal flips (never used on data sets where a flip changes the class, e.g. GTSRB).
    #[arg(long)]
    no_flip: bool,
    /// SGD weight decay [default: 5e-4; MCR: the coefficient of its L2 term; ANP's mask has
    /// none].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// What the ASR of the suspect, every epoch and the result is measured against (default: the
    /// suspect's saved attack).
    #[command(flatten)]
    asr: AsrArgs,
    /// The defended model's run directory (missing or empty, unless --resume).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint (same flags as the original run).
    #[arg(long)]
    resume: bool,
}

impl CommonArgs {
    /// The suspect's split file (its data set), naming `--model` when it is not a run.
    fn suspect_split(&self) -> Result<SplitFile> {
        read_json(&self.model.join(files::SPLIT))
            .with_context(|| format!("--model {}: not a run directory", self.model.display()))
    }

    /// What the ASR is measured against, on the data of the suspect's `split`.
    fn asr_source(&self, split: &SplitFile) -> Result<AsrSource> {
        self.asr.source(split.data.kind, split.data.image_size)
    }

    /// Crop and flip as the flags say (no flip where the suspect's data set forbids it; without
    /// the split, for a label only, as the flags say).
    fn augment(&self, split: Option<&SplitFile>) -> Augment {
        Augment {
            crop_padding: self.crop_padding.unwrap_or(4),
            flip: !self.no_flip && split.is_none_or(|s| s.data.kind.allows_flip()),
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct FtArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub(crate) struct FpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Stop pruning before the step at which the accuracy on the defender's held-out images
    /// has dropped by this fraction of the unpruned accuracy.
    #[arg(long, default_value_t = 0.1)]
    acc_drop: f64,
    /// Channels pruned per step.
    #[arg(long, default_value_t = 1)]
    prune_step: usize,
}

#[derive(Args, Debug)]
pub(crate) struct NadArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Epochs of the teacher's fine-tuning (the other settings are the student's).
    #[arg(long, default_value_t = 10)]
    teacher_epochs: usize,
    /// Weights of the attention terms at the outputs of stages 2, 3, 4.
    #[arg(long, value_delimiter = ',', default_values_t = PAPER_BETAS)]
    betas: Vec<f64>,
    /// The attention map's power: sum over channels of |f|^p.
    #[arg(long, default_value_t = 2.0)]
    p: f64,
}

#[derive(Args, Debug)]
pub(crate) struct McrArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Epochs of the far endpoint's fine-tuning (the other settings are the curve's).
    #[arg(long, default_value_t = 10)]
    endpoint_epochs: usize,
    /// The point of the curve that is the result, in [0, 1] (0: the suspect, 1: the endpoint).
    #[arg(long, default_value_t = 0.3)]
    t: f64,
    /// Keep the curve's trained batch-norm statistics instead of re-estimating them on the
    /// defender's data at each evaluated point (as the authors' BackdoorBench fork does).
    #[arg(long)]
    no_bn_update: bool,
}

#[derive(Args, Debug)]
pub(crate) struct AnpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Mask updates (batches), in rounds of up to 100 with a checkpoint after each.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Range of the weight noise and size of its ascent step.
    #[arg(long, default_value_t = 0.4)]
    eps: f64,
    /// Weight of the clean loss (the perturbed loss gets 1 - alpha).
    #[arg(long, default_value_t = 0.2)]
    alpha: f64,
    /// Prune the channels whose mask is at most this (fixed in advance; the report shows the
    /// other thresholds' accuracy and ASR for the picture).
    #[arg(long, default_value_t = 0.2)]
    threshold: f64,
}

#[derive(Args, Debug)]
pub(crate) struct IbauArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Rounds (each: a universal perturbation, then one pass of outer steps).
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Fixed-point iterations of the implicit hypergradient.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// An L2 bound on the universal perturbation, in the network's normalised input space
    /// [default: none, as in the method spec and the reference code]
    #[arg(long)]
    max_norm: Option<f64>,
    /// The share of each outer batch the perturbation is added to (the reference code: 0.01).
    #[arg(long, default_value_t = 1.0)]
    outer_fraction: f64,
}

#[derive(Args, Debug)]
pub(crate) struct KdArgs {
    #[command(flatten)]
    common: CommonArgs,
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
    /// Mix each batch's unlabeled images in pairs (uniform weights), the teacher and the student
    /// seeing the same mixed images. Not in the method spec; RESULTS.md measures it.
    #[arg(long)]
    mixup: bool,
}

impl DefendCommand {
    fn common(&self) -> &CommonArgs {
        match self {
            DefendCommand::Kd(a) => &a.common,
            DefendCommand::Ft(a) => &a.common,
            DefendCommand::Fp(a) => &a.common,
            DefendCommand::Nad(a) => &a.common,
            DefendCommand::Mcr(a) => &a.common,
            DefendCommand::Anp(a) => &a.common,
            DefendCommand::Ibau(a) => &a.common,
        }
    }

    /// The defense the flags configure; `split`, the suspect's, decides what depends on its
    /// data set (flips, an external unlabeled set's image size). Without it (a planned run's
    /// label, its suspect not trained yet) those follow the flags alone.
    fn defense(&self, split: Option<&SplitFile>) -> Result<Defense> {
        Ok(match self {
            DefendCommand::Kd(a) => Defense::Kd(kd_config(a, split)?),
            DefendCommand::Ft(a) => Defense::Ft(ft_config(&a.common, split)?),
            DefendCommand::Fp(a) => Defense::Fp(FpConfig {
                ft: ft_config(&a.common, split)?,
                acc_drop: a.acc_drop,
                prune_step: a.prune_step,
            }),
            DefendCommand::Nad(a) => Defense::Nad(nad_config(a, split)?),
            DefendCommand::Anp(a) => Defense::Anp(anp_config(a, split)?),
            DefendCommand::Ibau(a) => Defense::Ibau(ibau_config(a)?),
            DefendCommand::Mcr(a) => Defense::Mcr(McrConfig {
                ft: ft_config(&a.common, split)?,
                endpoint_epochs: a.endpoint_epochs,
                t: a.t,
                bn_update: !a.no_bn_update,
            }),
        })
    }
}

/// The column label of a planned `defend` command line (as its finished report would have it),
/// read from its flags alone.
pub(crate) fn planned_label(cmd: &DefendCommand) -> Option<String> {
    planned_defense(cmd).ok().map(|d| d.label())
}

/// The defense a command line would run, from its flags alone (its suspect may not be trained
/// yet).
pub(crate) fn planned_defense(cmd: &DefendCommand) -> Result<Defense> {
    cmd.defense(None)
}

pub(crate) fn run(cmd: &DefendCommand) -> Result<()> {
    let common = cmd.common();
    let split = common.suspect_split()?;
    let defense = cmd.defense(Some(&split))?;
    defense.validate().map_err(|e| match e {
        cleanse_core::Error::Config { name, reason } => anyhow::anyhow!("--{name}: {reason}"),
        e => e.into(),
    })?;
    let asr = common.asr_source(&split)?;
    let selected = common.device.select()?;
    errln!("device: {}", describe_device(&selected));
    let mut bars = progress::Bars::new();
    let report = defense
        .run_measured(&asr, &common.out, common.resume, &selected, &mut bars)
        .with_context(|| format!("{} into {}", defense.method(), common.out.display()))?;
    bars.finish();
    let f = report.final_metrics.clone().context("run did not finish")?;
    outln!(
        "{}: clean_acc {:.4} asr {} after {} epochs; report: {}",
        defense.method(),
        f.clean_acc,
        f.asr
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        report.epochs.len(),
        common.out.join(files::REPORT).display()
    );
    Ok(())
}

fn anp_config(a: &AnpArgs, split: Option<&SplitFile>) -> Result<AnpConfig> {
    let c = &a.common;
    if c.epochs.is_some() {
        bail!("--epochs: ANP counts mask updates; use --iterations");
    }
    if c.cosine_t_max.is_some() {
        bail!("--cosine-t-max: ANP's mask optimiser has no cosine schedule");
    }
    if c.weight_decay.is_some() {
        bail!("--weight-decay: ANP's mask optimiser has no weight decay");
    }
    let augment = c.augment(split);
    let paper = AnpConfig::paper(c.model.clone(), augment.flip);
    Ok(AnpConfig {
        iterations: a.iterations,
        batch_size: c.batch_size.unwrap_or(paper.batch_size),
        lr: c.lr.unwrap_or(paper.lr),
        eps: a.eps,
        alpha: a.alpha,
        threshold: a.threshold,
        seed: c.seed,
        augment,
        eval_every: c.eval_every,
        ..paper
    })
}

fn ibau_config(a: &IbauArgs) -> Result<IbauConfig> {
    let c = &a.common;
    if c.epochs.is_some() {
        bail!("--epochs: I-BAU counts --rounds");
    }
    if c.cosine_t_max.is_some() {
        bail!("--cosine-t-max: I-BAU's Adam has no cosine schedule");
    }
    if c.weight_decay.is_some() {
        bail!("--weight-decay: I-BAU's Adam has no weight decay");
    }
    if c.crop_padding.is_some() || c.no_flip {
        bail!(
            "--crop-padding/--no-flip: I-BAU uses the defender's images without augmentation \
             (its perturbation is universal over them)"
        );
    }
    let paper = IbauConfig::paper(c.model.clone());
    Ok(IbauConfig {
        rounds: a.rounds,
        batch_size: c.batch_size.unwrap_or(paper.batch_size),
        lr: c.lr.unwrap_or(paper.lr),
        hyper: cleanse_core::defend::ibau::HyperSettings {
            k: a.k,
            ..paper.hyper
        },
        max_norm: a.max_norm,
        outer_fraction: a.outer_fraction,
        seed: c.seed,
        eval_every: c.eval_every,
        ..paper
    })
}

fn nad_config(a: &NadArgs, split: Option<&SplitFile>) -> Result<NadConfig> {
    let Ok(betas) = <[f64; 3]>::try_from(&a.betas[..]) else {
        bail!(
            "--betas: expected three weights (stages 2, 3, 4); got {:?}",
            a.betas
        );
    };
    Ok(NadConfig {
        ft: ft_config(&a.common, split)?,
        teacher_epochs: a.teacher_epochs,
        betas,
        p: a.p,
    })
}

/// The fine-tuning settings of the common flags (FT itself, and the training of FP and NAD).
fn ft_config(c: &CommonArgs, split: Option<&SplitFile>) -> Result<FtConfig> {
    let augment = c.augment(split);
    let mut config = FtConfig::paper(c.model.clone(), augment.flip);
    config.epochs = c.epochs.unwrap_or(config.epochs);
    config.batch_size = c.batch_size.unwrap_or(config.batch_size);
    config.lr = c.lr.unwrap_or(config.lr);
    config.cosine_t_max = c.cosine_t_max.or(config.cosine_t_max);
    config.seed = c.seed;
    config.augment = augment;
    config.sgd.weight_decay = c.weight_decay.unwrap_or(config.sgd.weight_decay);
    config.eval_every = c.eval_every;
    Ok(config)
}

fn kd_config(a: &KdArgs, split: Option<&SplitFile>) -> Result<KdConfig> {
    let c = &a.common;
    // Ranges are checked by `KdConfig::validate`; here only the number of values.
    let Ok(ratios) = <[f64; 6]>::try_from(&a.ratios[..]) else {
        bail!(
            "--ratios: expected six fractions in [0, 1] (stem, stage 1-4, fc); got {:?}",
            a.ratios
        );
    };
    let temperature = match a.temperature[..] {
        [from, to] => TemperatureRange { from, to },
        _ => bail!(
            "--temperature: expected FROM,TO (e.g. 1,4); got {:?}",
            a.temperature
        ),
    };
    let ratios = reinit::scale_ratios(ratios, a.ratio_scale)?;
    let init = InitMode::parse(&a.init, ratios)?;
    let unlabeled = match (a.unlabeled_dataset, &a.unlabeled_data) {
        (None, None) => UnlabeledSource::Holdout,
        (Some(d), path) => {
            let mut spec = DataSpec::new(d.into(), path.clone());
            if let Some(split) = split {
                spec.image_size = split.data.image_size;
            }
            UnlabeledSource::Data { spec }
        }
        (None, Some(_)) => bail!("--unlabeled-data needs --unlabeled-dataset (its kind)"),
    };
    let augment = c.augment(split);
    let mut config = KdConfig::paper(c.model.clone(), augment.flip);
    config.unlabeled = unlabeled;
    config.unlabeled_limit = a.unlabeled_limit;
    config.epochs = c.epochs.unwrap_or(config.epochs);
    config.batch_size = c.batch_size.unwrap_or(config.batch_size);
    config.lr = c.lr.unwrap_or(config.lr);
    config.cosine_t_max = c.cosine_t_max.or(config.cosine_t_max);
    config.temperature = temperature;
    config.init = init;
    config.seed = c.seed;
    config.augment = augment;
    config.mixup = a.mixup;
    config.sgd.weight_decay = c.weight_decay.unwrap_or(config.sgd.weight_decay);
    config.eval_every = c.eval_every;
    Ok(config)
}
