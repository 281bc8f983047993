//! NAD, Neural Attention Distillation (Li et al. 2021), as the method spec has it: a teacher
//! made by fine-tuning the suspect on the defender's labelled data for 10 epochs (a nested
//! `defend ft` run), then the suspect itself trained as the student for 100 epochs with
//! cross-entropy plus the attention-map distance to the teacher at the outputs of stages 2, 3
//! and 4, weighted 500, 1000, 1000. The last epoch's student is the result (the reference code
//! keeps the epoch of best test accuracy; cleanse never reads the test set to choose).

use super::ft::{FtConfig, nested_fine_tune};
use super::method::{Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, SharedFlags};
use crate::data::ImageSet;
use crate::data::batcher::HostBatch;
use crate::device::Selected;
use crate::engine::checkpoint::CheckpointState;
use crate::engine::eval::{images_tensor, labels_tensor};
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, Trainee, matches};
use crate::model::Classifier;
use crate::model::loss::cross_entropy;
use crate::optim::sgd::Sgd;
use crate::report::Report;
use crate::{Error, Result};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The method spec's weights of the attention terms at stages 2, 3 and 4.
pub const PAPER_BETAS: [f64; 3] = [500.0, 1000.0, 1000.0];

/// Everything that defines a NAD run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NadConfig {
    /// The suspect and the student's training (method spec: FT's settings, 100 epochs).
    pub ft: FtConfig,
    /// Epochs of the teacher's fine-tuning with the same settings (method spec: 10).
    pub teacher_epochs: usize,
    /// Weights of the attention terms at the outputs of stages 2, 3, 4 (method spec: 500,
    /// 1000, 1000).
    pub betas: [f64; 3],
    /// The attention map's power `p` (method spec: 2).
    pub p: f64,
}

impl NadConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: std::path::PathBuf, flip: bool) -> Self {
        NadConfig {
            ft: FtConfig::paper(suspect, flip),
            teacher_epochs: 10,
            betas: PAPER_BETAS,
            p: 2.0,
        }
    }

    /// The teacher's fine-tuning: the student's settings for `teacher_epochs`.
    pub fn teacher(&self) -> FtConfig {
        let mut ft = self.ft.clone();
        ft.training.epochs = self.teacher_epochs;
        ft
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.ft.validate()?;
        if self.teacher_epochs == 0 {
            return Err(Error::config(
                "teacher-epochs",
                "must be positive (the teacher is the suspect fine-tuned)",
            ));
        }
        if let Some(b) = self.betas.iter().find(|b| !(b.is_finite() && **b >= 0.0)) {
            return Err(Error::config(
                "betas",
                format!(
                    "expected three finite weights >= 0; got {b} in {:?}",
                    self.betas
                ),
            ));
        }
        if !(self.p.is_finite() && self.p > 0.0 && self.p <= 16.0) {
            return Err(Error::config(
                "p",
                format!("expected a power in (0, 16]; got {}", self.p),
            ));
        }
        Ok(())
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let paper = NadConfig::paper(Default::default(), true);
        let mut v = self.ft.label_details();
        if self.teacher_epochs != paper.teacher_epochs {
            v.push(format!("teacher {} ep", self.teacher_epochs));
        }
        if self.betas != paper.betas {
            let b: Vec<String> = self.betas.iter().map(|b| b.to_string()).collect();
            v.push(format!("beta {}", b.join(",")));
        }
        if self.p != paper.p {
            v.push(format!("p {}", self.p));
        }
        v
    }
}

/// NAD's attention map of a feature map: `sum_c |f_c|^p` over channels, flattened per image and
/// divided by its L2 norm plus 1e-6.
///
/// The norm is taken as `sqrt(sum a^2 + 1e-12)`: the same value to within 1e-12 of the sum,
/// and a finite gradient for an image whose map is all zero (the plain square root's is not).
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, H * W]`
pub fn attention_map(f: Tensor<4>, p: f64) -> Tensor<2> {
    let [n, _, h, w] = f.dims();
    let a = f.abs();
    let a = if p == 2.0 {
        a.clone() * a
    } else {
        a.powf_scalar(p)
    };
    let a = a.sum_dim(1).reshape([n, h * w]);
    let norm = (a.clone().powf_scalar(2.0).sum_dim(1) + 1e-12).sqrt();
    a / (norm + 1e-6)
}

/// The mean squared difference of the two feature maps' attention maps (PyTorch's `mse_loss`
/// with its mean over every element).
pub fn attention_loss(student: Tensor<4>, teacher: Tensor<4>, p: f64) -> Tensor<1> {
    (attention_map(student, p) - attention_map(teacher, p))
        .powf_scalar(2.0)
        .mean()
}

/// NAD as an engine step: cross-entropy on the defender's labelled batch plus the weighted
/// attention distances to the frozen teacher (evaluation mode) at stages 2, 3, 4.
pub struct NadStep {
    pub trainee: Trainee,
    /// An evaluation copy.
    pub teacher: Classifier,
    pub betas: [f64; 3],
    pub p: f64,
    pub device: Device,
}

impl Step for NadStep {
    type Data = ImageSet;

    fn step(&mut self, mut b: HostBatch, at: At) -> StepOutput {
        let ad = self.device.clone().autodiff();
        let images = b.labels.len();
        let x = images_tensor(std::mem::take(&mut b.images), b.shape, &self.device);
        let y = labels_tensor(b.labels.clone(), &ad);
        let teacher = self.teacher.features(x.clone());
        let student = self.trainee.autocast(|m| m.features(x.autodiff()));
        let mut loss = cross_entropy(student.logits.clone(), y.clone());
        for (i, beta) in self.betas.iter().enumerate() {
            if *beta == 0.0 {
                continue;
            }
            let (s, t) = (
                student.stages[i + 1].clone(),
                teacher.stages[i + 1].clone().autodiff(),
            );
            loss = loss + attention_loss(s, t, self.p) * *beta;
        }
        let matches = matches(student.logits.inner(), y.inner());
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

impl ClassifierStep for NadStep {
    fn eval_model(&self) -> Classifier {
        self.trainee.valid()
    }

    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        self.trainee.save(dir, epochs_done)
    }

    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        self.trainee.restore(dir, state)
    }
}

/// NAD's step, data and plan: the teacher is fine-tuned into `out/fine-tuned` first (kept, and
/// reused on resume).
pub(crate) fn prepare(
    config: &NadConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<NadStep>> {
    let device = selected.device.clone();
    let holdout = suspect.defender.labelled(suspect.dir)?;
    let teacher = nested_fine_tune(
        &config.teacher(),
        suspect.out,
        suspect.canonical,
        selected,
        suspect.observer,
    )?;
    let ft = &config.ft;
    let step = NadStep {
        trainee: Trainee::new(
            suspect.model.clone().train(),
            Sgd::new(ft.training.sgd.clone()),
            &device,
            selected.precision(),
        ),
        teacher,
        betas: config.betas,
        p: config.p,
        device,
    };
    Ok(Prepared {
        step,
        data: Arc::new(holdout),
        plan: ft.training.plan(&ft.common, "NAD"),
        start: suspect.model.clone(),
        reinit: None,
        findings: None,
    })
}

impl Method for NadConfig {
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self {
        NadConfig::paper(suspect, flip)
    }

    fn name(&self) -> &'static str {
        "nad"
    }

    fn display_name(&self) -> &'static str {
        "NAD"
    }

    fn table_position(&self) -> usize {
        5
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
        NadConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        NadConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
