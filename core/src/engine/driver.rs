//! The native driver of the engine: runs a [`Step`] epoch by epoch, blocking on the device's
//! results, with per-epoch clean accuracy and ASR, progress events, a checkpoint after every
//! epoch and the report rewritten after each one.

use super::observer::Observer;
use super::run_dir::{RunDir, files};
use super::step::{At, ClassifierStep, Step};
use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::{Batches, chunk_order, epoch_order, stream};
use crate::engine::checkpoint;
use crate::engine::eval::accuracy;
use crate::engine::meter::AsrMeter;
use crate::model::Classifier;
use crate::optim::schedule::Schedule;
use crate::report::{EpochRecord, FinalMetrics, Report, RunStatus, now_unix};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

/// The batch-size settings of a run: a training batch of at least 2 (batch norms need two
/// images), a positive evaluation batch.
pub fn check_batch_sizes(batch_size: usize, eval_batch_size: usize) -> crate::Result<()> {
    if batch_size < 2 {
        return Err(crate::Error::config(
            "batch-size",
            format!("expected at least 2, got {batch_size}"),
        ));
    }
    if eval_batch_size == 0 {
        return Err(crate::Error::config("eval-batch-size", "must be positive"));
    }
    Ok(())
}

/// The evaluation cadence of a run (`--eval-every`): every Nth epoch, N at least 1.
pub fn check_eval_every(every: usize) -> crate::Result<()> {
    match every {
        0 => Err(crate::Error::config(
            "eval-every",
            "expected at least 1 (evaluate every epoch)",
        )),
        _ => Ok(()),
    }
}

/// The default evaluation cadence: every epoch (configurations written before the setting).
pub fn every_epoch() -> usize {
    1
}

/// How a loop walks its data: the settings every method's loop has.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopPlan {
    pub epochs: usize,
    pub batch_size: usize,
    /// Base learning rate, scaled per epoch by `schedule`.
    pub lr: f64,
    pub schedule: Schedule,
    /// Seeds the batch order and the augmentation.
    pub seed: u64,
    pub augment: Augment,
    /// At most this many batches per epoch (the browser demo's short epochs); `None`: all.
    pub max_batches: Option<usize>,
    /// What the loop does, for messages ("training", "cleansing").
    pub what: &'static str,
}

impl LoopPlan {
    /// A plan of `epochs` with the learning rate annealed by a cosine over `t_max` epochs (over
    /// the run when `None`), the schedule of the cleanser and of the fine-tuning defenses.
    pub fn cosine(
        (epochs, batch_size, lr): (usize, usize, f64),
        t_max: Option<usize>,
        seed: u64,
        augment: Augment,
        what: &'static str,
    ) -> Self {
        LoopPlan {
            epochs,
            batch_size,
            lr,
            schedule: Schedule::cosine_horizon(epochs, t_max),
            seed,
            augment,
            max_batches: None,
            what,
        }
    }

    /// The learning rate of 0-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.schedule.lr(self.lr, epoch)
    }

    /// The batches of `epoch` over `n` items: a seeded permutation cut into `batch_size` chunks.
    pub fn chunks(&self, n: usize, epoch: usize) -> Vec<Vec<usize>> {
        let mut chunks = chunk_order(&epoch_order(n, self.seed, epoch as u64), self.batch_size);
        if let Some(m) = self.max_batches {
            chunks.truncate(m.max(1));
        }
        chunks
    }

    /// Batches per epoch over `n` items.
    pub fn batches_per_epoch(&self, n: usize) -> usize {
        let all = chunk_order(&(0..n).collect::<Vec<_>>(), self.batch_size).len();
        self.max_batches.map_or(all, |m| all.min(m.max(1)))
    }

    /// The error for a loss that is not finite.
    pub fn diverged(&self, loss: f64, epoch: usize, batch: usize) -> Error {
        Error::config(
            "lr",
            format!(
                "{} diverged: loss is {loss} at epoch {} batch {}; lower the learning rate",
                self.what,
                epoch + 1,
                batch + 1
            ),
        )
    }
}

