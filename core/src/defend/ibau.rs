//! I-BAU, Implicit Backdoor Adversarial Unlearning (Zeng et al. 2022), as the method spec has
//! it: the suspect with its batch norms frozen (running statistics), the defender's labelled
//! data without augmentation, batch 100, 100 rounds (the supplement; the original runs 5). Each
//! round:
//! - a universal perturbation `delta` (from 0) by one pass of SGD (lr 10) over the data on
//!   `-CE(f(x + delta), argmax f(x)) + 0.001 |delta|^2` (unbounded, as in the reference code,
//!   whose L2-ball projection is commented out; `max_norm` projects);
//! - per batch, one Adam step (lr 1e-4) along the implicit hypergradient of the outer loss
//!   `CE(f(x + delta), y)` through `K = 5` fixed-point iterations of the inner gradient-descent
//!   map `Phi(w) = w - 0.1 grad_w L_in(w)`, `L_in(w) = -CE(f(x + w), y) + 0.001 |w|^2`.
//!
//! The perturbation lives in the network's normalised input space, as in the reference (whose
//! loaders normalise before it is added), so its bound and step sizes are the reference's; on
//! data sets without normalisation (GTSRB) that is pixel space.
//!
//! Two quirks of the reference code are not followed by default (the method is): it adds `delta`
//! to only 1% of each outer batch, here to every image (`outer_fraction` 0.01 gives the
//! reference's); its inner loss always reads the first batch, here the current one. The δ
//! search walks the data in order, the reference's loader shuffled.
//!
//! Burn's autodiff has no second derivatives, so the Hessian-vector products of the implicit
//! gradient are central differences of first gradients: `H_ww v ~ (g_w(w + e v) - g_w(w - e v))
//! / 2e` and `d/dtheta (g_w . v) ~ (g_theta(w + e v) - g_theta(w - e v)) / 2e`, with the step
//! `|e v| = 0.01 (1 + |w|)` ([`hypergradient`]; a test checks it against a finite-difference
//! derivative of the outer loss at the inner problem's fixed point).

use super::method::{Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, Flag, SharedFlags};
use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::HostBatch;
use crate::device::Selected;
use crate::engine::checkpoint::{self, CheckpointState};
use crate::engine::driver::LoopPlan;
use crate::engine::eval::{images_tensor, in_order, labels_tensor};
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, matches};
use crate::model::Classifier;
use crate::model::loss::cross_entropy;
use crate::optim::adam::{Adam, AdamConfig};
use crate::optim::schedule::Schedule;
use crate::report::Report;
use crate::{Error, Result};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything that defines an I-BAU run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IbauConfig {
    /// The suspect, seed, batches (method spec: 100), the outer Adam learning rate (method
    /// spec: 1e-4; the original: 1e-3) and evaluation.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// Rounds (method spec: 100; the original: 5).
    pub rounds: usize,
    pub hyper: HyperSettings,
    /// The universal perturbation's SGD learning rate (method spec: 10).
    pub search_lr: f64,
    /// The perturbation search's L2 weight (method spec: 0.001).
    pub search_reg: f64,
    /// An L2 bound on the perturbation (method spec and reference code: none).
    pub max_norm: Option<f64>,
    /// The share of each outer batch the perturbation is added to (method: every image, 1; the
    /// reference code: 0.01, chosen at random per batch).
    #[serde(default = "every_image")]
    pub outer_fraction: f64,
}

fn every_image() -> f64 {
    1.0
}

/// The implicit hypergradient's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HyperSettings {
    /// Fixed-point iterations (method spec: 5).
    pub k: usize,
    /// The inner gradient-descent step (method spec: 0.1).
    pub inner_lr: f64,
    /// The inner loss's L2 weight on the perturbation (the reference code: 0.001).
    pub inner_reg: f64,
}

impl Default for HyperSettings {
    fn default() -> Self {
        HyperSettings {
            k: 5,
            inner_lr: 0.1,
            inner_reg: 0.001,
        }
    }
}

