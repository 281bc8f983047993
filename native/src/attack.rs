//! `cleanse attack` and `cleanse eval`.

use crate::{DeviceArgs, TrainArgs, describe_device, progress};
use anyhow::{Context, Result};
use burn::prelude::Device;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};
use cleanse_core::attack::poison::OwnCleanModel;
use cleanse_core::attack::training::{AttackTraining, CleanModel};
use cleanse_core::attack::triggered::TriggeredData;
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Stamping};
use cleanse_core::data::DatasetKind;
use cleanse_core::defend::suspect::{AsrSource, Suspect};
use cleanse_core::engine::eval::{PerClass, predictions};
use cleanse_core::engine::files;
use cleanse_core::engine::run_files::load_run_model;
use cleanse_core::optim::Schedule;
use cleanse_core::output::{check_output, write_output_json};
use cleanse_core::train::TrainConfig;
use cleanse_core::train::run::train_with;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum AttackArg {
    Badnets,
    Blended,
    Sig,
    Lc,
    Wanet,
    Iab,
}

impl From<AttackArg> for AttackKind {
    fn from(a: AttackArg) -> Self {
        match a {
            AttackArg::Badnets => AttackKind::Badnets,
            AttackArg::Blended => AttackKind::Blended,
            AttackArg::Sig => AttackKind::Sig,
            AttackArg::Lc => AttackKind::Lc,
            AttackArg::Wanet => AttackKind::Wanet,
            AttackArg::Iab => AttackKind::Iab,
        }
    }
}

/// Named settings; flags given on the command line override them.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Preset {
    /// The supplement's settings (the defaults of every flag; WaNet and IAB train their
    /// classifier with lr 0.01, as their released code does).
    Faithful,
    /// The authors' code where it differs: lr 0.01; LC eps 8/255 poisoning 50% on CIFAR-10.
    AuthorsCode,
    /// Backdoors learnable on a few thousand images (see docs/cli.md): width 16, batch 32,
    /// lr 0.05, 24 epochs, no crop or flip augmentation, every target-class image poisoned by
    /// the clean-label attacks, IAB networks of width 16 with 10 mask pre-training epochs.
    Subset,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum StampingArg {
    /// On the stored images, before crop/flip (as the reference implementations do).
    Before,
    /// On each augmented batch.
    After,
}

#[derive(Args, Debug)]
pub(crate) struct AttackArgs {
    /// The attack.
    #[arg(value_enum)]
    kind: AttackArg,
    #[command(flatten)]
    train: TrainArgs,
    /// Named settings (flags given explicitly win).
    #[arg(long, value_enum, default_value_t = Preset::Faithful)]
    preset: Preset,
    /// Target class of an all-to-one attack (default: 0; on GTSRB, its most frequent class).
    #[arg(long)]
    target: Option<usize>,
    /// Dirty-label: fraction of the training set (0.1); clean-label: fraction of the target
    /// class (0.8); WaNet/IAB: backdoor fraction of each batch (0.1).
    #[arg(long)]
    poison_rate: Option<f64>,
    /// Label y becomes (y + 1) mod K instead of the target.
    #[arg(long)]
    all_to_all: bool,
    /// When data-poisoning triggers are stamped (default: before augmentation; subset: after).
    #[arg(long, value_enum)]
    stamping: Option<StampingArg>,
    /// LC: the clean model to make adversarial images on (default: train one into OUT/clean-model).
    #[arg(long)]
    clean_model: Option<PathBuf>,
    /// Blended: blend ratio.
    #[arg(long)]
    blend_alpha: Option<f32>,
    /// SIG: amplitude in pixel units of 255 (20 on CIFAR-10, 60 on GTSRB).
    #[arg(long)]
    sig_delta: Option<f32>,
    /// SIG: periods of the sinusoid across the image's width (6; the authors' ImageNet-10: 10).
    #[arg(long)]
    sig_frequency: Option<f32>,
    /// LC: PGD radius in pixel units of 255 (16; authors' code: 8).
    #[arg(long)]
    lc_eps: Option<f32>,
    /// LC: PGD steps.
    #[arg(long)]
    lc_steps: Option<usize>,
    /// WaNet: warp strength.
    #[arg(long)]
    wanet_s: Option<f32>,
    /// WaNet: control grid size.
    #[arg(long)]
    wanet_k: Option<usize>,
    /// WaNet: noise-mode samples (random warp, label kept) per backdoor sample (2; 0 = off).
    #[arg(long)]
    wanet_cross_ratio: Option<f64>,
    /// IAB: base width of the generator and mask networks (32; subset preset: 16).
    #[arg(long)]
    iab_width: Option<usize>,
    /// IAB: mask pre-training epochs (25; subset preset: 10).
    #[arg(long)]
    iab_mask_epochs: Option<usize>,
}

