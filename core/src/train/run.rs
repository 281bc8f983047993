//! The training loop: seeded, resumable, evaluated every epoch, reported as it goes.

use crate::data::augment::Augment;
use crate::data::batcher::HostBatch;
use crate::data::split;
use crate::data::split::SplitFile;
use crate::data::{DataSpec, ImageSet};
use crate::device::Selected;
use crate::engine::Observer;
use crate::engine::checkpoint::CheckpointState;
use crate::engine::driver::{self, Evaluation, LoopPlan, run_epochs};
use crate::engine::eval::{images_tensor, labels_tensor};
use crate::engine::files;
use crate::engine::meter::AsrMeter;
use crate::engine::run_dir::{Canonical, RunDir, canonical_as};
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, Trainee, matches};
use crate::io::{read_json, write_json_atomic};
use crate::model::loss::cross_entropy;
use crate::model::{Architecture, Classifier, ModelConfig};
use crate::optim::schedule::Schedule;
use crate::optim::sgd::{Sgd, SgdConfig};
use crate::report::{DataSummary, Report, RunStatus, SCHEMA_VERSION};
use crate::{Error, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Everything that defines a training run. Defaults are the supplement's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: DataSpec,
    pub architecture: Architecture,
    /// Base width (64 = standard ResNet-18).
    pub width: usize,
    /// Supplement: 200.
    pub epochs: usize,
    /// Supplement: 128.
    pub batch_size: usize,
    /// Supplement: 0.1 (the authors' code: 0.01).
    pub lr: f64,
    pub sgd: SgdConfig,
    /// Supplement: MultiStep [100, 150] x0.1 for 200 epochs.
    pub schedule: Schedule,
    pub seed: u64,
    /// Fraction of the training set held out for the defender (method spec: 0.1).
    pub holdout: f64,
    /// Instead of `holdout`: this many images of every class held out (a seeded choice; the
    /// supplement's ImageNet-10 split holds out 300 of each class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_per_class: Option<usize>,
    pub augment: Augment,
    pub eval_batch_size: usize,
    /// Evaluate after every Nth epoch (and the last); the model trained does not depend on it.
    #[serde(default = "crate::engine::driver::every_epoch")]
    pub eval_every: usize,
}

impl TrainConfig {
    /// The supplement's settings for `data`.
    pub fn supplement(data: DataSpec) -> Self {
        let flip = data.kind.allows_flip();
        TrainConfig {
            data,
            architecture: Architecture::Resnet18,
            width: 64,
            epochs: 200,
            batch_size: 128,
            lr: 0.1,
            sgd: SgdConfig::default(),
            schedule: Schedule::supplement_multistep(200),
            seed: 0,
            holdout: 0.1,
            holdout_per_class: None,
            augment: Augment::standard(flip),
            eval_batch_size: 256,
            eval_every: 1,
        }
    }

