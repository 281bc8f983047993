//! FT: fine-tuning the suspect with cross-entropy on the defender's labelled held-out split
//! (method spec: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine over the run, 100 epochs,
//! batch 256, crop + flip; the last epoch's model is the result).

use super::method::{Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, SgdTraining, SharedFlags};
use crate::device::Selected;
use crate::engine::{Observer, Trainee};
use crate::optim::sgd::Sgd;
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
    /// The suspect, seed, batches (method spec: 256), learning rate (0.01 with cosine
    /// annealing) and evaluation.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// Epochs, schedule, SGD and augmentation: [`SgdTraining::paper`].
    #[serde(flatten)]
    pub training: SgdTraining,
}

impl FtConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: PathBuf, flip: bool) -> Self {
        FtConfig {
            common: CommonSettings::new(suspect, SgdTraining::BATCH_SIZE, SgdTraining::LR),
            training: SgdTraining::paper(flip),
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        self.training.validate()
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        self.training.label_details()
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
            Sgd::new(config.training.sgd.clone()),
            &device,
            selected.precision(),
        ),
        hooks: None,
        seed: config.common.seed,
        device,
    };
    Ok(Prepared {
        step,
        data: Arc::new(holdout),
        plan: config.training.plan(&config.common, "fine-tuning"),
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
    Ok(
        crate::engine::run_files::load_run_model(&dir, &selected.device)
            .map_err(in_dir)?
            .model,
    )
}

impl Method for FtConfig {
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self {
        FtConfig::paper(suspect, flip)
    }

    fn name(&self) -> &'static str {
        "ft"
    }

    fn display_name(&self) -> &'static str {
        "FT"
    }

    fn table_position(&self) -> usize {
        1
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
