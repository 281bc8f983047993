//! `cleanse defend <method>`: one arm per member of the defense family, each with the flags every
//! defense shares ([`CommonArgs`]) and its own.

use crate::attack::AsrArgs;
use crate::{DatasetArg, DeviceArgs, PrecisionArgs, describe_device, progress};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cleanse_core::data::DataSpec;
use cleanse_core::data::split::SplitFile;
use cleanse_core::defend::Defense;
use cleanse_core::defend::anp::AnpConfig;
use cleanse_core::defend::cleanse::{KdConfig, UnlabeledSource};
use cleanse_core::defend::fp::FpConfig;
use cleanse_core::defend::ft::FtConfig;
use cleanse_core::defend::ibau::{HyperSettings, IbauConfig};
use cleanse_core::defend::kd::{PAPER_TEMPERATURE, TemperatureRange};
use cleanse_core::defend::mcr::McrConfig;
use cleanse_core::defend::method::Method;
use cleanse_core::defend::nad::{NadConfig, PAPER_BETAS};
use cleanse_core::defend::reinit::{self, ADAPTIVE_RATIOS, InitMode};
use cleanse_core::defend::settings::{CommonSettings, SgdTraining, SharedFlags};
use cleanse_core::defend::suspect::AsrSource;
use cleanse_core::engine::files;
use cleanse_core::io::read_json;
use cleanse_core::optim::schedule::AUTHORS_COSINE_T_MAX;
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

/// The flags of every defense; the defaults they show are read from the methods' own (core).
#[derive(Args, Debug)]
pub(crate) struct CommonArgs {
    /// The suspicious model's run directory (a `train` or `attack` output).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, help = epochs_help())]
    epochs: Option<usize>,
    #[arg(long, help = family_default("The batch size", |c| c.batch_size))]
    batch_size: Option<usize>,
    #[arg(long, help = family_default("The learning rate (its peak under a schedule)", |c| c.lr))]
    lr: Option<f64>,
    #[arg(long, value_name = "EPOCHS", help = cosine_help())]
    cosine_t_max: Option<usize>,
    #[arg(long, help = family_default("The seed of the run", |c| c.seed))]
    seed: Option<u64>,
    /// Evaluate after every Nth epoch (ANP: group of mask updates, I-BAU: round) and after the
    /// last; the defended model does not depend on it, only the report's curve does [default: 1].
    #[arg(long)]
    eval_every: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    #[arg(long, help = crop_help())]
    crop_padding: Option<usize>,
    /// No horizontal flips (never used on data sets where a flip changes the class, e.g. GTSRB).
    #[arg(long)]
    no_flip: bool,
    #[arg(long, help = weight_decay_help())]
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

/// Each method at its defaults: where the flags' defaults come from.
fn fp() -> FpConfig {
    FpConfig::paper(PathBuf::new(), true)
}

fn nad() -> NadConfig {
    NadConfig::paper(PathBuf::new(), true)
}

fn mcr() -> McrConfig {
    McrConfig::paper(PathBuf::new(), true)
}

fn anp() -> AnpConfig {
    AnpConfig::paper(PathBuf::new(), true)
}

fn ibau() -> IbauConfig {
    IbauConfig::paper(PathBuf::new())
}

/// Every defense at its defaults (the help's source).
fn family() -> Vec<Defense> {
    Defense::paper_family(std::path::Path::new(""), true)
}

/// `what` with its default in each defense, the most common first: e.g. `[default: 256; ANP:
/// 128; I-BAU: 100]`.
fn family_default<T: PartialEq + std::fmt::Display>(
    what: &str,
    value: impl Fn(&CommonSettings) -> T,
) -> String {
    let family = family();
    let values: Vec<T> = family.iter().map(|d| value(d.common())).collect();
    let count = |v: &T| values.iter().filter(|w| *w == v).count();
    let most = values
        .iter()
        .max_by_key(|v| count(v))
        .expect("the family has members");
    let others: Vec<String> = family
        .iter()
        .zip(&values)
        .filter(|(_, v)| *v != most)
        .map(|(d, v)| format!("{}: {v}", d.display_name()))
        .collect();
    let mut shown = vec![most.to_string()];
    shown.extend(others);
    format!("{what} [default: {}]", shown.join("; "))
}

fn epochs_help() -> String {
    format!(
        "Training epochs [default: {}] (ANP counts --iterations, I-BAU --rounds instead)",
        SgdTraining::EPOCHS
    )
}

fn cosine_help() -> String {
    format!(
        "The cosine schedule's horizon in epochs (FT, FP, NAD, MCR's endpoint, KD) [default: \
         {AUTHORS_COSINE_T_MAX}, the authors' whatever --epochs is: a shorter run stops part of \
         the way down; give --epochs' value to anneal to zero over the run]"
    )
}

fn crop_help() -> String {
    format!(
        "Zero padding of the random crop (0 disables it) [default: {}; I-BAU: no augmentation]",
        SgdTraining::paper(true).augment.crop_padding
    )
}

fn weight_decay_help() -> String {
    format!(
        "SGD weight decay [default: {}; MCR: the coefficient of its L2 term; ANP's mask and \
         I-BAU's Adam have none]",
        SgdTraining::paper(true).sgd.weight_decay
    )
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

    /// Whether the suspect's data set allows flips (without the split, for a label only: yes).
    fn flip(split: Option<&SplitFile>) -> bool {
        split.is_none_or(|s| s.data.kind.allows_flip())
    }

    /// The flags every defense shares, as core applies them.
    fn shared(&self) -> SharedFlags {
        SharedFlags {
            seed: self.seed,
            batch_size: self.batch_size,
            lr: self.lr,
            eval_every: self.eval_every,
            epochs: self.epochs,
            cosine_t_max: self.cosine_t_max,
            weight_decay: self.weight_decay,
            crop_padding: self.crop_padding,
            no_flip: self.no_flip,
        }
    }

    /// `method` (at its defaults for this suspect) with the shared flags applied.
    fn configure<M: Method>(&self, method: M) -> Result<M> {
        method.with_flags(&self.shared()).map_err(flag_error)
    }
}

/// A configuration error as the command line names it (`--flag: reason`).
fn flag_error(e: cleanse_core::Error) -> anyhow::Error {
    match e {
        cleanse_core::Error::Config { name, reason } => anyhow::anyhow!("--{name}: {reason}"),
        e => e.into(),
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
    #[arg(long, default_value_t = fp().acc_drop)]
    acc_drop: f64,
    /// Channels pruned per step.
    #[arg(long, default_value_t = fp().prune_step)]
    prune_step: usize,
}

#[derive(Args, Debug)]
pub(crate) struct NadArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Epochs of the teacher's fine-tuning (the other settings are the student's).
    #[arg(long, default_value_t = nad().teacher_epochs)]
    teacher_epochs: usize,
    /// Weights of the attention terms at the outputs of stages 2, 3, 4.
    #[arg(long, value_delimiter = ',', default_values_t = PAPER_BETAS)]
    betas: Vec<f64>,
    /// The attention map's power: sum over channels of |f|^p.
    #[arg(long, default_value_t = nad().p)]
    p: f64,
}

