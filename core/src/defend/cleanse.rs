//! The distillation cleanser (method spec): the frozen teacher, a re-initialised student trained
//! on unlabeled images with the annealed KL loss, SGD with a cosine schedule; resumable, with
//! clean accuracy and ASR against the teacher's attack after every epoch. The final model is the
//! last epoch's.

use super::access::DefenderAccess;
use super::access::DefenderData;
use super::kd::{TemperatureRange, distillation_loss};
use super::method::{Launch, Method};
use super::reinit::{self, InitMode};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, SgdTraining, SharedFlags};
use super::unlabeled::{ImageBatch, UnlabeledImages};
use crate::data::DataSpec;
use crate::device::Selected;
use crate::engine::checkpoint::CheckpointState;
use crate::engine::driver::LoopPlan;
use crate::engine::eval::images_tensor;
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, Trainee, matches};
use crate::model::Classifier;
use crate::optim::sgd::Sgd;
use crate::report::Report;
use crate::{Error, Result};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the defender's unlabeled images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum UnlabeledSource {
    /// The split held out from the teacher's training set (saved with the model).
    Holdout,
    /// The training part of another data set or image folder (labels dropped).
    Data { spec: DataSpec },
}

/// Everything that defines a cleansing run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KdConfig {
    /// The suspect (the teacher), seed, batches (method spec: 256), learning rate (0.01 with
    /// cosine annealing) and evaluation.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// Epochs, schedule, SGD and augmentation: FT's ([`SgdTraining::paper`]).
    #[serde(flatten)]
    pub training: SgdTraining,
    pub unlabeled: UnlabeledSource,
    /// Use only this many of the unlabeled images (a seeded random choice), to measure how the
    /// size of the defender's set matters; `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlabeled_limit: Option<usize>,
    /// Method spec: `T = 1 + 3 (e + 1) / E`, rising to 4 (not written when it is that).
    #[serde(default, skip_serializing_if = "TemperatureRange::is_paper")]
    pub temperature: TemperatureRange,
    pub init: InitMode,
    /// Not in the method spec (off by default): mix the unlabeled images of each batch in pairs
    /// (`augment::mixup`), teacher and student seeing the same mixed images, so that 1,000
    /// images give the student many more distinct inputs to match the teacher on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixup: bool,
}

impl KdConfig {
    /// The method's defaults for the suspect in `teacher`.
    pub fn paper(teacher: PathBuf, flip: bool) -> Self {
        KdConfig {
            common: CommonSettings::new(teacher, SgdTraining::BATCH_SIZE, SgdTraining::LR),
            training: SgdTraining::paper(flip),
            unlabeled: UnlabeledSource::Holdout,
            unlabeled_limit: None,
            temperature: TemperatureRange::default(),
            init: InitMode::Adaptive {
                ratios: reinit::ADAPTIVE_RATIOS,
            },
            mixup: false,
        }
    }

    /// The suspect model's run directory.
    pub fn teacher(&self) -> &Path {
        &self.common.suspect
    }
}

/// The unlabeled images of `config`: all of its source's, or `unlabeled_limit` of them chosen
/// at random with `config.seed`; the teacher's held-out images are read from its run.
pub fn unlabeled_images(config: &KdConfig) -> Result<UnlabeledImages> {
    let holdout =
        || crate::engine::run_files::load_holdout(config.teacher()).map(UnlabeledImages::from_set);
    select_unlabeled(config, holdout)
}

/// [`unlabeled_images`] with the teacher's held-out images given by `holdout` (called only
/// when they are the source).
fn select_unlabeled(
    config: &KdConfig,
    holdout: impl FnOnce() -> Result<UnlabeledImages>,
) -> Result<UnlabeledImages> {
    let set = match &config.unlabeled {
        UnlabeledSource::Holdout => holdout()?,
        UnlabeledSource::Data { spec } => UnlabeledImages::from_set(spec.load()?.train),
    };
    if set.is_empty() {
        return Err(Error::config(
            "unlabeled-data",
            "no unlabeled images (the teacher's run held none out; pass --unlabeled-data)",
        ));
    }
    match config.unlabeled_limit {
        None => Ok(set),
        Some(n) if n == 0 || n > set.len() => Err(Error::config(
            "unlabeled-limit",
            format!(
                "expected 1 to {} (the unlabeled images available), got {n}",
                set.len()
            ),
        )),
        Some(n) => {
            let keep = crate::rng::Rng::from_parts(&[config.common.seed, 0x0071_3173])
                .sample_sorted(set.len(), n);
            Ok(set.subset(&keep))
        }
    }
}

