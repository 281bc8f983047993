//! The browser's driver of the engine: the same steps and plans as the native driver
//! ([`super::driver`]), but every result is read back asynchronously (WebGPU cannot block) and
//! control goes back to the [`Host`] after every batch, so that a page keeps repainting and can
//! stop the run. Natively it runs under any executor (the tests use a blocking one).

use super::driver::{EpochTotals, LoopPlan};
use super::step::{At, ClassifierStep, Step};
use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::{Batches, make_batch};
use crate::engine::eval::{images_tensor, labels_tensor};
use crate::engine::meter::AsrMeter;
use crate::model::Classifier;
use burn::prelude::*;
use std::future::Future;

/// What the async driver needs from where it runs.
pub trait Host {
    /// Milliseconds from some fixed point.
    fn now_ms(&self) -> f64;
    /// Whether the user asked to stop; checked after every batch.
    fn stop_requested(&self) -> bool;
    /// Gives the event loop a turn (the browser repaints and handles clicks).
    fn pause(&self) -> impl Future<Output = ()>;
}

/// Progress of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Something other than batches is going on (poisoning the training set, evaluating).
    Stage(String),
    /// A batch finished: 0-based epoch and batch, batches this epoch, the batch's loss.
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
    },
    /// An epoch finished and was evaluated.
    Epoch(EpochPoint),
}

/// One evaluated epoch; accuracies are fractions in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPoint {
    /// 1-based.
    pub epoch: usize,
    pub loss: f64,
    pub clean_acc: f64,
    pub asr: Option<f64>,
    /// Training time of the epoch (evaluation excluded).
    pub train_seconds: f64,
    pub images: usize,
}

/// Reads a tensor's values without blocking.
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, String> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| format!("reading back from the device: {e:?}"))?;
    Ok(data.iter::<f32>().collect())
}

async fn read_count(t: Tensor<1, Int>) -> Result<usize, String> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| format!("reading back from the device: {e:?}"))?;
    Ok(data.iter::<i64>().next().unwrap_or(0) as usize)
}

/// An error when `model`'s outputs on the first images of `set` are not finite (weights that
/// diverged, or a device that computes garbage), naming `what`.
pub async fn check_finite(
    model: &Classifier,
    set: &ImageSet,
    device: &Device,
    what: &str,
) -> Result<(), String> {
    let n = set.len().min(8);
    if n == 0 {
        return Ok(());
    }
    let idx: Vec<usize> = (0..n).collect();
    let b = make_batch(set, &idx, &Augment::NONE, 0, 0);
    let logits = read_f32(model.forward(images_tensor(b.images, b.shape, device))).await?;
    match logits.iter().all(|v| v.is_finite()) {
        true => Ok(()),
        false => Err(format!(
            "{what}: the model's outputs are not finite (its weights diverged, or the device \
             computed garbage); try a lower learning rate or the CPU backend"
        )),
    }
}

/// Fraction of `set` that `model` classifies as labelled, in batches of `batch_size`, each
/// batch passed through `stamp` first when given (an ASR: `set` from
/// [`crate::attack::poison::asr_set`]).
pub async fn accuracy<H: Host>(
    model: &Classifier,
    set: &ImageSet,
    stamp: Option<&dyn Fn(Tensor<4>) -> Tensor<4>>,
    (batch_size, device): (usize, &Device),
    host: &H,
) -> Result<f64, String> {
    if set.is_empty() {
        return Ok(0.0);
    }
    let order: Vec<usize> = (0..set.len()).collect();
    let mut correct = 0usize;
    for c in order.chunks(batch_size.max(1)) {
        let b = make_batch(set, c, &Augment::NONE, 0, 0);
        let mut x = images_tensor(b.images, b.shape, device);
        if let Some(f) = stamp {
            x = f(x);
        }
        let y = labels_tensor(b.labels, device);
        let pred = model.forward(x).argmax(1).reshape([c.len()]);
        correct += read_count(pred.equal(y).int().sum()).await?;
        host.pause().await;
    }
    Ok(correct as f64 / set.len() as f64)
}