impl IbauConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: PathBuf) -> Self {
        IbauConfig {
            common: CommonSettings::new(suspect, 100, 1e-4),
            rounds: 100,
            hyper: HyperSettings::default(),
            search_lr: 10.0,
            search_reg: 0.001,
            max_norm: None,
            outer_fraction: 1.0,
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        if self.hyper.k == 0 || self.hyper.k > 1000 {
            return Err(Error::config(
                "k",
                format!(
                    "expected 1..=1000 fixed-point iterations; got {}",
                    self.hyper.k
                ),
            ));
        }
        if !(self.outer_fraction > 0.0 && self.outer_fraction <= 1.0) {
            return Err(Error::config(
                "outer-fraction",
                format!("expected a share in (0, 1]; got {}", self.outer_fraction),
            ));
        }
        let positive = [
            ("inner-lr", self.hyper.inner_lr),
            ("search-lr", self.search_lr),
            ("max-norm", self.max_norm.unwrap_or(1.0)),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    name,
                    format!("expected a positive number; got {v}"),
                ));
            }
        }
        for (name, v) in [
            ("inner-reg", self.hyper.inner_reg),
            ("search-reg", self.search_reg),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(
                    name,
                    format!("expected a number >= 0; got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let paper = IbauConfig::paper(PathBuf::new());
        let mut v = Vec::new();
        if self.rounds != paper.rounds {
            v.push(format!("{} rounds", self.rounds));
        }
        if self.common.lr != paper.common.lr {
            v.push(format!("lr {}", self.common.lr));
        }
        if self.hyper.k != paper.hyper.k {
            v.push(format!("K {}", self.hyper.k));
        }
        if let Some(b) = self.max_norm {
            v.push(format!("bound {b}"));
        }
        if self.outer_fraction != paper.outer_fraction {
            v.push(format!("outer {}", self.outer_fraction));
        }
        v
    }
}

/// The `[N, C, H, W]` images (in [0, 1]) with the `[1, C, H, W]` perturbation `w` added to
/// each in the model's normalised input space: `x + w * std`, the same on the network's input
/// as `normalize(x) + w`. With `mask` (`[N, 1, 1, 1]`, 1 or 0), only to the images it selects.
fn perturb(model: &Classifier, x: &Tensor<4>, w: Tensor<4>, mask: Option<&Tensor<4>>) -> Tensor<4> {
    let std = Tensor::<1>::from_floats(model.normalization.std, &x.device()).reshape([1, 3, 1, 1]);
    let d = w * std;
    x.clone()
        + match mask {
            None => d,
            Some(m) => d * m.clone(),
        }
}

fn squared_norm(w: Tensor<4>) -> Tensor<1> {
    w.powf_scalar(2.0).sum()
}

fn norm(w: &Tensor<4>) -> f64 {
    (squared_norm(w.clone()).into_scalar::<f32>() as f64).sqrt()
}

/// The universal perturbation of one round: SGD over `set` in order, the model's own
/// predictions as labels, scaled into the L2 ball of `max_norm` when one is set. `model` is a
/// frozen-BN training copy.
pub fn universal_perturbation(
    model: &Classifier,
    set: &Arc<ImageSet>,
    config: &IbauConfig,
    device: &Device,
) -> Tensor<4> {
    let ad = device.clone().autodiff();
    let fixed = model.clone().no_grad();
    let shape = [1, set.channels, set.height, set.width];
    let mut w = Tensor::<4>::zeros(shape, device);
    for b in in_order(set, config.common.batch_size) {
        let x = images_tensor(b.images, b.shape, &ad);
        let [n, ..] = x.dims();
        let predicted = fixed.forward(x.clone()).detach().argmax(1).reshape([n]);
        let wl = w.clone().autodiff().require_grad();
        let loss = cross_entropy(
            fixed.forward(perturb(&fixed, &x, wl.clone(), None)),
            predicted,
        )
        .neg()
            + squared_norm(wl.clone()) * config.search_reg;
        let g = wl.grad(&loss.backward()).expect("perturbation gradient");
        w = w - g * config.search_lr;
    }
    let Some(bound) = config.max_norm else {
        return w;
    };
    let n = norm(&w);
    match n > bound {
        true => w * (bound / n),
        false => w,
    }
}

/// `L_in(w) = -CE(f(x + w), y) + reg |w|^2`.
fn inner_loss(
    model: &Classifier,
    x: &Tensor<4>,
    y: &Tensor<1, Int>,
    w: Tensor<4>,
    reg: f64,
) -> Tensor<1> {
    cross_entropy(model.forward(perturb(model, x, w.clone(), None)), y.clone()).neg()
        + squared_norm(w) * reg
}

/// `grad_w L_in` at `w` (plain device), the model's weights held fixed.
fn inner_grad_w(
    fixed: &Classifier,
    x: &Tensor<4>,
    y: &Tensor<1, Int>,
    w: &Tensor<4>,
    reg: f64,
) -> Tensor<4> {
    let wl = w.clone().autodiff().require_grad();
    let loss = inner_loss(fixed, x, y, wl.clone(), reg);
    wl.grad(&loss.backward()).expect("perturbation gradient")
}

/// `grad_theta L_in` at `w`.
fn inner_grad_theta(
    model: &Classifier,
    x: &Tensor<4>,
    y: &Tensor<1, Int>,
    w: &Tensor<4>,
    reg: f64,
) -> GradientsParams {
    let loss = inner_loss(model, x, y, w.clone().autodiff(), reg);
    GradientsParams::from_grads(loss.backward(), model)
}

/// `a + (b - c) * scale` per parameter of `model`.
fn combine(
    model: &Classifier,
    mut a: GradientsParams,
    mut b: GradientsParams,
    mut c: GradientsParams,
    scale: f64,
) -> GradientsParams {
    struct Combine<'a> {
        a: &'a mut GradientsParams,
        b: &'a mut GradientsParams,
        c: &'a mut GradientsParams,
        out: GradientsParams,
        scale: f64,
    }
    impl ModuleVisitor for Combine<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let id: ParamId = param.id;
            let (Some(a), Some(b), Some(c)) = (
                self.a.remove::<D>(id),
                self.b.remove::<D>(id),
                self.c.remove::<D>(id),
            ) else {
                return;
            };
            self.out.register(id, a + (b - c) * self.scale);
        }
    }
    let mut v = Combine {
        a: &mut a,
        b: &mut b,
        c: &mut c,
        out: GradientsParams::new(),
        scale,
    };
    model.visit(&mut v);
    v.out
}

