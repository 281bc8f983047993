//! FT: fine-tuning the suspect with cross-entropy on the defender's labelled held-out split
//! (method spec: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine over the run, 100 epochs,
//! batch 256, crop + flip; the last epoch's model is the result).

use super::method::{Common, Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use crate::data::augment::Augment;
use crate::device::Selected;
use crate::engine::driver::LoopPlan;
use crate::engine::{Observer, Trainee};
use crate::optim::schedule::{AUTHORS_COSINE_T_MAX, check_cosine_t_max};
use crate::optim::sgd::{Sgd, SgdConfig};
use crate::report::Report;
use crate::train::run::CrossEntropyStep;
use crate::{Error, Result};
use burn::module::Module;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything that defines a fine-tuning run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FtConfig {
    /// The suspect model's run directory.
    pub suspect: PathBuf,
    /// Method spec: 100.
    pub epochs: usize,
    /// Method spec: 256.
    pub batch_size: usize,
    /// Method spec: 0.01 with cosine annealing.
    pub lr: f64,
    /// The cosine schedule's horizon in epochs: the authors' 100 whatever `epochs` is
    /// ([`AUTHORS_COSINE_T_MAX`]); `None` (runs made before the setting): over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_t_max: Option<usize>,
    /// Method spec: momentum 0.9, weight decay 5e-4.
    pub sgd: SgdConfig,
    pub seed: u64,
    /// Method spec: crop + flip (no flip on data sets where it changes the meaning).
    pub augment: Augment,
    pub eval_batch_size: usize,
    /// Evaluate after every Nth epoch (and the last); the model trained does not depend on it.
    #[serde(default = "crate::engine::driver::every_epoch")]
    pub eval_every: usize,
}

impl FtConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: PathBuf, flip: bool) -> Self {
        FtConfig {
            suspect,
            epochs: 100,
            batch_size: 256,
            lr: 0.01,
            cosine_t_max: Some(AUTHORS_COSINE_T_MAX),
            sgd: SgdConfig::default(),
            seed: 0,
            augment: Augment::standard(flip),
            eval_batch_size: 256,
            eval_every: 1,
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        crate::engine::driver::check_batch_sizes(self.batch_size, self.eval_batch_size)?;
        crate::engine::driver::check_eval_every(self.eval_every)?;
        crate::optim::sgd::check_lr(self.lr)?;
        check_cosine_t_max(self.cosine_t_max)?;
        self.sgd.validate()?;
        self.augment.validate()
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let mut d = match self.epochs {
            100 => Vec::new(),
            e => vec![format!("{e} ep")],
        };
        d.extend(cosine_label(self.cosine_t_max));
        d
    }
}

/// A table label's note on a cosine horizon other than the authors' (none for runs made before
/// the setting existed, which annealed over each fine-tuning's own length).
pub(crate) fn cosine_label(t_max: Option<usize>) -> Option<String> {
    match t_max {
        Some(t) if t != AUTHORS_COSINE_T_MAX => Some(format!("T_max {t}")),
        _ => None,
    }
}

/// Fine-tuning's step, data and plan: the suspect trained with cross-entropy on the defender's
/// labelled images.
pub(crate) fn prepare(
    config: &FtConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<CrossEntropyStep<'static>>> {
    let device = selected.device.clone();
    let holdout = suspect.defender.labelled(suspect.dir)?;
    let step = CrossEntropyStep {
        trainee: Trainee::new(
            suspect.model.clone().train(),
            Sgd::new(config.sgd.clone()),
            &device,
        ),
        hooks: None,
        seed: config.seed,
        device,
    };
    Ok(Prepared {
        step,
        data: Arc::new(holdout),
        plan: LoopPlan::cosine(
            (config.epochs, config.batch_size, config.lr),
            config.cosine_t_max,
            config.seed,
            config.augment,
            "fine-tuning",
        ),
        start: suspect.model.clone(),
        reinit: None,
        findings: None,
    })
}

/// The folder, inside a defense's run directory, of the suspect fine-tuned as a first step
/// (NAD's teacher, MCR's far endpoint): an ordinary `defend ft` run of its own, with its report.
pub const FINE_TUNED_DIR: &str = "fine-tuned";

/// The suspect fine-tuned by `config` into `out/fine-tuned`, as an evaluation copy: trained
/// there unless finished, continued when a stop left it part-way (its own checkpoints), reused
/// as it is when finished.
pub(crate) fn nested_fine_tune(
    config: &FtConfig,
    out: &Path,
    canonical: crate::engine::run_dir::Canonical,
    selected: &Selected,
    observer: &mut dyn Observer,
) -> Result<crate::model::Classifier> {
    use crate::engine::files;
    let dir = out.join(FINE_TUNED_DIR);
    let in_dir = |e: Error| Error::artifact(&dir, format!("the fine-tuned suspect: {e}"));
    let finished = crate::io::read_json::<Report>(&dir.join(files::REPORT))
        .is_ok_and(|r| r.status == crate::report::RunStatus::Complete);
    if !finished {
        let resume = crate::engine::checkpoint::resumable(&dir.join(files::CHECKPOINT_DIR));
        let tuned = Method::run(
            config,
            Launch {
                config: super::method::tagged(config.name(), config),
                canonical,
                asr: &super::suspect::AsrSource::Saved,
                out: &dir,
                resume,
                selected,
                observer,
            },
        );
        observer.finish();
        tuned.map_err(in_dir)?;
    }
    Ok(crate::train::run::load_run_model(&dir, &selected.device)
        .map_err(in_dir)?
        .model)
}

impl Method for FtConfig {
    fn name(&self) -> &'static str {
        "ft"
    }

    fn display_name(&self) -> &'static str {
        "FT"
    }

    fn table_position(&self) -> usize {
        1
    }

    fn common(&self) -> Common<'_> {
        Common {
            suspect: &self.suspect,
            seed: self.seed,
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size,
            eval_every: self.eval_every,
        }
    }

    fn validate(&self) -> Result<()> {
        FtConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        FtConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