/// Clean accuracy of `model` on `test` and its ASR through `meter` (when given).
pub async fn evaluate<H: Host>(
    model: &Classifier,
    meter: Option<&AsrMeter>,
    test: &ImageSet,
    at: (usize, &Device),
    host: &H,
) -> Result<(f64, Option<f64>), String> {
    let clean_acc = accuracy(model, test, None, at, host).await?;
    let asr = match meter {
        Some(m) => {
            let stamp = |x| m.trigger.stamp(x);
            Some(accuracy(model, &m.set, Some(&stamp), at, host).await?)
        }
        None => None,
    };
    Ok((clean_acc, asr))
}

/// Runs the batches of one epoch; returns the epoch's totals and whether the host asked to stop
/// (the epoch then ends early).
async fn epoch<S: Step, H: Host>(
    plan: &LoopPlan,
    data: &S::Data,
    step: &mut S,
    epoch: usize,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<(EpochTotals, bool), String> {
    let lr = plan.lr_at(epoch);
    let chunks = plan.chunks(data.len(), epoch);
    let mut totals = EpochTotals::default();
    for (batch, c) in chunks.iter().enumerate() {
        let b = data.batch(c, &plan.augment, plan.seed, epoch as u64);
        let at = At { epoch, batch, lr };
        let out = step.step(b, at);
        let loss = read_f32(out.loss).await?[0] as f64;
        let matches = match out.matches {
            Some(m) => read_count(m).await?,
            None => 0,
        };
        totals
            .count(plan, at, (loss, matches, out.images))
            .map_err(|e| e.to_string())?;
        on(Progress::Batch {
            epoch,
            batch,
            batches: chunks.len(),
            loss,
        });
        host.pause().await;
        if host.stop_requested() {
            return Ok((totals, true));
        }
    }
    Ok((totals, false))
}

/// Runs `step` over every epoch's batches (a step with nothing to evaluate: IAB's mask
/// pre-training); returns whether the host asked to stop.
pub async fn run_batches<S: Step, H: Host>(
    plan: &LoopPlan,
    data: &S::Data,
    step: &mut S,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<bool, String> {
    for e in 0..plan.epochs {
        if epoch(plan, data, step, e, host, on).await?.1 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs a classifier's `step` for `plan.epochs`, measuring clean accuracy on `test` (batches of
/// `eval_batch_size`) and the ASR after every epoch (through `meter`, else the step's own).
/// Returns the evaluated epochs and whether the host asked to stop (the last, partial epoch is
/// evaluated too).
pub async fn run_epochs<S: ClassifierStep, H: Host>(
    plan: &LoopPlan,
    data: &S::Data,
    step: &mut S,
    (test, meter, eval_batch_size, device): (&ImageSet, Option<&AsrMeter>, usize, &Device),
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<(Vec<EpochPoint>, bool), String> {
    let mut history = Vec::new();
    for e in 0..plan.epochs {
        let t0 = host.now_ms();
        let (totals, stopped) = epoch(plan, data, step, e, host, on).await?;
        let train_seconds = (host.now_ms() - t0) / 1000.0;
        on(Progress::Stage(format!(
            "{}: epoch {} took {train_seconds:.2} s ({} images); evaluating",
            plan.what,
            e + 1,
            totals.seen
        )));
        let model = step.eval_model();
        check_finite(
            &model,
            test,
            device,
            &format!("after {} epoch {}", plan.what, e + 1),
        )
        .await?;
        let meter = meter.cloned().or_else(|| step.asr_meter());
        let (clean_acc, asr) = evaluate(
            &model,
            meter.as_ref(),
            test,
            (eval_batch_size, device),
            host,
        )
        .await?;
        let point = EpochPoint {
            epoch: e + 1,
            loss: totals.mean_loss(),
            clean_acc,
            asr,
            train_seconds,
            images: totals.seen,
        };
        on(Progress::Epoch(point.clone()));
        history.push(point);
        if stopped {
            return Ok((history, true));
        }
    }
    Ok((history, false))
}
