//! Fine-Pruning (Liu et al. 2018), as the method spec has it: the channels of the last stage's
//! output (after ReLU) ranked by their mean activation on the defender's labelled images,
//! pruned least active first, `prune_step` at a time, until the step at which the accuracy on
//! those same images has dropped by `acc_drop` (10%) relative to the unpruned model; the model
//! of the step before is kept and fine-tuned as FT with the pruned channels held at zero.
//!
//! The reference code (BackdoorBench v1, the authors' fork, BackdoorBench v2) judges the drop on
//! **test** accuracy; here the stop rule reads only the defender's images, and the search's
//! result is saved (`pruning.json`) so that a resumed run prunes the same channels.
//!
//! Pruning channel `c` zeroes it everywhere it is written in the last stage: output channel `c`
//! of the residual branch's last convolution and its BN (both blocks), of the shortcut's
//! projection (and its BN; PreAct has none) and the classifier's input column `c`. The
//! last stage's output channel `c` is then zero for every input.

use super::ft::FtConfig;
use super::method::{Launch, Method};
use super::run::run_defense;
use super::run::{Prepared, SuspectView};
use super::settings::{CommonSettings, SharedFlags};
use crate::data::ImageSet;
use crate::data::batcher::HostBatch;
use crate::device::Selected;
use crate::engine::checkpoint::CheckpointState;
use crate::engine::eval::{images_tensor, in_order, labels_tensor};
use crate::engine::step::{At, ClassifierStep, Step, StepOutput, Trainee};
use crate::io::{read_json, write_json_atomic};
use crate::model::loss::count_correct;
use crate::model::{Classifier, Network};
use crate::optim::sgd::Sgd;
use crate::report::Findings;
use crate::report::Report;
use crate::report::findings::{PruneStep, Pruning};
use crate::train::run::CrossEntropyStep;
use crate::{Error, Result};
use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The file in a Fine-Pruning run directory holding its search's result.
pub const PRUNING_FILE: &str = "pruning.json";

/// Everything that defines a Fine-Pruning run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FpConfig {
    /// The suspect and the fine-tuning after pruning (method spec: FT's settings).
    pub ft: FtConfig,
    /// The relative drop of the defender's accuracy at which pruning stops (method spec: 0.1).
    pub acc_drop: f64,
    /// Channels pruned per step (method spec: 1).
    pub prune_step: usize,
}

impl FpConfig {
    /// The method's defaults for `suspect`.
    pub fn paper(suspect: std::path::PathBuf, flip: bool) -> Self {
        FpConfig {
            ft: FtConfig::paper(suspect, flip),
            acc_drop: 0.1,
            prune_step: 1,
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.ft.validate()?;
        if !(self.acc_drop.is_finite() && self.acc_drop > 0.0 && self.acc_drop <= 1.0) {
            return Err(Error::config(
                "acc-drop",
                format!("expected a fraction in (0, 1]; got {}", self.acc_drop),
            ));
        }
        if self.prune_step == 0 {
            return Err(Error::config("prune-step", "must be positive"));
        }
        Ok(())
    }

    /// The settings that differ from the method's defaults, for table columns.
    pub fn label_details(&self) -> Vec<String> {
        let paper = FpConfig::paper(Default::default(), true);
        let mut v = self.ft.label_details();
        if self.acc_drop != paper.acc_drop {
            v.push(format!("drop {}", self.acc_drop));
        }
        if self.prune_step != paper.prune_step {
            v.push(format!("step {}", self.prune_step));
        }
        v
    }
}

/// The channels' mean activations and the cached third-stage outputs with their labels.
struct Cached {
    activations: Vec<f64>,
    batches: Vec<(Tensor<4>, Tensor<1, Int>)>,
}

fn cache(model: &Classifier, set: &Arc<ImageSet>, batch_size: usize, device: &Device) -> Cached {
    let mut sums: Vec<f64> = Vec::new();
    let mut batches = Vec::new();
    for b in in_order(set, batch_size) {
        let x = images_tensor(b.images, b.shape, device);
        let y = labels_tensor(b.labels, device);
        let f = model.features(x);
        let pooled: Vec<f32> = f.penultimate.sum_dim(0).into_data().iter::<f32>().collect();
        sums.resize(pooled.len(), 0.0);
        for (s, v) in sums.iter_mut().zip(pooled) {
            *s += v as f64;
        }
        batches.push((f.stages[2].clone(), y));
    }
    let n = set.len().max(1) as f64;
    Cached {
        activations: sums.into_iter().map(|s| s / n).collect(),
        batches,
    }
}

/// The channels of `activations` from least to most active (ties: lower index first).
pub fn pruning_order(activations: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..activations.len()).collect();
    order.sort_by(|&a, &b| activations[a].total_cmp(&activations[b]).then(a.cmp(&b)));
    order
}

