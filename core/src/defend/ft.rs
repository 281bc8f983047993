//! FT: fine-tuning the suspect with cross-entropy on the defender's labelled held-out split
//! (method spec: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine over the run, 100 epochs,
//! batch 256, crop + flip; the last epoch's model is the result).

use super::defense::{DefenderData, Defense};
use super::run::{Prepared, run_defense};
use crate::data::augment::Augment;
use crate::device::Selected;
use crate::engine::driver::LoopPlan;
use crate::engine::{Observer, Trainee};
use crate::report::Report;
use crate::train::run::CrossEntropyStep;
use crate::train::sgd::{Sgd, SgdConfig};
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
    /// Method spec: 0.01 with cosine annealing over the run.
    pub lr: f64,
    /// Method spec: momentum 0.9, weight decay 5e-4.
    pub sgd: SgdConfig,
    pub seed: u64,
    /// Method spec: crop + flip (no flip on data sets where it changes the meaning).
    pub augment: Augment,
    pub eval_batch_size: usize,
}

impl FtConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: PathBuf, flip: bool) -> Self {
        FtConfig {
            suspect,
            epochs: 100,
            batch_size: 256,
            lr: 0.01,
            sgd: SgdConfig::default(),
            seed: 0,
            augment: Augment::standard(flip),
            eval_batch_size: 256,
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(Error::config(
                "batch-size",
                format!("expected at least 2, got {}", self.batch_size),
            ));
        }
        if self.eval_batch_size == 0 {
            return Err(Error::config("eval-batch-size", "must be positive"));
        }
        crate::train::sgd::check_lr(self.lr)?;
        self.sgd.validate()?;
        self.augment.validate()
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        match self.epochs {
            100 => Vec::new(),
            e => vec![format!("{e} ep")],
        }
    }
}

/// Fine-tunes the suspect in `config.suspect` into `out` (new or empty unless `resume`).
pub fn fine_tune(
    config: &FtConfig,
    out: &Path,
    resume: bool,
    selected: &Selected,
    observer: &mut dyn Observer,
) -> Result<Report> {
    let defense = Defense::Ft(config.clone());
    run_defense(
        &defense,
        config.eval_batch_size,
        out,
        resume,
        selected,
        observer,
        |suspect| {
            let device = selected.device.clone();
            let DefenderData::Labelled(holdout) = suspect.defender else {
                unreachable!("fine-tuning is given labelled data")
            };
            check_labelled(&holdout, suspect.dir)?;
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
                    config.seed,
                    config.augment,
                    "fine-tuning",
                ),
                start: suspect.model.clone(),
                reinit: None,
                findings: None,
            })
        },
    )
}

/// The error for a suspect whose run held out no labelled images (the data of every defense
/// that trains with labels).
pub(crate) fn check_labelled(holdout: &crate::data::ImageSet, suspect: &Path) -> Result<()> {
    if holdout.is_empty() {
        return Err(Error::config(
            "model",
            format!(
                "{}: the model's run held out no labelled images for the defender \
                 (train it with --holdout above 0)",
                suspect.display()
            ),
        ));
    }
    Ok(())
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
    selected: &Selected,
    observer: &mut dyn Observer,
) -> Result<crate::model::Classifier> {
    use crate::engine::files;
    let dir = out.join(FINE_TUNED_DIR);
    let in_dir = |e: Error| Error::artifact(&dir, format!("the fine-tuned suspect: {e}"));
    let finished = crate::io::read_json::<Report>(&dir.join(files::REPORT))
        .is_ok_and(|r| r.status == crate::report::RunStatus::Complete);
    if !finished {
        let resume = crate::train::checkpoint::resumable(&dir.join(files::CHECKPOINT_DIR));
        let tuned = fine_tune(config, &dir, resume, selected, observer);
        observer.finish();
        tuned.map_err(in_dir)?;
    }
    Ok(crate::train::run::load_run_model(&dir, &selected.device)
        .map_err(in_dir)?
        .model)
}