#[derive(Args, Debug)]
pub(crate) struct McrArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Epochs of the far endpoint's fine-tuning (the other settings are the curve's).
    #[arg(long, default_value_t = mcr().endpoint_epochs)]
    endpoint_epochs: usize,
    /// The point of the curve that is the result, in [0, 1] (0: the suspect, 1: the endpoint).
    #[arg(long, default_value_t = mcr().t)]
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
    #[arg(long, default_value_t = anp().iterations)]
    iterations: usize,
    /// Range of the weight noise and size of its ascent step.
    #[arg(long, default_value_t = anp().eps)]
    eps: f64,
    /// Weight of the clean loss (the perturbed loss gets 1 - alpha).
    #[arg(long, default_value_t = anp().alpha)]
    alpha: f64,
    /// Prune the channels whose mask is at most this (fixed in advance; the report shows the
    /// other thresholds' accuracy and ASR for the picture).
    #[arg(long, default_value_t = anp().threshold)]
    threshold: f64,
}

#[derive(Args, Debug)]
pub(crate) struct IbauArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Rounds (each: a universal perturbation, then one pass of outer steps).
    #[arg(long, default_value_t = ibau().rounds)]
    rounds: usize,
    /// Fixed-point iterations of the implicit hypergradient.
    #[arg(long, default_value_t = ibau().hyper.k)]
    k: usize,
    /// An L2 bound on the universal perturbation, in the network's normalised input space
    /// [default: none, as in the method spec and the reference code]
    #[arg(long)]
    max_norm: Option<f64>,
    /// The share of each outer batch the perturbation is added to (the reference code: 0.01).
    #[arg(long, default_value_t = ibau().outer_fraction)]
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