/// Fine-Pruning's search on the defender's labelled images `set` (`model` an evaluation copy):
/// prune `step` more channels at a time in [`pruning_order`] while the accuracy on `set` stays
/// above `(1 - acc_drop)` times the unpruned accuracy; at most all channels but one.
pub fn search(
    model: &Classifier,
    set: &Arc<ImageSet>,
    acc_drop: f64,
    step: usize,
    batch_size: usize,
    device: &Device,
) -> Pruning {
    let cached = cache(model, set, batch_size, device);
    let channels = cached.activations.len();
    let order = pruning_order(&cached.activations);
    let accuracy = |k: usize| {
        let pruned = mask_last_stage(model.clone(), &order[..k]);
        let correct: usize = cached
            .batches
            .iter()
            .map(|(s3, y)| count_correct(pruned.tail(s3.clone()).2, y.clone()))
            .sum();
        correct as f64 / set.len().max(1) as f64
    };
    let base = accuracy(0);
    let mut steps = vec![PruneStep {
        pruned: 0,
        accuracy: base,
    }];
    let mut pruned = 0;
    let mut k = step;
    while k < channels {
        let acc = accuracy(k);
        steps.push(PruneStep {
            pruned: k,
            accuracy: acc,
        });
        if base - acc >= acc_drop * base {
            break;
        }
        pruned = k;
        k += step;
    }
    Pruning {
        channels,
        activations: cached.activations,
        order,
        steps,
        pruned,
    }
}

/// `p` (of an evaluation copy) with the entries `channels` of its first axis set to zero.
pub(crate) fn zero_rows<const D: usize>(
    p: Param<Tensor<D>>,
    channels: &[usize],
) -> Param<Tensor<D>> {
    p.map(|t| {
        let dims = t.dims();
        let mut keep = vec![1.0f32; dims[0]];
        for &c in channels {
            keep[c] = 0.0;
        }
        let mut shape = [1usize; D];
        shape[0] = dims[0];
        let keep = Tensor::<1>::from_floats(keep.as_slice(), &t.device()).reshape(shape);
        t * keep
    })
}

fn zero_bn(bn: burn::nn::BatchNorm, channels: &[usize]) -> burn::nn::BatchNorm {
    burn::nn::BatchNorm {
        gamma: zero_rows(bn.gamma, channels),
        beta: zero_rows(bn.beta, channels),
        ..bn
    }
}

fn zero_conv(conv: burn::nn::conv::Conv2d, channels: &[usize]) -> burn::nn::conv::Conv2d {
    burn::nn::conv::Conv2d {
        weight: zero_rows(conv.weight, channels),
        bias: conv.bias.map(|b| zero_rows(b, channels)),
        ..conv
    }
}

fn zero_fc_inputs(fc: burn::nn::Linear, channels: &[usize]) -> burn::nn::Linear {
    // Burn's linear weight is `[inputs, outputs]`: an input column is a row here.
    burn::nn::Linear {
        weight: zero_rows(fc.weight, channels),
        ..fc
    }
}