/// The subset preset's training settings: more, smaller steps than the supplement's batch 128
/// (3,600 images give only 28 steps of 128 per epoch).
const SUBSET_BATCH: usize = 32;
const SUBSET_LR: f64 = 0.05;
const SUBSET_EPOCHS: usize = 24;
pub(crate) const SUBSET_HOLDOUT: f64 = 0.25;

/// Whether flag `id` was given on the command line.
fn given(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

impl AttackArgs {
    /// The training and attack configurations, with the preset applied under explicit flags.
    pub(crate) fn configs(&self, m: &ArgMatches) -> (TrainConfig, AttackConfig) {
        let mut train = self.train.config();
        let kind: AttackKind = self.kind.into();
        let dataset = train.data.kind;
        let mut attack = match self.preset {
            Preset::AuthorsCode => AttackConfig::authors_code(kind, dataset),
            _ => AttackConfig::supplement(kind, dataset),
        };
        match self.preset {
            Preset::Faithful => {
                // The supplement trains WaNet and IAB "following released open-source codes",
                // whose classifier optimiser is SGD with lr 0.01.
                if kind.is_training_control() && !given(m, "lr") {
                    train.lr = 0.01;
                }
            }
            Preset::AuthorsCode => {
                if !given(m, "lr") {
                    train.lr = 0.01;
                }
            }
            Preset::Subset => {
                if !given(m, "width") {
                    train.width = 16;
                }
                // A quarter held out: 1,000 unlabeled CIFAR-10 subset images for the defender,
                // 3,000 for the attacker.
                if !given(m, "holdout") && !train.data.defender_from_test() {
                    train.holdout = SUBSET_HOLDOUT;
                }
                if !given(m, "batch_size") {
                    train.batch_size = SUBSET_BATCH;
                }
                if !given(m, "lr") {
                    train.lr = SUBSET_LR;
                }
                if !given(m, "epochs") {
                    train.epochs = SUBSET_EPOCHS;
                    if !given(m, "milestones")
                        && let Schedule::Multistep { milestones, .. } = &mut train.schedule
                    {
                        *milestones = Schedule::default_milestones(SUBSET_EPOCHS);
                    }
                }
                // Random crop (and flip) hide the spec's 3x3 BadNets pattern from a model trained
                // on 3,600 images; without them it is learned within a few epochs (RESULTS.md).
                if !given(m, "crop_padding") {
                    train.augment.crop_padding = 0;
                }
                train.augment.flip = false;
                attack.stamping = Stamping::AfterAugment;
                if kind.is_clean_label() {
                    attack.poison_rate = 1.0;
                }
                attack.iab_width = 16;
                attack.iab_mask_epochs = 10;
            }
        }
        attack.target = self.target.unwrap_or(0);
        attack.all_to_all = self.all_to_all;
        attack.seed = train.seed;
        if let Some(r) = self.poison_rate {
            attack.poison_rate = r;
        }
        if let Some(s) = self.stamping {
            attack.stamping = match s {
                StampingArg::Before => Stamping::BeforeAugment,
                StampingArg::After => Stamping::AfterAugment,
            };
        }
        if let Some(a) = self.blend_alpha {
            attack.blend_alpha = a;
        }
        if let Some(d) = self.sig_delta {
            attack.sig_delta = d / 255.0;
        }
        if let Some(f) = self.sig_frequency {
            attack.sig_frequency = f;
        }
        if let Some(e) = self.lc_eps {
            attack.lc_eps = e / 255.0;
        }
        if let Some(s) = self.lc_steps {
            attack.lc_steps = s;
        }
        if let Some(s) = self.wanet_s {
            attack.wanet_s = s;
        }
        if let Some(k) = self.wanet_k {
            attack.wanet_k = k;
        }
        if let Some(r) = self.wanet_cross_ratio {
            attack.wanet_cross_ratio = r;
        }
        if let Some(w) = self.iab_width {
            attack.iab_width = w;
        }
        if let Some(e) = self.iab_mask_epochs {
            attack.iab_mask_epochs = e;
        }
        (train, attack)
    }
}

pub(crate) fn run_attack(args: &AttackArgs, matches: &ArgMatches) -> Result<()> {
    let sub = matches
        .subcommand_matches("attack")
        .context("attack arguments")?;
    let (train, attack_config) = args.configs(sub);
    // Every setting is checked before any data is read or folder made (the target class once
    // the data's classes are known).
    train.validate()?;
    attack_config.validate(cleanse_core::model::MAX_CLASSES)?;
    let out = &args.train.out;
    if args.target.is_some() || train.data.kind != DatasetKind::Gtsrb || attack_config.all_to_all {
        // The settings are known without the data (GTSRB's default target is its most frequent
        // class): a finished run of them is done, or of others refused, before anything loads.
        let attack_json = serde_json::to_value(&attack_config).context("attack settings")?;
        cleanse_core::train::run::check_finished(
            out,
            &train,
            Some(attack_json),
            cleanse_core::attack::canonical_run,
        )?;
    }
    let selected = args.train.precision.select(&args.train.device)?;
    errln!("device: {}", describe_device(&selected));

    let clean_model = match (&args.clean_model, attack_config.kind) {
        (Some(dir), AttackKind::Lc) => Some(
            load_run_model(dir, &selected.device)
                .with_context(|| format!("loading --clean-model {}", dir.display()))?
                .model,
        ),
        _ => None,
    };

    let data = train.data.load()?;
    // A class the data does not have is an error before any remark about the class.
    attack_config.validate(data.train.num_classes)?;
    let mut attack_config = attack_config;
    if train.data.kind == DatasetKind::Gtsrb && !attack_config.all_to_all {
        // The supplement attacks GTSRB with targets among its 10 most frequent classes.
        let counts = data.train.class_counts();
        let order = data.train.classes_by_frequency();
        match args.target {
            None => {
                attack_config.target = order[0];
                errln!(
                    "GTSRB: target class {} (the most frequent, {} training images)",
                    order[0],
                    counts[order[0]]
                );
            }
            Some(t) if !order[..10.min(order.len())].contains(&t) => errln!(
                "warning: GTSRB target {t} is not among the 10 most frequent classes {:?}",
                &order[..10.min(order.len())]
            ),
            Some(_) => {}
        }
    }
    let attack = Attack::new(attack_config, &data.train)?;
    drop(data);
    let clean_model = match clean_model {
        Some(m) => CleanModel::Given(Box::new(m)),
        None if attack.config.kind == AttackKind::Lc => {
            // LC without --clean-model: the run trains its clean model first, into
            // OUT/clean-model, and a resumed run continues or reuses it.
            let dir = out.join(files::LC_CLEAN_MODEL);
            if OwnCleanModel::is_done(out) {
                errln!("LC: using the clean model in {}", dir.display());
            } else {
                errln!("LC: training a clean model into {} first", dir.display());
            }
            CleanModel::Own(Box::new(OwnCleanModel {
                config: train.clone(),
                selected: selected.clone(),
                observer: Box::new(progress::Bars::new()),
            }))
        }
        None => CleanModel::None,
    };
    let mut training = AttackTraining::new(
        attack,
        clean_model,
        train.batch_size,
        train.augment,
        train.seed,
    )?;
    if let AttackTraining::Iab(h) = &mut training {
        h.on_mask_epoch = Some(Box::new(|e, total, loss| {
            errln!(
                "IAB mask pre-training epoch {:>3}/{total} loss {loss:.4}",
                e + 1
            )
        }));
    }
    let mut bars = progress::Bars::new();
    let report = train_with(
        &train,
        training.hooks(),
        out,
        args.train.resume,
        &selected,
        &mut bars,
    )
    .with_context(|| format!("attack run into {}", out.display()))?;
    bars.finish();
    let f = report.final_metrics.clone().context("run did not finish")?;
    outln!(
        "{}: clean_acc {:.4} asr {:.4} after {} epochs; report: {}",
        args.kind_name(),
        f.clean_acc,
        f.asr.unwrap_or(f64::NAN),
        report.epochs.len(),
        out.join(files::REPORT).display()
    );
    Ok(())
}

impl AttackArgs {
    fn kind_name(&self) -> &'static str {
        AttackKind::from(self.kind).name()
    }
}

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// A run directory with model.json and model.bpk.
    #[arg(long)]
    model: PathBuf,
    /// A run directory with attack.json (default: --model when it holds one).
    #[arg(long, conflicts_with_all = ["attack_spec", "triggered_data"])]
    attack: Option<PathBuf>,
    #[command(flatten)]
    asr: AsrArgs,
    /// Also write the result as JSON here (a new file; never one of a run directory's own files).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