/// The implicit hypergradient of the outer loss `CE(f(x + w), y)` with respect to the model's
/// weights, `w` the inner problem's (approximate) solution: `g_theta + (dPhi/dtheta)^T v` with
/// `v = sum_{i<K} (dPhi/dw)^T^i g_w` (the fixed-point method of the reference's `hypergrad`
/// package), Hessian-vector products by central differences (see the module's documentation).
/// `model` is a training copy (frozen BNs); `x`, `y` on its autodiff device; `w` plain;
/// `outer_mask` (`[N, 1, 1, 1]`, 1 or 0 per image) limits the perturbation in the outer loss to
/// some images (the reference code's 1%). Also returns the outer loss and the logits' matches
/// with `y`.
pub fn hypergradient(
    model: &Classifier,
    x: &Tensor<4>,
    y: &Tensor<1, Int>,
    w: &Tensor<4>,
    settings: &HyperSettings,
    outer_mask: Option<&Tensor<4>>,
) -> (GradientsParams, Tensor<1>, Tensor<1, Int>) {
    let wl = w.clone().autodiff().require_grad();
    let logits = model.forward(perturb(model, x, wl.clone(), outer_mask));
    let outer = cross_entropy(logits.clone(), y.clone());
    let value = outer.clone().inner();
    let matched = matches(logits.inner(), y.clone().inner());
    let mut grads = outer.backward();
    let g_w = wl.grad(&grads).expect("perturbation gradient");
    let g_theta = GradientsParams::from_module(&mut grads, model);
    let fixed = model.clone().no_grad();
    let (lr, reg) = (settings.inner_lr, settings.inner_reg);
    let step = 0.01 * (1.0 + norm(w));
    let shifted = |v: &Tensor<4>| -> Option<(Tensor<4>, Tensor<4>, f64)> {
        let n = norm(v);
        (n > 0.0 && n.is_finite()).then(|| {
            let e = step / n;
            (w.clone() + v.clone() * e, w.clone() - v.clone() * e, e)
        })
    };
    // v <- (dPhi/dw)^T v + g_w = v - lr H_ww v + g_w, from v = 0 (whose first result is g_w).
    let mut v = g_w.clone();
    for _ in 1..settings.k {
        let hv = match shifted(&v) {
            Some((plus, minus, e)) => {
                (inner_grad_w(&fixed, x, y, &plus, reg) - inner_grad_w(&fixed, x, y, &minus, reg))
                    / (2.0 * e)
            }
            None => v.clone() * 0.0,
        };
        v = v.clone() - hv * lr + g_w.clone();
    }
    // (dPhi/dtheta)^T v = -lr d/dtheta (grad_w L_in . v).
    let hyper = match shifted(&v) {
        Some((plus, minus, e)) => {
            let gp = inner_grad_theta(model, x, y, &plus, reg);
            let gm = inner_grad_theta(model, x, y, &minus, reg);
            combine(model, g_theta, gp, gm, -lr / (2.0 * e))
        }
        None => g_theta,
    };
    (hyper, value, matched)
}

/// I-BAU as an engine step: a round's perturbation at its first batch, then one outer Adam
/// step per batch.
pub struct IbauStep {
    model: Option<Classifier>,
    pub adam: Adam,
    holdout: Arc<ImageSet>,
    /// The current round's perturbation (plain device).
    delta: Option<(usize, Tensor<4>)>,
    config: IbauConfig,
    device: Device,
}