/// `model` with the last stage's output `channels` pruned (see the module's documentation), as
/// an evaluation copy (`.train()` gives the training copy, parameter identities kept).
pub fn mask_last_stage(model: Classifier, channels: &[usize]) -> Classifier {
    let mut model = model.valid();
    if channels.is_empty() {
        return model;
    }
    model.net = match model.net {
        Network::Resnet18(mut r) => {
            r.layer4 = r
                .layer4
                .into_iter()
                .map(|mut b| {
                    b.conv2 = zero_conv(b.conv2, channels);
                    b.bn2 = zero_bn(b.bn2, channels);
                    b.shortcut = b.shortcut.map(|mut s| {
                        s.conv = zero_conv(s.conv, channels);
                        s.bn = zero_bn(s.bn, channels);
                        s
                    });
                    b
                })
                .collect();
            r.fc = zero_fc_inputs(r.fc, channels);
            Network::Resnet18(r)
        }
        Network::PreactResnet18(mut r) => {
            r.layer4 = r
                .layer4
                .into_iter()
                .map(|mut b| {
                    b.conv2 = zero_conv(b.conv2, channels);
                    b.shortcut = b.shortcut.map(|s| zero_conv(s, channels));
                    b
                })
                .collect();
            r.fc = zero_fc_inputs(r.fc, channels);
            Network::PreactResnet18(r)
        }
    };
    model
}

/// Fine-tuning with the pruned channels held at zero: FT's step, then the mask again.
pub struct FpStep {
    pub inner: CrossEntropyStep<'static>,
    pub pruned: Vec<usize>,
}

impl Step for FpStep {
    type Data = ImageSet;

    fn step(&mut self, b: HostBatch, at: At) -> StepOutput {
        let out = self.inner.step(b, at);
        let pruned = &self.pruned;
        self.inner
            .trainee
            .map(|m| mask_last_stage(m, pruned).train());
        out
    }
}

impl ClassifierStep for FpStep {
    fn eval_model(&self) -> Classifier {
        self.inner.eval_model()
    }

    fn save(&self, dir: &Path, epochs_done: usize) -> Result<(String, String)> {
        self.inner.save(dir, epochs_done)
    }

    fn restore(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        self.inner.restore(dir, state)
    }
}

/// Fine-Pruning's step, data and plan: the pruning search (saved in the run directory and reused
/// on resume), then fine-tuning with the pruned channels held at zero.
pub(crate) fn prepare(
    config: &FpConfig,
    suspect: SuspectView<'_>,
    selected: &Selected,
) -> Result<Prepared<FpStep>> {
    let device = selected.device.clone();
    let holdout = suspect.defender.labelled(suspect.dir)?;
    let holdout = Arc::new(holdout);
    let file = suspect.out.join(PRUNING_FILE);
    let pruning: Pruning = match file.is_file() {
        true => read_json(&file)?,
        false => {
            let p = search(
                suspect.model,
                &holdout,
                config.acc_drop,
                config.prune_step,
                config.ft.common.eval_batch_size,
                &device,
            );
            write_json_atomic(&file, &p)?;
            p
        }
    };
    let width = pruning.channels;
    let permutation = {
        let mut o = pruning.order.clone();
        o.sort_unstable();
        o.into_iter().eq(0..width)
    };
    if width != suspect.model.tail_width() || !permutation || pruning.pruned >= width {
        return Err(Error::artifact(
            &file,
            "not this run's pruning search (remove it to search again)",
        ));
    }
    let start = mask_last_stage(suspect.model.clone(), pruning.pruned_channels());
    let ft = &config.ft;
    let step = FpStep {
        inner: CrossEntropyStep {
            trainee: Trainee::new(
                start.clone().train(),
                Sgd::new(ft.training.sgd.clone()),
                &device,
                selected.precision(),
            ),
            hooks: None,
            seed: ft.common.seed,
            device,
        },
        pruned: pruning.pruned_channels().to_vec(),
    };
    Ok(Prepared {
        step,
        data: holdout,
        plan: ft.training.plan(&ft.common, "fine-pruning"),
        start,
        reinit: None,
        findings: Some(Findings::Fp(pruning)),
    })
}

impl Method for FpConfig {
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self {
        FpConfig::paper(suspect, flip)
    }

    fn name(&self) -> &'static str {
        "fp"
    }

    fn display_name(&self) -> &'static str {
        "FP"
    }

    fn table_position(&self) -> usize {
        2
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
        FpConfig::validate(self)
    }

    fn label_details(&self) -> Vec<String> {
        FpConfig::label_details(self)
    }

    fn run(&self, launch: Launch<'_>) -> Result<Report> {
        let selected = launch.selected;
        run_defense(self, launch, |s| prepare(self, s, selected))
    }
}