/// What the ASR is measured against instead of a saved attack: the flags of `eval`, `import`
/// and every defense.
#[derive(Args, Debug)]
pub(crate) struct AsrArgs {
    /// Measure the ASR against a trigger drawn from settings, `KIND[:key=value,...]` (e.g.
    /// `badnets:target=0`, `blended:alpha=0.2,seed=0`); keys: target, all-to-all, seed, alpha,
    /// sig-delta, sig-frequency, wanet-k, wanet-s; the rest are the supplement's settings. A run
    /// this command writes keeps it.
    #[arg(long)]
    pub attack_spec: Option<String>,
    /// Or on a folder of already-triggered test images, each in the folder of the class the
    /// attack wants (`DIR/<class index>/*.png`, as BackdoorBench's poisoned test set). A run this
    /// command writes keeps it.
    #[arg(long, conflicts_with = "attack_spec")]
    pub triggered_data: Option<PathBuf>,
}

impl AsrArgs {
    /// The source these flags name, for a model of `dataset` read at `image_size`.
    pub(crate) fn source(&self, dataset: DatasetKind, image_size: usize) -> Result<AsrSource> {
        Ok(match (&self.attack_spec, &self.triggered_data) {
            (Some(spec), _) => AsrSource::Spec(
                cleanse_core::attack::spec::parse(spec, dataset).context("--attack-spec")?,
            ),
            (None, Some(dir)) => AsrSource::Triggered(
                TriggeredData::new(dir, image_size).context("--triggered-data")?,
            ),
            (None, None) => AsrSource::Saved,
        })
    }
}