/// A method's arm of `defend`: the flags every defense shares and the configuration its own
/// flags make.
trait MethodArgs {
    fn common(&self) -> &CommonArgs;
    /// The defense the flags configure for `suspect` (`flip`: whether its data set allows flips);
    /// `split`, the suspect's, decides what else depends on its data set (an external unlabeled
    /// set's image size).
    fn defense(&self, suspect: PathBuf, flip: bool, split: Option<&SplitFile>) -> Result<Defense>;
}

impl DefendCommand {
    /// The method's arguments: the one match on the command.
    fn args(&self) -> &dyn MethodArgs {
        match self {
            DefendCommand::Kd(a) => a,
            DefendCommand::Ft(a) => a,
            DefendCommand::Fp(a) => a,
            DefendCommand::Nad(a) => a,
            DefendCommand::Mcr(a) => a,
            DefendCommand::Anp(a) => a,
            DefendCommand::Ibau(a) => a,
        }
    }

    fn common(&self) -> &CommonArgs {
        self.args().common()
    }

    /// The defense the flags configure; `split`, the suspect's, decides what depends on its
    /// data set (flips, an external unlabeled set's image size). Without it (a planned run's
    /// label, its suspect not trained yet) those follow the flags alone.
    fn defense(&self, split: Option<&SplitFile>) -> Result<Defense> {
        let c = self.common();
        self.args()
            .defense(c.model.clone(), CommonArgs::flip(split), split)
    }
}

impl MethodArgs for KdArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, flip: bool, split: Option<&SplitFile>) -> Result<Defense> {
        let config = kd_config(self, suspect, flip, split)?;
        Ok(Defense::Kd(self.common.configure(config)?))
    }
}

impl MethodArgs for FtArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, flip: bool, _: Option<&SplitFile>) -> Result<Defense> {
        Ok(Defense::Ft(
            self.common.configure(FtConfig::paper(suspect, flip))?,
        ))
    }
}

impl MethodArgs for FpArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, flip: bool, _: Option<&SplitFile>) -> Result<Defense> {
        Ok(Defense::Fp(self.common.configure(FpConfig {
            acc_drop: self.acc_drop,
            prune_step: self.prune_step,
            ..FpConfig::paper(suspect, flip)
        })?))
    }
}

impl MethodArgs for NadArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, flip: bool, _: Option<&SplitFile>) -> Result<Defense> {
        let Ok(betas) = <[f64; 3]>::try_from(&self.betas[..]) else {
            bail!(
                "--betas: expected three weights (stages 2, 3, 4); got {:?}",
                self.betas
            );
        };
        Ok(Defense::Nad(self.common.configure(NadConfig {
            teacher_epochs: self.teacher_epochs,
            betas,
            p: self.p,
            ..NadConfig::paper(suspect, flip)
        })?))
    }
}

impl MethodArgs for McrArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, flip: bool, _: Option<&SplitFile>) -> Result<Defense> {
        Ok(Defense::Mcr(self.common.configure(McrConfig {
            endpoint_epochs: self.endpoint_epochs,
            t: self.t,
            bn_update: !self.no_bn_update,
            ..McrConfig::paper(suspect, flip)
        })?))
    }
}

impl MethodArgs for AnpArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, flip: bool, _: Option<&SplitFile>) -> Result<Defense> {
        Ok(Defense::Anp(self.common.configure(AnpConfig {
            iterations: self.iterations,
            eps: self.eps,
            alpha: self.alpha,
            threshold: self.threshold,
            ..AnpConfig::paper(suspect, flip)
        })?))
    }
}

impl MethodArgs for IbauArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn defense(&self, suspect: PathBuf, _: bool, _: Option<&SplitFile>) -> Result<Defense> {
        let paper = IbauConfig::paper(suspect);
        Ok(Defense::Ibau(self.common.configure(IbauConfig {
            rounds: self.rounds,
            hyper: HyperSettings {
                k: self.k,
                ..paper.hyper
            },
            max_norm: self.max_norm,
            outer_fraction: self.outer_fraction,
            ..paper
        })?))
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
    defense.validate().map_err(flag_error)?;
    let asr = common.asr_source(&split)?;
    let selected = common.precision.select(&common.device)?;
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

/// The cleanser's own flags on its defaults for `suspect`.
fn kd_config(
    a: &KdArgs,
    suspect: PathBuf,
    flip: bool,
    split: Option<&SplitFile>,
) -> Result<KdConfig> {
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
    Ok(KdConfig {
        unlabeled,
        unlabeled_limit: a.unlabeled_limit,
        temperature,
        init,
        mixup: a.mixup,
        ..KdConfig::paper(suspect, flip)
    })
}
