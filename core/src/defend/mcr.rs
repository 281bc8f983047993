//! MCR, Mode Connectivity Repair (Zhao et al. 2020), as the method spec has it: a quadratic
//! Bezier curve `w(t) = (1-t)^2 theta0 + 2t(1-t) theta1 + t^2 theta2` between the suspect
//! (`theta0`) and the suspect fine-tuned for 10 epochs on the defender's labelled data
//! (`theta2`, a nested `defend ft` run); the bend `theta1` starts on the straight line and is
//! trained for 100 epochs with one `t ~ U(0,1)` per batch, cross-entropy plus the L2 term
//! `0.5 * 5e-4 * |w(t)|^2` (no optimiser weight decay), SGD lr 0.01 momentum 0.9 on the
//! curve-training schedule ([`Schedule::CurveTraining`]). The result is the model at `t = 0.3`
//! with its batch-norm statistics re-estimated on the defender's data (the original re-estimates
//! them for each `t`; the authors' BackdoorBench fork never does: `--no-bn-update` is that).
//! The report shows clean accuracy and ASR along `t = 0, 0.1, ..., 1`; `t` is fixed in advance,
//! never chosen from that curve.

use super::ft::{FtConfig, nested_fine_tune};
use super::method::{Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, SharedFlags};
use crate::data::ImageSet;
use crate::data::batcher::HostBatch;
use crate::device::Selected;
use crate::engine::bn_update::reestimate_batch_norm;
use crate::engine::checkpoint::CheckpointState;
use crate::engine::driver::LoopPlan;
use crate::engine::eval::{images_tensor, labels_tensor};
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, Trainee, matches};
use crate::model::Classifier;
use crate::model::loss::cross_entropy;
use crate::optim::schedule::Schedule;
use crate::optim::sgd::{Sgd, SgdConfig};
use crate::report::Report;
use crate::{Error, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Everything that defines an MCR run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McrConfig {
    /// The suspect and the curve's training (method spec: 100 epochs, batch 256, lr 0.01,
    /// momentum 0.9); its weight decay (5e-4) is the coefficient of the L2 term on `w(t)`, not
    /// the optimiser's. The endpoint's fine-tuning uses these settings as FT does.
    pub ft: FtConfig,
    /// Epochs of the endpoint's fine-tuning (method spec: 10).
    pub endpoint_epochs: usize,
    /// Where on the curve the result is taken (method spec: 0.3).
    pub t: f64,
    /// Re-estimate the batch-norm statistics of each evaluated point on the defender's data
    /// (method spec: yes; the authors' fork: no).
    pub bn_update: bool,
}

impl McrConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: std::path::PathBuf, flip: bool) -> Self {
        McrConfig {
            ft: FtConfig::paper(suspect, flip),
            endpoint_epochs: 10,
            t: 0.3,
            bn_update: true,
        }
    }

    /// The endpoint's fine-tuning: the curve's settings for `endpoint_epochs`.
    pub fn endpoint(&self) -> FtConfig {
        let mut ft = self.ft.clone();
        ft.training.epochs = self.endpoint_epochs;
        ft
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.ft.validate()?;
        if self.endpoint_epochs == 0 {
            return Err(Error::config(
                "endpoint-epochs",
                "must be positive (the far endpoint is the suspect fine-tuned)",
            ));
        }
        if !(0.0..=1.0).contains(&self.t) {
            return Err(Error::config(
                "t",
                format!("expected a point of the curve in [0, 1]; got {}", self.t),
            ));
        }
        Ok(())
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let paper = McrConfig::paper(Default::default(), true);
        let mut v = self.ft.label_details();
        if self.endpoint_epochs != paper.endpoint_epochs {
            v.push(format!("end {} ep", self.endpoint_epochs));
        }
        if self.t != paper.t {
            v.push(format!("t {}", self.t));
        }
        if !self.bn_update {
            v.push("no bn update".into());
        }
        v
    }
}

/// Whether a module path names a batch norm's running statistics (state, not weights).
fn is_running_state(path: &[String]) -> bool {
    path.last().is_some_and(|p| p.starts_with("running_"))
}