/// What `cleanse eval` measures.
#[derive(Serialize, Debug)]
struct EvalResult {
    model: PathBuf,
    attack: Option<PathBuf>,
    attack_spec: Option<String>,
    triggered_data: Option<PathBuf>,
    attack_kind: Option<AttackKind>,
    test_size: usize,
    clean_acc: f64,
    /// Clean test images: each class's accuracy and how often each class is predicted.
    per_class: PerClass,
    asr_size: Option<usize>,
    asr: Option<f64>,
}

/// Loads `--model` with the attack of `--attack` (else its own) and its test images: the one
/// suspect loader of `core`, with the flag named in errors.
pub(crate) fn load_suspect(
    model: &Path,
    attack: Option<&Path>,
    device: &Device,
) -> Result<Suspect> {
    Suspect::load(model, attack, device)
        .with_context(|| format!("loading --model {}", model.display()))
}

pub(crate) fn run_eval(args: &EvalArgs) -> Result<()> {
    if let Some(out) = &args.out {
        check_output(out, "out", args.force)?;
    }
    let selected = args.device.select()?;
    errln!("device: {}", describe_device(&selected));
    let suspect = load_suspect(&args.model, args.attack.as_deref(), &selected.device)?;
    let source = args.asr.source(suspect.dataset, suspect.test.height)?;
    let suspect = suspect.measured_by(&source)?;
    let test = suspect.test.clone();
    let predicted = predictions(&suspect.model, &test, args.batch_size, &selected.device);
    let right = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, y)| **p == **y as usize)
        .count();
    let clean_acc = right as f64 / test.len().max(1) as f64;
    let per_class = PerClass::new(&test.labels, &predicted, test.num_classes);
    let (mut asr, mut asr_size) = (None, None);
    if let Some(meter) = suspect.asr_meter(args.batch_size, &selected.device) {
        asr = Some(meter.asr(&suspect.model));
        asr_size = Some(meter.set.len());
    }
    let result = EvalResult {
        model: args.model.clone(),
        attack: suspect.attack_dir.clone(),
        attack_spec: args.asr.attack_spec.clone(),
        triggered_data: suspect.triggered.as_ref().map(|(t, _)| t.path.clone()),
        attack_kind: suspect.attack.as_ref().map(|a| a.config.kind),
        test_size: test.len(),
        clean_acc,
        per_class,
        asr_size,
        asr,
    };
    match result.asr {
        Some(a) => outln!("clean_acc {:.4} asr {:.4}", result.clean_acc, a),
        None => outln!("clean_acc {:.4}", result.clean_acc),
    }
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    outln!(
        "per-class clean acc %: {}",
        result
            .per_class
            .accuracy
            .iter()
            .map(|a| a.map(pct).unwrap_or_else(|| "-".into()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    outln!(
        "predicted as class %:  {}",
        result
            .per_class
            .predicted_fraction
            .iter()
            .map(|&f| pct(f))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(out) = &args.out {
        write_output_json(out, &result, "out", args.force)?;
    }
    Ok(())
}