    /// Checks ranges before any work starts.
    pub fn validate(&self) -> Result<()> {
        crate::model::check_width("width", self.width)?;
        // A batch of one image is dropped (batch norm needs two), so batches of 1 would train on
        // nothing.
        if self.batch_size < 2 {
            return Err(Error::config(
                "batch-size",
                format!("expected at least 2, got {}", self.batch_size),
            ));
        }
        let positive = [
            ("epochs", self.epochs),
            ("eval-batch-size", self.eval_batch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(name, "must be positive"));
            }
        }
        crate::engine::driver::check_eval_every(self.eval_every)?;
        crate::optim::sgd::check_lr(self.lr)?;
        self.sgd.validate()?;
        if let Schedule::Multistep { milestones, gamma } = &self.schedule {
            if !(gamma.is_finite() && *gamma > 0.0) {
                return Err(Error::config(
                    "gamma",
                    format!("expected a positive number, got {gamma}"),
                ));
            }
            if milestones.windows(2).any(|w| w[0] > w[1]) {
                return Err(Error::config(
                    "milestones",
                    format!("expected epochs in increasing order, got {milestones:?}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(Error::config(
                "holdout",
                format!("must be in [0, 1); got {}", self.holdout),
            ));
        }
        self.data.validate()?;
        if let Some(n) = self.holdout_per_class {
            if n == 0 {
                return Err(Error::config("holdout-per-class", "must be at least 1"));
            }
            if self.holdout > 0.0 || self.data.defender_from_test() {
                return Err(Error::config(
                    "holdout-per-class",
                    "give it alone: not with --holdout, --defender-per-class or \
                     --defender-fraction",
                ));
            }
        }
        if self.data.defender_from_test() && self.holdout > 0.0 {
            return Err(Error::config(
                "holdout",
                "the defender's data comes from the test set (defender-per-class or \
                 defender-fraction); hold out nothing from the training set (--holdout 0)",
            ));
        }
        self.augment.validate()
    }

    fn model_config(&self, num_classes: usize) -> ModelConfig {
        ModelConfig {
            architecture: self.architecture,
            width: self.width,
            num_classes,
            normalization: self.data.normalization(),
        }
    }
}

/// What an attack (or anything else that changes training) plugs into the loop.
pub trait TrainHooks {
    /// The report's `kind`.
    fn kind(&self) -> &'static str {
        "train"
    }
    /// Configuration recorded in the report and checked on resume.
    fn describe(&self) -> Option<serde_json::Value> {
        None
    }
    /// How a recorded configuration (training settings and [`TrainHooks::describe`]'s) is made
    /// comparable with today's ([`canonical_config`] when the hooks add no type of their own).
    fn canonical(&self) -> Canonical {
        canonical_config
    }
    /// Changes the training set before training (data poisoning). `original_indices[i]` is the
    /// index of `train`'s image `i` in the data set's training part. Runs again on resume, so it
    /// must be deterministic.
    fn prepare(
        &mut self,
        train: ImageSet,
        _original_indices: &[usize],
        _test: &ImageSet,
        _out: &Path,
        _device: &Device,
    ) -> Result<ImageSet> {
        Ok(train)
    }
    /// Changes an augmented training batch on the device (training-control attacks); may add a
    /// term to the loss.
    fn batch(
        &mut self,
        x: Tensor<4>,
        y: Tensor<1, Int>,
        _batch: &HostBatch,
        _seed: u64,
        _epoch: usize,
        _index: usize,
    ) -> (Tensor<4>, Tensor<1, Int>, Option<Tensor<1>>) {
        (x, y, None)
    }
    /// Sees the gradients of each step before the classifier's update (IAB steps its generator).
    fn after_backward(&mut self, _grads: &mut burn::tensor::Gradients, _epoch: usize) {}
    /// Whether [`TrainHooks::after_backward`] may see gradients multiplied by a loss scale (f16
    /// training): false for hooks that step an optimiser of their own on them.
    fn takes_scaled_gradients(&self) -> bool {
        true
    }
    /// Saves the hook's own training state beside the checkpoint of `epochs_done` epochs
    /// (called before the checkpoint's state file is written).
    fn save_checkpoint(&self, _dir: &Path, _epochs_done: usize) -> Result<()> {
        Ok(())
    }
    /// Restores what [`TrainHooks::save_checkpoint`] wrote.
    fn restore_checkpoint(
        &mut self,
        _dir: &Path,
        _epochs_done: usize,
        _device: &Device,
    ) -> Result<()> {
        Ok(())
    }
    /// Writes the hook's final artifacts into the run directory.
    fn finish(&self, _out: &Path) -> Result<()> {
        Ok(())
    }
    /// What the attack success rate is measured with after each epoch, on `device` (the
    /// trigger as it is now: IAB's generator trains with the model).
    fn asr_meter(&self, _device: &Device) -> Option<AsrMeter> {
        None
    }
}

/// Plain training.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// Trains a classifier as `config` says, writing everything into `out`.
///
/// `out` must be new or empty unless `resume` is set; with `resume`, the run continues from the
/// last checkpoint in `out` and ends exactly where an uninterrupted run would have.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    selected: &Selected,
    observer: &mut dyn Observer,
) -> Result<Report> {
    train_with(config, &mut NoHooks, out, resume, selected, observer)
}