/// Running totals of one epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpochTotals {
    pub loss_sum: f64,
    pub matches: usize,
    pub seen: usize,
}

impl EpochTotals {
    /// Adds a batch of `images` with mean loss `loss` and `matches` matching predictions.
    pub fn add(&mut self, loss: f64, matches: usize, images: usize) {
        self.loss_sum += loss * images as f64;
        self.matches += matches;
        self.seen += images;
    }

    /// Counts a finished batch whose loss and matches were read back (what both drivers do
    /// after every step): an error when the loss is not finite.
    pub fn count(
        &mut self,
        plan: &LoopPlan,
        at: At,
        (loss, matches, images): (f64, usize, usize),
    ) -> Result<()> {
        if !loss.is_finite() {
            return Err(plan.diverged(loss, at.epoch, at.batch));
        }
        self.add(loss, matches, images);
        Ok(())
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    pub fn match_rate(&self) -> f64 {
        self.matches as f64 / self.seen.max(1) as f64
    }
}

/// The test images a run is measured on after every epoch (never shown to a step).
#[derive(Clone)]
pub struct Evaluation {
    pub test: Arc<ImageSet>,
    pub batch_size: usize,
    pub device: burn::prelude::Device,
    /// The ASR of a fixed trigger (a defense against a suspect's attack); without it, the
    /// step's own ([`ClassifierStep::asr_meter`], an attack's trigger as it trains).
    pub meter: Option<AsrMeter>,
    /// Evaluate after every `every`-th epoch and after the last (1: every epoch). Evaluation
    /// reads the model only, so the trained bits do not depend on it.
    pub every: usize,
}

impl Evaluation {
    /// Clean accuracy of `model` (an evaluation copy).
    pub fn clean_accuracy(&self, model: &Classifier) -> f64 {
        accuracy(model, &self.test, self.batch_size, &self.device)
    }

    /// Whether 0-based `epoch` of `epochs` is measured: every `every`-th and the last.
    pub fn measures(&self, epoch: usize, epochs: usize) -> bool {
        (epoch + 1).is_multiple_of(self.every.max(1)) || epoch + 1 == epochs
    }
}

/// What [`run_batches`] reports.
pub enum Event<'a> {
    /// A batch finished: 0-based epoch and batch, the epoch's totals so far, seconds since the
    /// epoch started.
    Batch {
        epoch: usize,
        batch: usize,
        totals: &'a EpochTotals,
        seconds: f64,
    },
    /// An epoch's batches finished (nothing evaluated yet): its totals and training seconds.
    Epoch {
        epoch: usize,
        lr: f64,
        totals: &'a EpochTotals,
        seconds: f64,
    },
}