impl KdConfig {
    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        if let Some(reason) = self.temperature.check() {
            return Err(Error::config("temperature", reason));
        }
        self.training.validate()?;
        self.init.validate()
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let mut v = Vec::new();
        match &self.init {
            InitMode::Adaptive { .. } => {}
            InitMode::Uniform { .. } => v.push("init uniform".to_string()),
            InitMode::Single { stage, .. } => v.push(format!("init single:{stage}")),
            InitMode::None => v.push("init none".to_string()),
            InitMode::Fresh => v.push("init fresh".to_string()),
        }
        if let UnlabeledSource::Data { spec } = &self.unlabeled {
            v.push(format!("on {}", spec.kind.name()));
        }
        v.extend(self.training.label_details());
        v
    }
}

/// The cleanser as an engine step: the frozen teacher's softened predictions distilled into the
/// student on a batch of unlabeled images.
pub struct KdStep {
    pub trainee: Trainee,
    /// An evaluation copy.
    pub teacher: Classifier,
    pub temperature: TemperatureRange,
    /// Epochs of the run (the temperature schedule's length).
    pub epochs: usize,
    pub mixup: bool,
    pub seed: u64,
    pub device: Device,
}

impl Step for KdStep {
    type Data = UnlabeledImages;

    fn step(&mut self, b: ImageBatch, at: At) -> StepOutput {
        let n = b.shape[0];
        let mut pixels = b.images;
        if self.mixup {
            let mut rng =
                crate::rng::Rng::from_parts(&[self.seed, at.epoch as u64, at.batch as u64, 0x313C]);
            let [_, c, h, w] = b.shape;
            crate::data::augment::mixup(&mut pixels, c * h * w, &mut rng);
        }
        let temp = self.temperature.at(at.epoch, self.epochs);
        let x = images_tensor(pixels, b.shape, &self.device);
        let t_logits = self.teacher.forward(x.clone());
        let s_logits = self.trainee.forward(x.autodiff());
        let loss = distillation_loss(s_logits.clone(), t_logits.clone().autodiff(), temp);
        let teacher_pred = t_logits.argmax(1).reshape([n]);
        let matches = matches(s_logits.inner(), teacher_pred);
        let value = loss.clone().inner();
        let grads = self.trainee.backward(loss);
        self.trainee.update(at.lr, grads);
        StepOutput {
            loss: value,
            matches: Some(matches),
            images: n,
        }
    }
}

impl ClassifierStep for KdStep {
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

/// The cleanser's step and the student it starts from, as `config` says: `teacher` (its
/// architecture in `teacher_config`) re-initialised layer-wise into a student that SGD trains
/// to match it, with what the re-initialisation changed. The command line and the browser both
/// start a cleanse here.
pub fn student_step(
    config: &KdConfig,
    teacher: &Classifier,
    teacher_config: &crate::model::ModelConfig,
    device: &Device,
    precision: crate::precision::Precision,
) -> (KdStep, Classifier, crate::report::findings::Realised) {
    let (student, realised) = reinit::student(
        teacher,
        teacher_config,
        &config.init,
        config.common.seed,
        device,
    );
    let step = KdStep {
        trainee: Trainee::new(
            student.clone().train(),
            Sgd::new(config.training.sgd.clone()),
            device,
            precision,
        ),
        teacher: teacher.clone(),
        temperature: config.temperature,
        epochs: config.training.epochs,
        mixup: config.mixup,
        seed: config.common.seed,
        device: device.clone(),
    };
    (step, student, realised)
}

/// The engine's plan of a cleanse as `config` says.
pub fn loop_plan(config: &KdConfig) -> LoopPlan {
    config.training.plan(&config.common, "cleansing")
}

/// The cleanser's step, data and plan: a student re-initialised from the teacher, distilled on
/// the defender's images (with `epochs == 0` the run writes the re-initialised student, undistilled).
pub(crate) fn prepare(
    config: &KdConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<KdStep>> {
    let DefenderData::Images(holdout) = suspect.defender else {
        unreachable!("the cleanser is given images without labels")
    };
    let images = Arc::new(select_unlabeled(config, || Ok(holdout))?);
    let (step, student, realised) = student_step(
        config,
        suspect.model,
        suspect.config,
        &selected.device,
        selected.precision(),
    );
    Ok(Prepared {
        step,
        data: images,
        plan: loop_plan(config),
        start: student,
        reinit: Some(realised),
        findings: None,
    })
}

impl Method for KdConfig {
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self {
        KdConfig::paper(suspect, flip)
    }

    fn name(&self) -> &'static str {
        "kd"
    }

    fn display_name(&self) -> &'static str {
        "KD"
    }

    fn table_position(&self) -> usize {
        7
    }

    fn access(&self) -> DefenderAccess {
        DefenderAccess::Images
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonSettings {
        &mut self.common
    }

    fn apply_training(&mut self, flags: &SharedFlags) -> Result<()> {
        flags.apply_to_training(&mut self.training);
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        KdConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        KdConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