/// The configuration a training run checks on resume: its training settings (a run with hooks
/// that describe settings of their own compares those as recorded, unless the hooks say how:
/// [`TrainHooks::canonical`]).
pub fn canonical_config(v: &serde_json::Value) -> serde_json::Value {
    match v.get("train") {
        Some(t) => serde_json::json!({
            "train": canonical_as::<TrainConfig>(t),
            "attack": v["attack"].clone(),
        }),
        None => canonical_as::<TrainConfig>(v),
    }
}

/// Cross-entropy training as an engine step: labelled batches (changed by an attack's hooks,
/// when given), one SGD update each. Training, the attacks and the fine-tuning defenses use it.
pub struct CrossEntropyStep<'h> {
    pub trainee: Trainee,
    pub hooks: Option<&'h mut dyn TrainHooks>,
    pub seed: u64,
    pub device: Device,
}

impl Step for CrossEntropyStep<'_> {
    type Data = ImageSet;

    fn step(&mut self, mut b: HostBatch, at: At) -> StepOutput {
        let ad = self.device.clone().autodiff();
        let images = b.labels.len();
        let x = images_tensor(std::mem::take(&mut b.images), b.shape, &ad);
        let y = labels_tensor(b.labels.clone(), &ad);
        let (x, y, extra) = match &mut self.hooks {
            Some(h) => h.batch(x, y, &b, self.seed, at.epoch, at.batch),
            None => (x, y, None),
        };
        let logits = self.trainee.forward(x);
        let mut loss = cross_entropy(logits.clone(), y.clone());
        if let Some(extra) = extra {
            loss = loss + extra;
        }
        let matches = matches(logits.detach(), y);
        let value = loss.clone().inner();
        let mut grads = self.trainee.backward(loss);
        if let Some(h) = &mut self.hooks {
            h.after_backward(&mut grads, at.epoch);
        }
        self.trainee.update(at.lr, grads);
        StepOutput {
            loss: value,
            matches: Some(matches),
            images,
        }
    }
}

impl ClassifierStep for CrossEntropyStep<'_> {
    fn eval_model(&self) -> Classifier {
        self.trainee.valid()
    }

    fn asr_meter(&self) -> Option<AsrMeter> {
        self.hooks.as_ref()?.asr_meter(&self.device)
    }

    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        if let Some(h) = &self.hooks {
            h.save_checkpoint(dir, epochs_done)?;
        }
        self.trainee.save(dir, epochs_done)
    }

    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        self.trainee.restore(dir, state)?;
        match &mut self.hooks {
            Some(h) => h.restore_checkpoint(dir, state.epochs_done, &self.device),
            None => Ok(()),
        }
    }
}

/// The configuration a training run records, compares on `--resume` and when its folder holds
/// a finished run: its settings, with the attack's (`{"train": ..., "attack": ...}`) when it
/// has one, so that both are checked.
pub fn run_configuration(
    config: &TrainConfig,
    attack: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let config_json =
        serde_json::to_value(config).map_err(|e| Error::config("config", e.to_string()))?;
    Ok(match attack {
        Some(a) => serde_json::json!({ "train": config_json, "attack": a }),
        None => config_json,
    })
}

/// Whether a training run of `config` (with `attack`'s settings) may go on in `out`, before
/// anything is loaded: [`crate::engine::run_dir::check_finished`].
pub fn check_finished(
    out: &Path,
    config: &TrainConfig,
    attack: Option<serde_json::Value>,
    canonical: Canonical,
) -> Result<()> {
    let config_json = run_configuration(config, attack)?;
    crate::engine::run_dir::check_finished(out, &config_json, canonical)
}

