//! ANP, Adversarial Neuron Pruning (Wu & Wang 2021), as the method spec has it: a mask
//! `m` in [0, 1] per batch-norm channel (every BN, shortcuts included), starting at 1, trained on
//! the defender's labelled data with the suspect's weights frozen. Per batch: noise on each BN's
//! weight (`gamma (m + delta)`) and bias (`beta (1 + xi)`), `delta, xi ~ U(-eps, eps)`, one
//! signed-gradient ascent step of size `eps` on the noise (kept in `[-eps, eps]`), then the mask
//! loss `alpha CE(clean) + (1 - alpha) CE(perturbed)` with `alpha = 0.2`, one SGD step (lr 0.2,
//! momentum 0.9) and the mask clipped to [0, 1]; 2,000 iterations of batch 128 (the authors'
//! BackdoorBench fork effectively runs 80). The BNs use batch statistics while the mask trains,
//! as in the original; the suspect's running statistics are not changed. The result is the
//! suspect with the BN weight of every channel whose mask is at most the threshold (0.2, fixed in
//! advance) set to zero. The reference code picks the threshold by the lowest test ASR; here
//! the report only shows clean accuracy and ASR along thresholds 0.05, 0.10, ..., 0.90.
//!
//! The iterations run in rounds of up to 100 batches (the engine's epochs: a checkpoint and an
//! evaluation after each), drawn from the defender's set repeated as often as a round needs.

use super::fp::zero_rows;
use super::method::{Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, Flag, SharedFlags};
use crate::data::augment::Augment;
use crate::data::batcher::{HostBatch, Repeated};
use crate::device::Selected;
use crate::engine::checkpoint::{self, CheckpointState};
use crate::engine::driver::LoopPlan;
use crate::engine::eval::{images_tensor, labels_tensor};
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, matches};
use crate::model::Classifier;
use crate::model::loss::cross_entropy;
use crate::optim::schedule::Schedule;
use crate::optim::sgd::{Sgd, SgdConfig};
use crate::report::Findings;
use crate::report::Report;
use crate::report::findings::MaskSummary;
use crate::{Error, Result};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Batches per round (one engine epoch) at most.
pub const ROUND: usize = 100;

/// Everything that defines an ANP run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnpConfig {
    /// The suspect, seed, batches of mask updates (method spec: 128), the mask's SGD learning
    /// rate (method spec: 0.2, constant) and evaluation.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// Mask updates (method spec: 2,000).
    pub iterations: usize,
    /// The mask's SGD momentum (method spec: 0.9; no weight decay).
    pub momentum: f64,
    /// The noise's range and ascent step (method spec: 0.4).
    pub eps: f64,
    /// The clean loss's weight (method spec: 0.2).
    pub alpha: f64,
    /// Channels whose mask is at most this are pruned (method spec: 0.2).
    pub threshold: f64,
    /// Method spec: crop + flip, as the reference trains the mask on augmented images.
    pub augment: Augment,
}

impl AnpConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: PathBuf, flip: bool) -> Self {
        AnpConfig {
            common: CommonSettings::new(suspect, 128, 0.2),
            iterations: 2000,
            momentum: 0.9,
            eps: 0.4,
            alpha: 0.2,
            threshold: 0.2,
            augment: Augment::standard(flip),
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        if self.iterations == 0 {
            return Err(Error::config("iterations", "must be positive"));
        }
        self.common.validate()?;
        SgdConfig {
            momentum: self.momentum,
            weight_decay: 0.0,
            ..SgdConfig::default()
        }
        .validate()?;
        let fraction = |name: &str, v: f64| match (0.0..=1.0).contains(&v) {
            true => Ok(()),
            false => Err(Error::config(
                name,
                format!("expected a value in [0, 1]; got {v}"),
            )),
        };
        fraction("eps", self.eps)?;
        fraction("alpha", self.alpha)?;
        fraction("threshold", self.threshold)?;
        self.augment.validate()
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let paper = AnpConfig::paper(PathBuf::new(), true);
        let mut v = Vec::new();
        if self.iterations != paper.iterations {
            v.push(format!("{} it", self.iterations));
        }
        if self.eps != paper.eps {
            v.push(format!("eps {}", self.eps));
        }
        if self.threshold != paper.threshold {
            v.push(format!("thr {}", self.threshold));
        }
        v
    }

    /// Batches per round and rounds: `iterations` in rounds of at most [`ROUND`] batches.
    pub fn rounds(&self) -> (usize, usize) {
        let per_round = self.iterations.min(ROUND);
        (per_round, self.iterations.div_ceil(per_round))
    }
}

/// The masks, one per batch norm in [`Classifier::batch_norms_mut`]'s order.
#[derive(Module, Debug)]
pub struct BnMasks {
    pub masks: Vec<Param<Tensor<1>>>,
}

impl BnMasks {
    /// All ones, one mask per batch norm of `model`, on `device`.
    pub fn ones(model: &Classifier, device: &Device) -> Self {
        let mut m = model.clone();
        let masks = m
            .batch_norms_mut()
            .into_iter()
            .map(|(_, bn)| {
                let [c] = bn.gamma.shape().dims();
                Param::from_tensor(Tensor::ones([c], device))
            })
            .collect();
        BnMasks { masks }
    }