/// Runs `step` over the batches of epochs `first..plan.epochs`, reading each batch's loss back
/// (an error when it is not finite) and telling `on` about every batch and every epoch; `on` may
/// stop the run with an error.
pub fn run_batches<S: Step>(
    plan: &LoopPlan,
    data: &Arc<S::Data>,
    step: &mut S,
    first: usize,
    on: &mut dyn FnMut(&mut S, Event) -> Result<()>,
) -> Result<()> {
    let n = data.len();
    for epoch in first..plan.epochs {
        let lr = plan.lr_at(epoch);
        let t0 = Instant::now();
        let mut totals = EpochTotals::default();
        let batches = stream(
            data.clone(),
            plan.chunks(n, epoch),
            plan.augment,
            plan.seed,
            epoch as u64,
            2,
        );
        for (batch, b) in batches.into_iter().enumerate() {
            let at = At { epoch, batch, lr };
            let out = step.step(b, at);
            let loss = out.loss.into_scalar::<f32>() as f64;
            let matches = out.matches.map_or(0, |m| m.into_scalar::<i64>() as usize);
            totals.count(plan, at, (loss, matches, out.images))?;
            let seconds = t0.elapsed().as_secs_f64();
            on(
                step,
                Event::Batch {
                    epoch,
                    batch,
                    totals: &totals,
                    seconds,
                },
            )?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        on(
            step,
            Event::Epoch {
                epoch,
                lr,
                totals: &totals,
                seconds,
            },
        )?;
    }
    Ok(())
}

/// Runs a classifier's `step` from the epoch after `run`'s last checkpoint to `plan.epochs`,
/// checkpointing and rewriting `report` after every epoch and evaluating after the epochs
/// `eval` measures (every epoch unless `eval.every` says otherwise; always the last).
pub fn run_epochs<S: ClassifierStep>(
    plan: &LoopPlan,
    data: &Arc<S::Data>,
    step: &mut S,
    eval: &Evaluation,
    run: &mut RunDir,
    report: &mut Report,
    observer: &mut dyn Observer,
) -> Result<()> {
    observer.start(
        run.epochs_done(),
        plan.epochs,
        plan.batches_per_epoch(data.len()),
    );
    let first = run.epochs_done();
    run_batches(plan, data, step, first, &mut |step, event| match event {
        Event::Batch {
            epoch,
            batch,
            totals,
            seconds,
        } => {
            observer.batch(
                epoch,
                batch,
                totals.mean_loss(),
                totals.match_rate(),
                totals.seen as f64 / seconds.max(1e-9),
            );
            Ok(())
        }
        Event::Epoch {
            epoch,
            lr,
            totals,
            seconds,
        } => {
            let t1 = Instant::now();
            let (clean_acc, asr) = match eval.measures(epoch, plan.epochs) {
                true => {
                    let model = step.eval_model();
                    let asr = eval
                        .meter
                        .clone()
                        .or_else(|| step.asr_meter())
                        .map(|m| m.asr(&model));
                    (Some(eval.clean_accuracy(&model)), asr)
                }
                false => (None, None),
            };
            let eval_secs = t1.elapsed().as_secs_f64();
            let record = EpochRecord {
                epoch: epoch + 1,
                lr,
                loss: totals.mean_loss(),
                train_acc: totals.match_rate(),
                clean_acc,
                seconds: seconds + eval_secs,
                eval_seconds: eval_secs,
                images_per_sec: totals.seen as f64 / seconds.max(1e-9),
                asr,
            };
            let dir = run.checkpoint_dir();
            crate::io::create_dir_all(&dir)?;
            let files = step.save(&dir, epoch + 1)?;
            run.checkpoint(record.clone(), files)?;
            report.epochs = run.history().to_vec();
            run.write_report(report)?;
            observer.epoch(&record);
            Ok(())
        }
    })
}

/// Restores `step` from the checkpoint `run` resumed, if any.
pub fn restore<S: ClassifierStep>(step: &mut S, run: &RunDir) -> Result<()> {
    if let Some(state) = run.resumed() {
        step.restore(&run.checkpoint_dir(), state)?;
    }
    Ok(())
}

/// Ends a run: `model` saved as the run's model, `report` complete with `final_metrics` (the
/// last epoch's unless given; the last epoch is always evaluated), and the directory kept.
pub fn finish(
    run: &mut RunDir,
    report: &mut Report,
    model: &Classifier,
    final_metrics: Option<FinalMetrics>,
) -> Result<()> {
    checkpoint::save_model(model, &run.out().join(files::MODEL))?;
    report.epochs = run.history().to_vec();
    report.final_metrics = Some(final_metrics.unwrap_or_else(|| {
        let last = run.history().last();
        FinalMetrics {
            clean_acc: last.and_then(|r| r.clean_acc).unwrap_or(0.0),
            asr: last.and_then(|r| r.asr),
        }
    }));
    report.status = RunStatus::Complete;
    report.model_file = Some(files::MODEL.into());
    report.finished_unix = Some(now_unix());
    run.write_report(report)?;
    run.finish();
    Ok(())
}