impl IbauStep {
    /// A step unlearning on `suspect` (an evaluation copy) with the defender's `holdout`.
    pub fn new(
        suspect: &Classifier,
        holdout: Arc<ImageSet>,
        config: &IbauConfig,
        device: &Device,
    ) -> Self {
        IbauStep {
            model: Some(suspect.clone().train().with_batch_norm_training(false)),
            adam: Adam::new(AdamConfig::default()),
            holdout,
            delta: None,
            config: config.clone(),
            device: device.clone(),
        }
    }

    fn model(&self) -> &Classifier {
        self.model.as_ref().expect("an I-BAU step holds its model")
    }
}

impl Step for IbauStep {
    type Data = ImageSet;

    fn step(&mut self, mut b: HostBatch, at: At) -> StepOutput {
        if self
            .delta
            .as_ref()
            .is_none_or(|(round, _)| *round != at.epoch)
        {
            let d = universal_perturbation(self.model(), &self.holdout, &self.config, &self.device);
            self.delta = Some((at.epoch, d));
        }
        let ad = self.device.clone().autodiff();
        let images = b.labels.len();
        let x = images_tensor(std::mem::take(&mut b.images), b.shape, &ad);
        let y = labels_tensor(b.labels.clone(), &ad);
        let delta = &self.delta.as_ref().expect("the round's perturbation").1;
        let mask = (self.config.outer_fraction < 1.0).then(|| {
            // The reference's `int(n * portion)` images of the batch, chosen per batch.
            let k = (images as f64 * self.config.outer_fraction).floor() as usize;
            let mut rng = crate::rng::Rng::from_parts(&[
                self.config.common.seed,
                0x1bau64,
                at.epoch as u64,
                at.batch as u64,
            ]);
            let mut m = vec![0f32; images];
            for i in rng.sample_sorted(images, k) {
                m[i] = 1.0;
            }
            Tensor::<1>::from_floats(m.as_slice(), &ad).reshape([images, 1, 1, 1])
        });
        let (grads, loss, matched) = hypergradient(
            self.model(),
            &x,
            &y,
            delta,
            &self.config.hyper,
            mask.as_ref(),
        );
        let model = self.model.take().expect("an I-BAU step holds its model");
        self.model = Some(self.adam.step(at.lr, model, grads));
        StepOutput {
            loss,
            matches: Some(matched),
            images,
        }
    }
}

impl ClassifierStep for IbauStep {
    fn eval_model(&self) -> Classifier {
        // An ordinary evaluation copy: its batch norms train again if it is trained later.
        self.model().clone().with_batch_norm_training(true).valid()
    }

    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        checkpoint::save_epoch(dir, epochs_done, "adam", self.model(), &self.adam)
    }

    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        let model = self.model.take().expect("an I-BAU step holds its model");
        let restored = checkpoint::load_epoch(dir, state, model, &mut self.adam, &self.device)?;
        self.model = Some(restored.with_batch_norm_training(false));
        self.delta = None;
        Ok(())
    }
}

/// I-BAU's step, data and plan: rounds over the defender's labelled images.
pub(crate) fn prepare(
    config: &IbauConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<IbauStep>> {
    let device = selected.device.clone();
    let holdout = suspect.defender.labelled(suspect.dir)?;
    let holdout = Arc::new(holdout);
    let step = IbauStep::new(suspect.model, holdout.clone(), config, &device);
    Ok(Prepared {
        step,
        data: holdout,
        plan: LoopPlan {
            epochs: config.rounds,
            batch_size: config.common.batch_size,
            lr: config.common.lr,
            schedule: Schedule::Constant,
            seed: config.common.seed,
            augment: Augment::NONE,
            max_batches: None,
            what: "I-BAU",
        },
        start: suspect.model.clone(),
        reinit: None,
        findings: None,
    })
}

impl Method for IbauConfig {
    fn defaults(suspect: std::path::PathBuf, _flip: bool) -> Self {
        IbauConfig::paper(suspect)
    }

    fn trains_in_reduced_precision(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "ibau"
    }

    fn display_name(&self) -> &'static str {
        "I-BAU"
    }

    fn table_position(&self) -> usize {
        6
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonSettings {
        &mut self.common
    }

    fn apply_training(&mut self, flags: &SharedFlags) -> Result<()> {
        flags.refuse(&[Flag::Epochs], "I-BAU counts --rounds")?;
        flags.refuse(
            &[Flag::CosineTMax, Flag::WeightDecay],
            "I-BAU's Adam has neither a cosine schedule nor weight decay",
        )?;
        flags.refuse(
            &[Flag::Augmentation],
            "I-BAU uses the defender's images without augmentation (its perturbation is \
             universal over them)",
        )
    }

    fn validate(&self) -> Result<()> {
        IbauConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        IbauConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