    /// The mask values.
    pub fn values(&self) -> Vec<Vec<f32>> {
        self.masks
            .iter()
            .map(|p| p.val().into_data().iter::<f32>().collect())
            .collect()
    }
}

/// The summary of `masks` (per batch norm, with each one's stage) at `threshold`.
pub fn summarize(masks: &[Vec<f32>], stages: &[usize], threshold: f64) -> MaskSummary {
    let mut histogram = [0usize; 10];
    let mut pruned_per_stage = [0usize; 5];
    for (m, &stage) in masks.iter().zip(stages) {
        for &v in m {
            histogram[((v * 10.0) as usize).min(9)] += 1;
            if v as f64 <= threshold {
                pruned_per_stage[stage] += 1;
            }
        }
    }
    MaskSummary {
        histogram,
        pruned_per_stage,
        channels: masks.iter().map(Vec::len).sum(),
        threshold,
    }
}

/// `model` (an evaluation copy) with the BN weight of every channel whose mask is at most
/// `threshold` set to zero.
pub fn prune(model: &Classifier, masks: &[Vec<f32>], threshold: f64) -> Classifier {
    let mut m = model.clone().valid();
    for ((_, bn), mask) in m.batch_norms_mut().into_iter().zip(masks) {
        let pruned: Vec<usize> = (0..mask.len())
            .filter(|&c| mask[c] as f64 <= threshold)
            .collect();
        if !pruned.is_empty() {
            bn.gamma = zero_rows(bn.gamma.clone(), &pruned);
        }
    }
    m
}

/// ANP as an engine step.
pub struct AnpStep {
    /// The suspect as a training copy: batch statistics, weights without gradients, running
    /// statistics never updated (momentum 0).
    base: Classifier,
    /// The suspect, an evaluation copy (pruned for evaluation).
    suspect: Classifier,
    /// The BN layers' stages, in mask order.
    stages: Vec<usize>,
    masks: Option<BnMasks>,
    pub sgd: Sgd,
    config: AnpConfig,
    device: Device,
}

impl AnpStep {
    /// A step training fresh masks on `suspect` (an evaluation copy).
    pub fn new(suspect: &Classifier, config: &AnpConfig, device: &Device) -> Self {
        let mut base = suspect.clone().train().no_grad();
        let mut stages = Vec::new();
        for (stage, bn) in base.batch_norms_mut() {
            bn.momentum = 0.0;
            stages.push(stage);
        }
        let masks = BnMasks::ones(suspect, device).train();
        AnpStep {
            base,
            suspect: suspect.clone(),
            stages,
            masks: Some(masks),
            sgd: Sgd::new(SgdConfig {
                momentum: config.momentum,
                weight_decay: 0.0,
                ..SgdConfig::default()
            }),
            config: config.clone(),
            device: device.clone(),
        }
    }

    fn masks(&self) -> &BnMasks {
        self.masks.as_ref().expect("an ANP step holds its masks")
    }

    /// The suspect with each BN's weight scaled by `scale` and bias by `shift`.
    fn scaled(&self, scale: &[Tensor<1>], shift: Option<&[Tensor<1>]>) -> Classifier {
        let mut m = self.base.clone();
        for (i, (_, bn)) in m.batch_norms_mut().into_iter().enumerate() {
            let s = scale[i].clone();
            bn.gamma = bn.gamma.clone().map(|g| g * s);
            if let Some(shift) = shift {
                let b = shift[i].clone();
                bn.beta = bn.beta.clone().map(|v| v * b);
            }
        }
        m
    }

    /// The result at `threshold` for the current masks.
    pub fn pruned(&self, threshold: f64) -> Classifier {
        prune(&self.suspect, &self.masks().values(), threshold)
    }
}

impl Step for AnpStep {
    type Data = Repeated;