/// A model's weights (running statistics left out), flattened, by module path.
fn weights_by_path(model: &Classifier) -> BTreeMap<String, Tensor<1>> {
    struct Collect {
        path: Vec<String>,
        values: BTreeMap<String, Tensor<1>>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !is_running_state(&self.path) {
                let v = param.val();
                let n = v.shape().num_elements();
                self.values.insert(self.path.join("."), v.reshape([n]));
            }
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        values: BTreeMap::new(),
    };
    model.visit(&mut c);
    c.values
}

/// The curve's fixed ends (evaluation copies' weights, on the plain device).
pub struct Ends {
    theta0: BTreeMap<String, Tensor<1>>,
    theta2: BTreeMap<String, Tensor<1>>,
}

impl Ends {
    /// The ends `theta0` and `theta2` (evaluation copies of one architecture).
    pub fn new(theta0: &Classifier, theta2: &Classifier) -> Self {
        Ends {
            theta0: weights_by_path(theta0),
            theta2: weights_by_path(theta2),
        }
    }
}

/// Replaces each weight `w1` of the bend by `c0 theta0 + c1 w1 + c2 theta2`, and sums the
/// squares of the results.
struct Combine<'a> {
    path: Vec<String>,
    ends: &'a Ends,
    coefficients: [f64; 3],
    /// The bend lives on the autodiff device (the ends are moved there as constants).
    autodiff: bool,
    squares: Vec<Tensor<1>>,
}

impl ModuleMapper for Combine<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if is_running_state(&self.path) {
            return param;
        }
        let key = self.path.join(".");
        let (Some(a), Some(c)) = (self.ends.theta0.get(&key), self.ends.theta2.get(&key)) else {
            return param;
        };
        let [c0, c1, c2] = self.coefficients;
        let (id, w1, mapper) = param.consume();
        let dims = w1.dims();
        let fixed: Tensor<D> = (a.clone() * c0 + c.clone() * c2).reshape(dims);
        let fixed = match self.autodiff {
            true => fixed.autodiff(),
            false => fixed,
        };
        let w = w1 * c1 + fixed;
        self.squares.push(w.clone().powf_scalar(2.0).sum());
        Param::from_mapped_value(id, w, mapper)
    }
}

/// The Bezier coefficients of `t`: `((1-t)^2, 2t(1-t), t^2)`.
pub fn bezier(t: f64) -> [f64; 3] {
    [(1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t]
}

/// The curve's point at `t` for the bend `bend` (its running statistics kept), with the sum of
/// its weights' squares. On a training copy the point's weights are functions of the bend's,
/// so a loss of the point trains the bend.
pub fn curve_point(
    bend: &Classifier,
    ends: &Ends,
    t: f64,
    autodiff: bool,
) -> (Classifier, Tensor<1>) {
    combine(bend, ends, bezier(t), autodiff)
}

fn combine(
    model: &Classifier,
    ends: &Ends,
    coefficients: [f64; 3],
    autodiff: bool,
) -> (Classifier, Tensor<1>) {
    let mut c = Combine {
        path: Vec::new(),
        ends,
        coefficients,
        autodiff,
        squares: Vec::new(),
    };
    // `Module::map` writes running statistics back into shared state; they are returned
    // unchanged, so the copy taken here changes nothing of `model`.
    let point = model.clone().map(&mut c);
    let squares = Tensor::cat(c.squares, 0).sum();
    (point, squares)
}

/// MCR as an engine step: one `t ~ U(0,1)` per batch, the point's cross-entropy plus the L2
/// term, the bend updated.
pub struct McrStep {
    /// The bend `theta1`.
    pub trainee: Trainee,
    pub ends: Arc<Ends>,
    /// The L2 coefficient (method spec: 5e-4, halved in the term).
    pub l2: f64,
    /// The evaluated point.
    pub t: f64,
    pub bn_update: bool,
    /// The defender's images, for re-estimating batch-norm statistics.
    pub holdout: Arc<ImageSet>,
    pub eval_batch_size: usize,
    pub seed: u64,
    pub device: Device,
}

impl McrStep {
    /// The curve's point at `t` as an evaluation copy, batch-norm statistics re-estimated on
    /// the defender's images unless the configuration says not to.
    pub fn point(&self, t: f64) -> Classifier {
        let (point, _) = curve_point(&self.trainee.valid(), &self.ends, t, false);
        match self.bn_update {
            true => {
                reestimate_batch_norm(&point, &self.holdout, self.eval_batch_size, &self.device)
            }
            false => point,
        }
    }
}

impl Step for McrStep {
    type Data = ImageSet;

    fn step(&mut self, mut b: HostBatch, at: At) -> StepOutput {
        let ad = self.device.clone().autodiff();
        let images = b.labels.len();
        let t = crate::rng::Rng::from_parts(&[self.seed, at.epoch as u64, at.batch as u64, 0x3C2])
            .next_f32() as f64;
        let x = images_tensor(std::mem::take(&mut b.images), b.shape, &ad);
        let y = labels_tensor(b.labels.clone(), &ad);
        let (logits, squares) = self.trainee.autocast(|m| {
            let (point, squares) = curve_point(m, &self.ends, t, true);
            (point.forward(x), squares)
        });
        let loss = cross_entropy(logits.clone(), y.clone()) + squares * (0.5 * self.l2);
        let matches = matches(logits.inner(), y.inner());
        let value = loss.clone().inner();
        let grads = self.trainee.backward(loss);
        self.trainee.update(at.lr, grads);
        StepOutput {
            loss: value,
            matches: Some(matches),
            images,
        }
    }
}

impl ClassifierStep for McrStep {
    fn eval_model(&self) -> Classifier {
        self.point(self.t)
    }

    fn curve(&self) -> Option<(&'static str, Vec<(f64, Classifier)>)> {
        let points = (0..=10).map(|i| i as f64 / 10.0);
        Some(("t", points.map(|t| (t, self.point(t))).collect()))
    }

    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        self.trainee.save(dir, epochs_done)
    }

    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        self.trainee.restore(dir, state)
    }
}

