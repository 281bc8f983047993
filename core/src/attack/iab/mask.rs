//! The mask network's pre-training, on the engine.

use super::generator::*;
use crate::Result;
use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::{chunk_order, epoch_order, make_batch};
use crate::engine::checkpoint;
use crate::engine::eval::images_tensor;
use crate::optim::adam::{Adam, AdamConfig};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::relu;
use std::path::Path;
use std::sync::Arc;

/// Settings of the mask pre-training.
#[derive(Clone, Debug)]
pub struct MaskTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub density: f32,
    pub lambda_norm: f32,
    pub lambda_div: f32,
    pub augment: Augment,
    pub seed: u64,
}

/// The files of the mask pre-training checkpoint after `epochs_done` epochs: the mask network
/// (training copy, batch-norm statistics included) and its Adam state.
fn mask_ckpt_files(epochs_done: usize) -> (String, String) {
    (
        format!("iab-mask-e{epochs_done}.bpk"),
        format!("iab-mask-adam-e{epochs_done}.bin"),
    )
}

/// The most epochs of mask pre-training (at most `epochs`) that `dir` holds a complete
/// checkpoint of.
pub fn mask_checkpoint_epochs(dir: &Path, epochs: usize) -> Option<usize> {
    (1..=epochs).rev().find(|&e| {
        let (m, a) = mask_ckpt_files(e);
        dir.join(m).is_file() && dir.join(a).is_file()
    })
}

/// Removes every mask pre-training checkpoint file in `dir` except those of `keep` epochs.
pub fn remove_mask_checkpoints(dir: &Path, keep: Option<usize>) {
    let kept = keep.map(mask_ckpt_files);
    let keep: Vec<&str> = kept
        .iter()
        .flat_map(|(m, a)| [m.as_str(), a.as_str()])
        .collect();
    checkpoint::remove_stale(dir, &["iab-mask-"], &keep);
}

/// Pre-trains the mask network alone (method spec: 25 epochs; loss
/// `lambda_norm * mean(relu(M(x) - density)) + lambda_div * diversity`), Adam betas (0.5, 0.9),
/// learning rate divided by 10 at epochs 10 and 20 (scaled to `epochs`), on the engine
/// ([`MaskStep`]).
///
/// With `checkpoint` (a folder), the network and its Adam state are saved there after every
/// epoch, and a pre-training stopped part-way continues from the last saved epoch and ends where
/// an uninterrupted one does. The last checkpoint stays until the caller has saved the result
/// and calls [`remove_mask_checkpoints`]. `progress` gets each epoch and its mean loss.
pub fn pretrain_mask(
    mask: Generator,
    set: &Arc<ImageSet>,
    t: &MaskTraining,
    device: &Device,
    checkpoint: Option<&Path>,
    mut progress: impl FnMut(usize, f64),
) -> Result<Generator> {
    let mut step = MaskStep::new(mask, set.clone(), t, device);
    let mut first = 0;
    if let Some((dir, done)) =
        checkpoint.and_then(|d| Some((d, mask_checkpoint_epochs(d, t.epochs)?)))
    {
        let (mf, af) = mask_ckpt_files(done);
        let mask = step.mask.take().expect("a mask step holds its network");
        let loaded =
            checkpoint::load_with_optimizer(dir, (&mf, &af), mask, &mut step.adam, device)?;
        step.mask = Some(loaded.train());
        first = done;
    }
    crate::engine::run_batches(&t.plan(), set, &mut step, first, &mut |step, event| {
        if let crate::engine::driver::Event::Epoch { epoch, totals, .. } = event {
            if let Some(dir) = checkpoint
                && epoch + 1 < t.epochs
            {
                let (mf, af) = mask_ckpt_files(epoch + 1);
                checkpoint::save_with_optimizer(dir, (&mf, &af), &step.mask().valid(), &step.adam)?;
                remove_mask_checkpoints(dir, Some(epoch + 1));
            }
            progress(epoch, totals.mean_loss());
        }
        Ok(())
    })?;
    Ok(step.into_mask())
}