/// [`train`] with `hooks` changing the data, the batches, and measuring the ASR.
pub fn train_with(
    config: &TrainConfig,
    hooks: &mut dyn TrainHooks,
    out: &Path,
    resume: bool,
    selected: &Selected,
    observer: &mut dyn Observer,
) -> Result<Report> {
    config.validate()?;
    if selected.precision().needs_loss_scaling() && !hooks.takes_scaled_gradients() {
        return Err(Error::config(
            "precision",
            format!(
                "`{}`: this attack trains a network of its own on the classifier's gradients, \
                 which f16's loss scaling would change: use bf16 (--device cuda) or f32",
                selected.precision()
            ),
        ));
    }
    let attack_json = hooks.describe();
    let config_json = run_configuration(config, attack_json.clone())?;
    let mut run = RunDir::open(out, config_json, hooks.canonical(), config.seed, resume)?;

    let data = config.data.load()?;
    let defender_size = data.defender.as_ref().map(ImageSet::len);
    let split = match config.holdout_per_class {
        Some(n) => split::per_class_holdout(&data.train, n, config.seed)?,
        None => split::holdout(&data.train, config.holdout, config.seed)?,
    };
    let split_path = out.join(files::SPLIT);
    if run.resumed().is_some() && split_path.is_file() {
        let saved: SplitFile = read_json(&split_path)?;
        if saved.split != split {
            return Err(Error::artifact(
                split_path,
                "--resume: the data changed since the run started",
            ));
        }
    }
    write_json_atomic(
        &split_path,
        &SplitFile {
            data: config.data.clone(),
            seed: config.seed,
            holdout: config.holdout,
            holdout_per_class: config.holdout_per_class,
            split: split.clone(),
        },
    )?;
    let num_classes = data.train.num_classes;
    let model_config = config.model_config(num_classes);
    if selected.info.backend == crate::device::Backend::Flex {
        // Weights, gradients, momentum; refused before any preparation or training.
        let batch = config.batch_size.min(split.keep.len());
        crate::memory::Need::training(&model_config, data.train.height, batch, 3)
            .check(selected.info.cpu_threads, "--batch-size or --width")?;
    }
    let device = selected.device.clone();
    let train_set = Arc::new(hooks.prepare(
        data.train.subset(&split.keep),
        &split.keep,
        &data.test,
        out,
        &device,
    )?);
    write_json_atomic(&out.join(files::MODEL_CONFIG), &model_config)?;
    let eval = Evaluation {
        test: Arc::new(data.test),
        batch_size: config.eval_batch_size,
        device: device.clone(),
        meter: None,
        every: config.eval_every,
    };

    let model = model_config.init_seeded(&device.clone().autodiff(), config.seed);
    let kind = hooks.kind();
    let mut step = CrossEntropyStep {
        trainee: Trainee::new(
            model,
            Sgd::new(config.sgd.clone()),
            &device,
            selected.precision(),
        ),
        hooks: Some(hooks),
        seed: config.seed,
        device: device.clone(),
    };
    driver::restore(&mut step, &run)?;

    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        kind: kind.into(),
        status: RunStatus::Running,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config).map_err(|e| Error::config("config", e.to_string()))?,
        attack: attack_json,
        defense: None,
        device: selected.info.clone(),
        data: DataSummary {
            num_classes,
            train_size: train_set.len(),
            holdout_size: defender_size.unwrap_or(split.held_out.len()),
            test_size: eval.test.len(),
        },
        epochs: run.history().to_vec(),
        final_metrics: None,
        model_file: None,
        started_unix: run.started_unix(),
        finished_unix: None,
    };
    let plan = LoopPlan {
        epochs: config.epochs,
        batch_size: config.batch_size,
        lr: config.lr,
        schedule: config.schedule.clone(),
        seed: config.seed,
        augment: config.augment,
        max_batches: None,
        what: "training",
    };
    run_epochs(
        &plan,
        &train_set,
        &mut step,
        &eval,
        &mut run,
        &mut report,
        observer,
    )?;
    let model = step.trainee.valid();
    if let Some(h) = &step.hooks {
        h.finish(out)?;
    }
    driver::finish(&mut run, &mut report, &model, None)?;
    Ok(report)
}
