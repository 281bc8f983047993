//! What a method supplies to the engine: how one batch becomes a loss and an update. Training, the
//! attacks, the cleanser and every defense are a [`Step`]; batching, schedules, evaluation,
//! progress, checkpoints and reports are the engine's.

use crate::Result;
use crate::data::batcher::Batches;
use crate::engine::checkpoint::{self, CheckpointState};
use crate::engine::meter::AsrMeter;
use crate::model::Classifier;
use crate::optim::sgd::Sgd;
use crate::precision::Precision;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::path::Path;

/// Where a batch is in the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct At {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based batch of the epoch.
    pub batch: usize,
    /// The epoch's learning rate.
    pub lr: f64,
}

/// What one step leaves for the engine to read back: nothing is read from the device inside a
/// step, so the same step runs under the blocking native driver and the browser's async one.
pub struct StepOutput {
    /// The batch's mean loss (one value).
    pub loss: Tensor<1>,
    /// How many of the batch's predictions match their targets (one value): labels for
    /// training, the teacher's predictions for distillation; `None` for steps that do not
    /// classify (IAB's mask pre-training).
    pub matches: Option<Tensor<1, Int>>,
    /// Images in the batch.
    pub images: usize,
}

/// One method's per-batch work.
pub trait Step {
    /// The data the method trains on.
    type Data: Batches;
    /// Runs one batch: forward, loss, backward, update.
    fn step(&mut self, batch: <Self::Data as Batches>::Batch, at: At) -> StepOutput;
}

/// A step that trains a classifier: evaluated after every epoch, checkpointed, resumable.
pub trait ClassifierStep: Step {
    /// The model being trained, as an evaluation copy.
    fn eval_model(&self) -> Classifier;
    /// What the attack success rate is measured with after an epoch, if anything.
    fn asr_meter(&self) -> Option<AsrMeter> {
        None
    }
    /// Models along the method's own parameter (MCR's `t`, ANP's pruning threshold) that the
    /// report shows as a curve of clean accuracy and ASR after the run: the parameter's name and
    /// `(value, evaluation copy)` pairs. Shown, never used to choose the result.
    fn curve(&self) -> Option<(&'static str, Vec<(f64, Classifier)>)> {
        None
    }
    /// What the method found by training, for the report (ANP's masks); read after the run.
    fn findings(&self) -> Option<crate::report::Findings> {
        None
    }
    /// Writes the step's state after `epochs_done` epochs into the checkpoint directory `dir`;
    /// returns the names of the model and optimiser files.
    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)>;
    /// Restores what [`ClassifierStep::save`] wrote.
    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()>;
}

/// A classifier under training with its SGD state and its arithmetic: the part every step
/// shares. A step runs the model's forward through [`Trainee::autocast`] and its backward
/// through [`Trainee::backward`], so that reduced precision and loss scaling
/// ([`crate::precision`]) reach every method that trains a classifier.
pub struct Trainee {
    model: Option<Classifier>,
    pub sgd: Sgd,
    device: Device,
    precision: Precision,
}

impl Trainee {
    /// `model` must live on `device`'s autodiff device; `precision` must be one the device
    /// computes in ([`crate::device::Selected::with_precision`]).
    pub fn new(model: Classifier, sgd: Sgd, device: &Device, precision: Precision) -> Self {
        let sgd = match precision.needs_loss_scaling() {
            true => sgd.with_loss_scaling(),
            false => sgd,
        };
        Trainee {
            model: Some(model),
            sgd,
            device: device.clone(),
            precision,
        }
    }

    /// The training arithmetic.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs `f` on the model in the trainee's precision: its convolutions in f16 or bf16 when
    /// training in reduced precision (their outputs back in f32).
    pub fn autocast<R>(&self, f: impl FnOnce(&Classifier) -> R) -> R {
        crate::precision::autocast(self.precision, || f(self.model()))
    }

    /// The model's logits for `x`, in the trainee's precision.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.autocast(|m| m.forward(x))
    }

    /// The gradients of `loss`, multiplied by the loss scale when the loss is scaled (f16):
    /// [`Trainee::update`] divides it out.
    pub fn backward(&self, loss: Tensor<1>) -> burn::tensor::Gradients {
        match self.sgd.loss_scale() {
            Some(ls) => loss.mul_scalar(ls.scale).backward(),
            None => loss.backward(),
        }
    }

    /// The model (on the autodiff device).
    pub fn model(&self) -> &Classifier {
        self.model
            .as_ref()
            .expect("a trainee always holds its model")
    }

    /// Its evaluation copy.
    pub fn valid(&self) -> Classifier {
        self.model().valid()
    }

    /// One SGD step with `grads` (from [`Trainee::backward`]) at learning rate `lr`; skipped
    /// when the loss is scaled and they are not finite.
    pub fn update(&mut self, lr: f64, grads: burn::tensor::Gradients) {
        let model = self.model.take().expect("a trainee always holds its model");
        let grads = GradientsParams::from_grads(grads, &model);
        self.model = Some(self.sgd.step(lr, model, grads));
    }

    /// Changes the model in place (e.g. re-applies a pruning mask after an update); `f` keeps
    /// it on the autodiff device with its parameters' gradient flags.
    pub fn map(&mut self, f: impl FnOnce(Classifier) -> Classifier) {
        let model = self.model.take().expect("a trainee always holds its model");
        self.model = Some(f(model));
    }

    /// Saves weights and SGD state as the checkpoint of `epochs_done` epochs.
    pub fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        checkpoint::save_epoch(dir, epochs_done, "sgd", self.model(), &self.sgd)
    }

    /// Loads what [`Trainee::save`] wrote.
    pub fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        let model = self.model.take().expect("a trainee always holds its model");
        let restored = checkpoint::load_epoch(dir, state, model, &mut self.sgd, &self.device);
        // On an error the model is gone; the run stops there.
        self.model = Some(restored?);
        Ok(())
    }

    /// The model, for the end of a run.
    pub fn into_model(mut self) -> Classifier {
        self.model.take().expect("a trainee always holds its model")
    }
}

/// The number of rows of `logits` whose arg-max equals `targets`, as a one-value tensor.
pub fn matches(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1, Int> {
    let [n, _] = logits.dims();
    logits.argmax(1).reshape([n]).equal(targets).int().sum()
}