    fn step(&mut self, mut b: HostBatch, at: At) -> StepOutput {
        let ad = self.device.clone().autodiff();
        let images = b.labels.len();
        let x = images_tensor(std::mem::take(&mut b.images), b.shape, &ad);
        let y = labels_tensor(b.labels.clone(), &ad);
        let eps = self.config.eps;
        let m: Vec<Tensor<1>> = self.masks().masks.iter().map(|p| p.val()).collect();
        let mut rng = crate::rng::Rng::from_parts(&[
            self.config.common.seed,
            at.epoch as u64,
            at.batch as u64,
            0xA4,
        ]);
        let mut uniform = |c: usize| {
            let v: Vec<f32> = (0..c)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * eps) as f32)
                .collect();
            Tensor::<1>::from_floats(v.as_slice(), &ad)
        };
        let sizes: Vec<usize> = m.iter().map(|t| t.dims()[0]).collect();
        let mut delta: Vec<Tensor<1>> = sizes.iter().map(|&c| uniform(c)).collect();
        let mut xi: Vec<Tensor<1>> = sizes.iter().map(|&c| uniform(c)).collect();
        if eps > 0.0 {
            // One signed ascent step of size eps on the noise, masks held fixed.
            let d: Vec<Tensor<1>> = delta.iter().map(|t| t.clone().require_grad()).collect();
            let e: Vec<Tensor<1>> = xi.iter().map(|t| t.clone().require_grad()).collect();
            let scale: Vec<Tensor<1>> = m
                .iter()
                .zip(&d)
                .map(|(m, d)| m.clone().detach() + d.clone())
                .collect();
            let shift: Vec<Tensor<1>> = e.iter().map(|e| e.clone() + 1.0).collect();
            let loss = cross_entropy(
                self.scaled(&scale, Some(&shift)).forward(x.clone()),
                y.clone(),
            );
            let grads = loss.backward();
            let ascend = |t: &Tensor<1>| {
                let g = t.grad(&grads).expect("noise gradient");
                (t.clone().inner() + g.sign() * eps)
                    .clamp(-eps, eps)
                    .autodiff()
            };
            delta = d.iter().map(ascend).collect();
            xi = e.iter().map(ascend).collect();
        }
        let scale: Vec<Tensor<1>> = m
            .iter()
            .zip(&delta)
            .map(|(m, d)| m.clone() + d.clone())
            .collect();
        let shift: Vec<Tensor<1>> = xi.iter().map(|e| e.clone() + 1.0).collect();
        let perturbed = cross_entropy(
            self.scaled(&scale, Some(&shift)).forward(x.clone()),
            y.clone(),
        );
        let clean_logits = self.scaled(&m, None).forward(x);
        let clean = cross_entropy(clean_logits.clone(), y.clone());
        let alpha = self.config.alpha;
        let loss = clean * alpha + perturbed * (1.0 - alpha);
        let matches = matches(clean_logits.inner(), y.inner());
        let value = loss.clone().inner();
        let grads = loss.backward();
        let masks = self.masks.take().expect("an ANP step holds its masks");
        let grads = GradientsParams::from_grads(grads, &masks);
        let masks = self.sgd.step(at.lr, masks, grads);
        let clipped = BnMasks {
            masks: masks
                .masks
                .into_iter()
                .map(|p| p.map(|t| Tensor::from_inner(t.inner().clamp(0.0, 1.0)).require_grad()))
                .collect(),
        };
        self.masks = Some(clipped);
        StepOutput {
            loss: value,
            matches: Some(matches),
            images,
        }
    }
}

impl ClassifierStep for AnpStep {
    fn eval_model(&self) -> Classifier {
        self.pruned(self.config.threshold)
    }

    fn findings(&self) -> Option<Findings> {
        Some(Findings::Anp(summarize(
            &self.masks().values(),
            &self.stages,
            self.config.threshold,
        )))
    }

    fn curve(&self) -> Option<(&'static str, Vec<(f64, Classifier)>)> {
        let thresholds = (1..=18).map(|i| i as f64 * 0.05);
        Some((
            "threshold",
            thresholds.map(|t| (t, self.pruned(t))).collect(),
        ))
    }

    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        checkpoint::save_epoch(dir, epochs_done, "sgd", self.masks(), &self.sgd)
    }

    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        let masks = self.masks.take().expect("an ANP step holds its masks");
        let restored = checkpoint::load_epoch(dir, state, masks, &mut self.sgd, &self.device)?;
        self.masks = Some(restored);
        Ok(())
    }
}

/// ANP's step, data and plan: rounds of mask updates over the repeated defender set.
pub(crate) fn prepare(
    config: &AnpConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<AnpStep>> {
    let device = selected.device.clone();
    let holdout = suspect.defender.labelled(suspect.dir)?;
    let (per_round, rounds) = config.rounds();
    // Enough repeats of the set for a round of `per_round` full batches.
    let times = (per_round * config.common.batch_size).div_ceil(holdout.len().max(1));
    let data = Arc::new(Repeated {
        set: Arc::new(holdout),
        times,
    });
    let step = AnpStep::new(suspect.model, config, &device);
    Ok(Prepared {
        step,
        data,
        plan: LoopPlan {
            epochs: rounds,
            batch_size: config.common.batch_size,
            lr: config.common.lr,
            schedule: Schedule::Constant,
            seed: config.common.seed,
            augment: config.augment,
            max_batches: Some(per_round),
            what: "ANP",
        },
        start: suspect.model.clone(),
        reinit: None,
        findings: None,
    })
}

impl Method for AnpConfig {
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self {
        AnpConfig::paper(suspect, flip)
    }

    fn trains_in_reduced_precision(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "anp"
    }

    fn display_name(&self) -> &'static str {
        "ANP"
    }

    fn table_position(&self) -> usize {
        4
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonSettings {
        &mut self.common
    }

    fn apply_training(&mut self, flags: &SharedFlags) -> Result<()> {
        flags.refuse(&[Flag::Epochs], "ANP counts mask updates; use --iterations")?;
        flags.refuse(
            &[Flag::CosineTMax, Flag::WeightDecay],
            "ANP's mask optimiser has neither a cosine schedule nor weight decay",
        )?;
        flags.apply_to_augment(&mut self.augment);
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        AnpConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        AnpConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
