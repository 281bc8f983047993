//! The training loop: seeded, resumable, evaluated every epoch, reported as it goes.

use super::checkpoint::{self, CHECKPOINT_VERSION, CheckpointState};
use super::eval::{accuracy, images_tensor, labels_tensor};
use super::schedule::Schedule;
use super::sgd::{Sgd, SgdConfig};
use super::{count_correct, cross_entropy};
use crate::data::augment::Augment;
use crate::data::batcher::{HostBatch, chunk_order, epoch_order, stream};
use crate::data::split::{self, Split};
use crate::data::{DataSpec, ImageSet};
use crate::device::Selected;
use crate::io::{create_dir_all, read_json, write_json_atomic};
use crate::model::{Architecture, Classifier, ModelConfig};
use crate::report::{
    DataSummary, EpochRecord, FinalMetrics, Report, RunStatus, SCHEMA_VERSION, now_unix,
};
use crate::{Error, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    pub augment: Augment,
    pub eval_batch_size: usize,
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
            augment: Augment::standard(flip),
            eval_batch_size: 256,
        }
    }

    /// Checks ranges before any work starts.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("width", self.width),
            ("epochs", self.epochs),
            ("batch-size", self.batch_size),
            ("eval-batch-size", self.eval_batch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(name, "must be positive"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(
                "lr",
                format!("must be a positive number; got {}", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(Error::config(
                "holdout",
                format!("must be in [0, 1); got {}", self.holdout),
            ));
        }
        Ok(())
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

/// Receives progress; the CLI draws progress bars with it.
pub trait Observer {
    /// A run starts or resumes at `first_epoch` (0-based) of `epochs`, with `batches` per epoch.
    fn start(&mut self, _first_epoch: usize, _epochs: usize, _batches: usize) {}
    /// A training batch finished: running loss, running accuracy, images/s so far this epoch.
    fn batch(&mut self, _epoch: usize, _batch: usize, _loss: f64, _acc: f64, _images_per_sec: f64) {
    }
    /// An epoch finished and was checkpointed.
    fn epoch(&mut self, _record: &EpochRecord) {}
    /// A run nested in another one (LC's clean model) is over; progress display can end.
    fn finish(&mut self) {}
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
    /// Attack success rate of `model` (an evaluation copy on `device`), measured after each epoch.
    fn asr(&self, _model: &Classifier, _device: &Device) -> Option<f64> {
        None
    }
}

/// Plain training.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// An observer that ignores everything.
pub struct SilentObserver;
impl Observer for SilentObserver {}

/// The split file written beside the model: which training images were held out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitFile {
    pub data: DataSpec,
    pub seed: u64,
    pub holdout: f64,
    pub split: Split,
}

/// Names of the files of a run directory.
pub mod files {
    pub const REPORT: &str = "report.json";
    pub const MODEL: &str = "model.bpk";
    pub const MODEL_CONFIG: &str = "model.json";
    pub const SPLIT: &str = "split.json";
    pub const CHECKPOINT_DIR: &str = "checkpoint";
    /// The clean model LC trains for its adversarial images, inside the attack's run directory,
    /// when no `--clean-model` is given; it is made by the run's preparation
    /// ([`crate::attack::poison::OwnCleanModel`]).
    pub const LC_CLEAN_MODEL: &str = "clean-model";
}

/// Whether `dir` is missing or empty (a run may start in it).
pub(crate) fn dir_is_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => match it.next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(Error::io(dir, e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(dir, e)),
    }
}

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
    let ckpt_dir = out.join(files::CHECKPOINT_DIR);
    let attack_json = hooks.describe();
    let mut config_json =
        serde_json::to_value(config).map_err(|e| Error::config("config", e.to_string()))?;
    if let Some(a) = &attack_json {
        // The checkpoint's configuration covers the attack too, so --resume checks both.
        config_json = serde_json::json!({ "train": config_json, "attack": a });
    }
    let different = "--resume: the checkpoint was made with a different configuration; pass the same flags as the original run";
    let started_path = checkpoint::started_path(&ckpt_dir);
    let resumed_state = if resume {
        if checkpoint::state_path(&ckpt_dir).is_file() {
            let state = checkpoint::load_state(&ckpt_dir)?;
            if state.config != config_json {
                return Err(Error::artifact(
                    checkpoint::state_path(&ckpt_dir),
                    different,
                ));
            }
            Some(state)
        } else if started_path.is_file() {
            // Stopped before its first epoch ended: training starts over; what the hooks'
            // preparation saved (and its own checkpoints) is kept and reused.
            let started: serde_json::Value = read_json(&started_path)?;
            if started != config_json {
                return Err(Error::artifact(&started_path, different));
            }
            None
        } else {
            return Err(Error::artifact(
                out,
                "--resume: no checkpoint here (expected checkpoint/state.json or checkpoint/started.json); start a new run without --resume",
            ));
        }
    } else {
        if !dir_is_empty(out)? {
            return Err(Error::artifact(
                out,
                "output directory exists and is not empty; choose another --out, or pass --resume to continue the run in it",
            ));
        }
        None
    };
    create_dir_all(out)?;
    if !started_path.is_file() {
        create_dir_all(&ckpt_dir)?;
        write_json_atomic(&started_path, &config_json)?;
    }

    let data = config.data.load()?;
    let split = split::holdout(&data.train, config.holdout, config.seed)?;
    let split_path = out.join(files::SPLIT);
    if resumed_state.is_some() && split_path.is_file() {
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
            split: split.clone(),
        },
    )?;
    let device = selected.device.clone();
    let train_set = Arc::new(hooks.prepare(
        data.train.subset(&split.keep),
        &split.keep,
        &data.test,
        out,
        &device,
    )?);
    let test_set = Arc::new(data.test);
    let num_classes = data.train.num_classes;
    let model_config = config.model_config(num_classes);
    write_json_atomic(&out.join(files::MODEL_CONFIG), &model_config)?;

    let ad_device = device.clone().autodiff();
    let mut model = model_config.init_seeded(&ad_device, config.seed);
    let mut sgd = Sgd::new(config.sgd.clone());
    let mut history = Vec::new();
    let mut first_epoch = 0;
    if let Some(state) = &resumed_state {
        model = checkpoint::restore(&ckpt_dir, state, model, &mut sgd, &device)?;
        hooks.restore_checkpoint(&ckpt_dir, state.epochs_done, &device)?;
        history = state.history.clone();
        first_epoch = state.epochs_done;
    }

    let summary = DataSummary {
        num_classes,
        train_size: train_set.len(),
        holdout_size: split.held_out.len(),
        test_size: test_set.len(),
    };
    let report_path = out.join(files::REPORT);
    let started_unix = match resume {
        true => read_json::<Report>(&report_path)
            .map(|r| r.started_unix)
            .unwrap_or_else(|_| now_unix()),
        false => now_unix(),
    };
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        kind: hooks.kind().into(),
        status: RunStatus::Running,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config).map_err(|e| Error::config("config", e.to_string()))?,
        attack: attack_json,
        defense: None,
        device: selected.info.clone(),
        data: summary,
        epochs: history.clone(),
        final_metrics: None,
        model_file: None,
        started_unix,
        finished_unix: None,
    };

    let batches_per_epoch =
        chunk_order(&(0..train_set.len()).collect::<Vec<_>>(), config.batch_size).len();
    observer.start(first_epoch, config.epochs, batches_per_epoch);

    for epoch in first_epoch..config.epochs {
        let lr = config.schedule.lr(config.lr, epoch);
        let t0 = Instant::now();
        let order = epoch_order(train_set.len(), config.seed, epoch as u64);
        let chunks = chunk_order(&order, config.batch_size);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (bi, mut b) in stream(
            train_set.clone(),
            chunks,
            config.augment,
            config.seed,
            epoch as u64,
            2,
        )
        .into_iter()
        .enumerate()
        {
            let n = b.labels.len();
            let x = images_tensor(std::mem::take(&mut b.images), b.shape, &ad_device);
            let y = labels_tensor(b.labels.clone(), &ad_device);
            let (x, y, extra) = hooks.batch(x, y, &b, config.seed, epoch, bi);
            let logits = model.forward(x);
            let mut loss = cross_entropy(logits.clone(), y.clone());
            if let Some(extra) = extra {
                loss = loss + extra;
            }
            let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                return Err(Error::config(
                    "lr",
                    format!(
                        "training diverged: loss is {loss_value} at epoch {} batch {}; lower --lr",
                        epoch + 1,
                        bi + 1
                    ),
                ));
            }
            correct += count_correct(logits.detach(), y);
            let mut grads = loss.backward();
            hooks.after_backward(&mut grads, epoch);
            let grads = GradientsParams::from_grads(grads, &model);
            model = sgd.step(lr, model, grads);
            loss_sum += loss_value * n as f64;
            seen += n;
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            observer.batch(
                epoch,
                bi,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / secs,
            );
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let eval_model = model.valid();
        let clean_acc = accuracy(&eval_model, &test_set, config.eval_batch_size, &device);
        let asr = hooks.asr(&eval_model, &device);
        let eval_secs = t1.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            clean_acc,
            seconds: train_secs + eval_secs,
            eval_seconds: eval_secs,
            images_per_sec: seen as f64 / train_secs.max(1e-9),
            asr,
        };
        history.push(record.clone());
        crate::io::create_dir_all(&ckpt_dir)?;
        hooks.save_checkpoint(&ckpt_dir, epoch + 1)?;
        checkpoint::save(
            &ckpt_dir,
            &model,
            &sgd,
            CheckpointState {
                checkpoint_version: CHECKPOINT_VERSION,
                epochs_done: epoch + 1,
                seed: config.seed,
                config: config_json.clone(),
                model_file: String::new(),
                optimizer_file: String::new(),
                history: history.clone(),
            },
        )?;
        report.epochs = history.clone();
        write_json_atomic(&report_path, &report)?;
        observer.epoch(&record);
    }

    checkpoint::save_model(&model.valid(), &out.join(files::MODEL))?;
    hooks.finish(out)?;
    report.status = RunStatus::Complete;
    report.final_metrics = Some(FinalMetrics {
        clean_acc: history.last().map(|r| r.clean_acc).unwrap_or(0.0),
        asr: history.last().and_then(|r| r.asr),
    });
    report.model_file = Some(files::MODEL.into());
    report.finished_unix = Some(now_unix());
    write_json_atomic(&report_path, &report)?;
    Ok(report)
}

/// A trained model loaded from a run directory.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub model: Classifier,
    pub dir: PathBuf,
}

/// Loads `DIR/model.json` + `DIR/model.bpk` onto `device` (for evaluation).
pub fn load_run_model(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let config: ModelConfig = read_json(&dir.join(files::MODEL_CONFIG))?;
    let model = checkpoint::load_model(config.init(device), &dir.join(files::MODEL))?;
    Ok(LoadedModel {
        config,
        model: model.valid(),
        dir: dir.to_path_buf(),
    })
}

/// The held-out images of a run (the defender's clean data), read from its split file.
pub fn load_holdout(dir: &Path) -> Result<ImageSet> {
    let split: SplitFile = read_json(&dir.join(files::SPLIT))?;
    let data = split.data.load()?;
    Ok(data.train.subset(&split.split.held_out))
}
