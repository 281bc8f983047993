//! The run every defense shares: the run directory, the suspect loaded with its attack, the
//! suspect's and the starting model's metrics, the engine's epochs, and the defended model saved
//! with what it is evaluated against. A method supplies only its [`Prepared`] step.

use super::access::{DefenderAccess, DefenderData};
use super::method::{Launch, Method};
use super::suspect::{AsrSource, Suspect};
use super::unlabeled::UnlabeledImages;
use crate::Result;
use crate::data::batcher::Batches;
use crate::engine::driver::{self, Evaluation, LoopPlan, run_epochs};
use crate::engine::run_dir::Canonical;
use crate::engine::step::ClassifierStep;
use crate::engine::{Observer, RunDir, files};
use crate::io::write_json_atomic;
use crate::model::{Classifier, ModelConfig};
use crate::report::Findings;
use crate::report::findings::Realised;
use crate::report::{
    Curve, CurvePoint, DataSummary, DefenseRecord, FinalMetrics, Report, RunStatus, SCHEMA_VERSION,
};
use std::path::Path;
use std::sync::Arc;

/// What a method sees of the suspect: its model and the defender's data its
/// [`super::DefenderAccess`] allows. The test images stay with the engine's evaluation.
pub(crate) struct SuspectView<'a> {
    /// The suspect's run directory.
    pub dir: &'a Path,
    pub config: &'a ModelConfig,
    /// An evaluation copy.
    pub model: &'a Classifier,
    pub defender: DefenderData,
    /// The defense's run directory (taken by this run): where a method keeps what its
    /// preparation makes (a nested run, a search's result) so that a resumed run reuses it.
    pub out: &'a Path,
    /// Progress of what the preparation runs (a nested run).
    pub observer: &'a mut dyn Observer,
    /// How this run's configuration is compared on resume, for a nested defense run.
    pub canonical: Canonical,
}

/// What a method builds from the loaded suspect.
pub(crate) struct Prepared<S: ClassifierStep> {
    pub step: S,
    /// The defender's data the step trains on.
    pub data: Arc<S::Data>,
    pub plan: LoopPlan,
    /// The model before the first epoch (the cleanser's re-initialised student; the suspect for
    /// fine-tuning); with no epochs it is the result.
    pub start: Classifier,
    /// The cleanser's realised re-initialisation.
    pub reinit: Option<Realised>,
    /// What the method found on the defender's data before training (its report's record).
    pub findings: Option<Findings>,
}

/// Runs `method` as `launch` says: `prepare` builds the method's step from what it may see of
/// the suspect; the engine measures clean accuracy and the ASR against the suspect's attack
/// after every epoch.
pub(crate) fn run_defense<S: ClassifierStep>(
    method: &dyn Method,
    launch: Launch<'_>,
    prepare: impl FnOnce(SuspectView) -> Result<Prepared<S>>,
) -> Result<Report> {
    let Launch {
        config: config_json,
        canonical,
        asr,
        out,
        resume,
        selected,
        observer,
    } = launch;
    method.validate()?;
    let common = method.common();
    let eval_batch_size = common.eval_batch_size;
    // What the ASR is measured against is part of the run: a resume must measure the same.
    let run_config = match asr {
        AsrSource::Saved => config_json.clone(),
        other => serde_json::json!({ "defense": config_json, "asr": other }),
    };
    let mut run = RunDir::open(out, run_config, canonical, common.seed, resume)?;
    let device = selected.device.clone();
    let suspect = Suspect::load(&common.suspect, None, &device)?.measured_by(asr)?;
    let eval = Evaluation {
        test: suspect.test.clone(),
        batch_size: eval_batch_size,
        device: device.clone(),
        meter: suspect.asr_meter(eval_batch_size, &device),
        every: common.eval_every,
    };
    let asr_of = |m: &Classifier| eval.meter.as_ref().map(|a| a.asr(m));
    let holdout = suspect.holdout()?;
    let holdout_images = holdout.len();
    if selected.info.backend == crate::device::Backend::Flex {
        // The suspect (a teacher or reference), the trained model, its gradients, the
        // optimiser's state and a method's masks or perturbations: refused before any work.
        let batch = common.batch_size.min(holdout_images);
        crate::memory::Need::training(&suspect.config, suspect.test.height, batch, 5)
            .check(selected.info.cpu_threads, "--batch-size")?;
    }
    let defender = match method.access() {
        DefenderAccess::Images => DefenderData::Images(UnlabeledImages::from_set(holdout)),
        DefenderAccess::Labelled => DefenderData::Labelled(holdout),
    };
    let Prepared {
        mut step,
        data,
        plan,
        start,
        reinit,
        findings,
    } = prepare(SuspectView {
        dir: &suspect.dir,
        config: &suspect.config,
        model: &suspect.model,
        defender,
        out,
        observer: &mut *observer,
        canonical,
    })?;
    write_json_atomic(&out.join(files::MODEL_CONFIG), &suspect.config)?;
    let suspect_clean_acc = eval.clean_accuracy(&suspect.model);
    let suspect_asr = asr_of(&suspect.model);
    let start_metrics = FinalMetrics {
        clean_acc: eval.clean_accuracy(&start),
        asr: asr_of(&start),
    };
    let record = DefenseRecord {
        config: config_json.clone(),
        suspect: common.suspect.clone(),
        // Distinct images: a defense may use fewer (KD's `--unlabeled-limit`) or cycle through
        // the set several times (ANP's rounds), which the length of its data would count.
        defender_images: data.len().min(holdout_images),
        suspect_clean_acc,
        suspect_asr,
        start_clean_acc: Some(start_metrics.clean_acc),
        start_asr: start_metrics.asr,
        reinit,
        findings,
        curve: None,
    };
    driver::restore(&mut step, &run)?;
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        kind: "defense".into(),
        status: RunStatus::Running,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config: config_json,
        attack: suspect
            .attack
            .as_ref()
            .and_then(|a| serde_json::to_value(&a.config).ok()),
        defense: Some(record),
        device: selected.info.clone(),
        data: DataSummary {
            num_classes: suspect.config.num_classes,
            train_size: data.len(),
            holdout_size: 0,
            test_size: suspect.test.len(),
        },
        epochs: run.history().to_vec(),
        final_metrics: None,
        model_file: None,
        started_unix: run.started_unix(),
        finished_unix: None,
    };
    run_epochs(
        &plan,
        &data,
        &mut step,
        &eval,
        &mut run,
        &mut report,
        observer,
    )?;
    if let (Some(found), Some(d)) = (step.findings(), report.defense.as_mut()) {
        d.findings = Some(found);
    }
    if let Some((parameter, models)) = step.curve() {
        let points = models
            .iter()
            .map(|(at, m)| CurvePoint {
                at: *at,
                clean_acc: eval.clean_accuracy(m),
                asr: asr_of(m),
            })
            .collect();
        if let Some(d) = report.defense.as_mut() {
            d.curve = Some(Curve {
                parameter: parameter.into(),
                points,
            });
        }
    }
    // The defended model evaluates against the same data and attack as the suspect.
    suspect.save_evaluation_files(out)?;
    let last = match run.history().is_empty() {
        true => Some(start_metrics),
        false => None,
    };
    driver::finish(&mut run, &mut report, &step.eval_model(), last)?;
    Ok(report)
}