/// MCR's step, data and plan: the far endpoint is fine-tuned into `out/fine-tuned` first (kept,
/// and reused on resume).
pub(crate) fn prepare(
    config: &McrConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<McrStep>> {
    let device = selected.device.clone();
    let holdout = suspect.defender.labelled(suspect.dir)?;
    let theta2 = nested_fine_tune(
        &config.endpoint(),
        suspect.out,
        suspect.canonical,
        selected,
        suspect.observer,
    )?;
    let ends = Arc::new(Ends::new(suspect.model, &theta2));
    // The bend starts on the straight line: (theta0 + theta2) / 2.
    let (bend, _) = combine(suspect.model, &ends, [0.5, 0.0, 0.5], false);
    let ft = &config.ft;
    let sgd = SgdConfig {
        weight_decay: 0.0,
        ..ft.training.sgd.clone()
    };
    let holdout = Arc::new(holdout);
    let step = McrStep {
        trainee: Trainee::new(bend.train(), Sgd::new(sgd), &device, selected.precision()),
        ends,
        l2: ft.training.sgd.weight_decay,
        t: config.t,
        bn_update: config.bn_update,
        holdout: holdout.clone(),
        eval_batch_size: ft.common.eval_batch_size,
        seed: ft.common.seed,
        device,
    };
    let start = step.eval_model();
    Ok(Prepared {
        step,
        data: holdout,
        plan: LoopPlan {
            schedule: Schedule::CurveTraining {
                epochs: ft.training.epochs,
            },
            ..ft.training.plan(&ft.common, "MCR")
        },
        start,
        reinit: None,
        findings: None,
    })
}

impl Method for McrConfig {
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self {
        McrConfig::paper(suspect, flip)
    }

    fn name(&self) -> &'static str {
        "mcr"
    }

    fn display_name(&self) -> &'static str {
        "MCR"
    }

    fn table_position(&self) -> usize {
        3
    }

    fn common(&self) -> &CommonSettings {
        &self.ft.common
    }

    fn common_mut(&mut self) -> &mut CommonSettings {
        &mut self.ft.common
    }

    fn apply_training(&mut self, flags: &SharedFlags) -> Result<()> {
        self.ft.apply_training(flags)
    }

    fn validate(&self) -> Result<()> {
        McrConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        McrConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