/// IAB's mask pre-training as an engine step: each batch is paired with the batch at the same
/// position of a second permutation of the set (for the diversity term), and the mask network
/// takes one Adam step.
pub struct MaskStep {
    mask: Option<Generator>,
    pub adam: Adam,
    set: Arc<ImageSet>,
    t: MaskTraining,
    device: Device,
    /// The second permutation's batches of the current epoch.
    partners: (usize, Vec<Vec<usize>>),
}

impl MaskStep {
    /// A step training `mask` (an evaluation or fresh network) on `set`.
    pub fn new(mask: Generator, set: Arc<ImageSet>, t: &MaskTraining, device: &Device) -> Self {
        MaskStep {
            mask: Some(mask.train()),
            adam: Adam::new(AdamConfig {
                beta1: 0.5,
                beta2: 0.9,
                eps: 1e-8,
            }),
            set,
            t: t.clone(),
            device: device.clone(),
            partners: (usize::MAX, Vec::new()),
        }
    }

    fn mask(&self) -> &Generator {
        self.mask.as_ref().expect("a mask step holds its network")
    }

    /// The trained mask network.
    pub fn into_mask(mut self) -> Generator {
        self.mask.take().expect("a mask step holds its network")
    }

    /// The seed of the second permutation and its augmentation.
    fn partner_seed(&self) -> u64 {
        self.t.seed ^ 0x005E_C04D
    }
}

impl crate::engine::Step for MaskStep {
    type Data = ImageSet;

    fn step(
        &mut self,
        b1: crate::data::batcher::HostBatch,
        at: crate::engine::At,
    ) -> crate::engine::StepOutput {
        if self.partners.0 != at.epoch {
            let order = epoch_order(self.set.len(), self.partner_seed(), at.epoch as u64);
            self.partners = (at.epoch, chunk_order(&order, self.t.batch_size));
        }
        let partner = &self.partners.1[at.batch];
        let n = b1.labels.len().min(partner.len());
        let b2 = make_batch(
            &self.set,
            &partner[..n],
            &self.t.augment,
            self.partner_seed(),
            at.epoch as u64,
        );
        let ad = self.device.clone().autodiff();
        let x1 = images_tensor(b1.images, b1.shape, &ad).narrow(0, 0, n);
        let x2 = images_tensor(b2.images, b2.shape, &ad);
        let mask = self.mask.take().expect("a mask step holds its network");
        let loss = mask_loss(&mask, x1, x2, &self.t);
        let value = loss.clone().inner();
        let grads = GradientsParams::from_grads(loss.backward(), &mask);
        self.mask = Some(self.adam.step(at.lr, mask, grads));
        crate::engine::StepOutput {
            loss: value,
            matches: None,
            images: n,
        }
    }
}

impl MaskTraining {
    /// The engine plan of the pre-training: the learning rate divided by 10 at epochs 10 and 20
    /// of 25 (scaled to `epochs`).
    pub fn plan(&self) -> crate::engine::LoopPlan {
        crate::engine::LoopPlan {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: crate::optim::Schedule::Multistep {
                milestones: [self.epochs * 10 / 25, self.epochs * 20 / 25]
                    .into_iter()
                    .filter(|&m| m > 0)
                    .collect(),
                gamma: 0.1,
            },
            seed: self.seed,
            augment: self.augment,
            max_batches: None,
            what: "IAB's mask pre-training",
        }
    }
}

/// The learning rate of mask pre-training epoch `epoch`: divided by 10 at epochs 10 and 20 of 25
/// (scaled to `t.epochs`).
pub fn mask_lr(t: &MaskTraining, epoch: usize) -> f64 {
    t.plan().lr_at(epoch)
}

/// The mask pre-training loss of one pair of batches (on an autodiff device):
/// `lambda_norm * mean(relu(M(x1) - density)) + lambda_div * diversity(x1, x2, M(x1), M(x2))`.
pub fn mask_loss(mask: &Generator, x1: Tensor<4>, x2: Tensor<4>, t: &MaskTraining) -> Tensor<1> {
    let m1 = IabNets::mask_of(mask, x1.clone());
    let m2 = IabNets::mask_of(mask, x2.clone());
    let norm = relu(m1.clone() - t.density).mean();
    let div = diversity_loss(x1, x2, m1, m2);
    norm * t.lambda_norm + div * t.lambda_div
}
