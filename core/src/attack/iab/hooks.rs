//! IAB plugged into the training loop.

use super::generator::*;
use super::mask::*;
use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::engine::checkpoint::{self, load_model, save_model};
use crate::optim::adam::{Adam, AdamConfig};
use crate::{Error, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// Called with (epoch, epochs, mean loss) after each mask pre-training epoch.
pub type MaskEpochCallback = Box<dyn FnMut(usize, usize, f64) + Send>;

/// IAB plugged into the training loop: the mask network is pre-trained first, then the
/// generator trains with the classifier (CE through the poisoned and cross samples, plus the
/// diversity loss), stepped by its own Adam.
pub struct IabHooks {
    pub attack: super::super::Attack,
    generator: Option<Generator>,
    mask: Option<Generator>,
    adam: Adam,
    asr_set: Option<Arc<ImageSet>>,
    /// Batch size, augmentation and seed of the mask pre-training.
    pub mask_batch_size: usize,
    pub augment: Augment,
    pub seed: u64,
    /// Called after each mask pre-training epoch with the epoch and its mean loss.
    pub on_mask_epoch: Option<MaskEpochCallback>,
}

impl IabHooks {
    pub fn new(
        attack: super::super::Attack,
        batch_size: usize,
        augment: Augment,
        seed: u64,
    ) -> Self {
        IabHooks {
            attack,
            generator: None,
            mask: None,
            adam: Adam::new(AdamConfig {
                beta1: 0.5,
                beta2: 0.9,
                eps: 1e-8,
            }),
            asr_set: None,
            mask_batch_size: batch_size,
            augment,
            seed,
            on_mask_epoch: None,
        }
    }

    fn fresh_generator(&self, device: &Device) -> Generator {
        let c = self.attack.image_shape[0];
        IabNets::new(c, self.attack.config.iab_width, self.seed, device).generator
    }

    /// The mask pre-training settings of this attack.
    pub fn mask_training(&self) -> MaskTraining {
        let c = &self.attack.config;
        MaskTraining {
            epochs: c.iab_mask_epochs,
            batch_size: self.mask_batch_size,
            lr: c.iab_lr,
            density: c.iab_mask_density,
            lambda_norm: c.iab_lambda_norm,
            lambda_div: c.iab_lambda_div,
            augment: self.augment,
            seed: crate::rng::derive_seed(&[self.seed, 0x3A5C]),
        }
    }

    /// A fresh mask network for this attack, to pre-train.
    pub fn fresh_mask(&self, device: &Device) -> Generator {
        let c = self.attack.image_shape[0];
        IabNets::new(c, self.attack.config.iab_width, self.seed, device).mask
    }

    /// Ready for training with a pre-trained `mask` (from [`pretrain_mask`] or a loop of
    /// [`mask_loss`] steps): a fresh generator, and the ASR images of `test`. Writes nothing.
    pub fn prepare_with_mask(&mut self, mask: Generator, test: &ImageSet, device: &Device) {
        self.mask = Some(mask.valid());
        self.generator = Some(self.fresh_generator(device).train());
        self.asr_set = Some(Arc::new(super::super::poison::asr_set(&self.attack, test)));
    }

    /// The trained networks (evaluation copies).
    pub fn nets(&self) -> Option<IabNets> {
        Some(IabNets {
            generator: self.generator.as_ref()?.valid(),
            mask: self.mask.as_ref()?.valid(),
        })
    }
}

fn iab_ckpt_files(epoch: usize) -> (String, String) {
    (
        format!("iab-generator-e{epoch}.bpk"),
        format!("iab-adam-e{epoch}.bin"),
    )
}

impl crate::train::run::TrainHooks for IabHooks {
    fn canonical(&self) -> crate::engine::run_dir::Canonical {
        super::super::canonical_run
    }

    fn kind(&self) -> &'static str {
        "attack"
    }

    fn describe(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.attack.config).ok()
    }

    fn prepare(
        &mut self,
        train: ImageSet,
        _original_indices: &[usize],
        test: &ImageSet,
        out: &Path,
        device: &Device,
    ) -> Result<ImageSet> {
        let c = self.attack.config.clone();
        let [ch, h, w] = self.attack.image_shape;
        if h % (1 << STEPS) != 0 || w % (1 << STEPS) != 0 {
            return Err(Error::config(
                "image-size",
                format!("IAB's networks need sides divisible by 8; got {h}x{w}"),
            ));
        }
        let mask_path = out.join(super::super::files::IAB_MASK);
        let ckpt = out.join(crate::engine::files::CHECKPOINT_DIR);
        let mask = if mask_path.is_file() {
            // A run stopped between saving the mask and removing its checkpoints.
            remove_mask_checkpoints(&ckpt, None);
            load_model(Generator::new(ch, 1, c.iab_width, device), &mask_path)?
        } else {
            let set = Arc::new(train.clone());
            let mut cb = self.on_mask_epoch.take();
            let epochs = c.iab_mask_epochs;
            let trained = pretrain_mask(
                self.fresh_mask(device),
                &set,
                &self.mask_training(),
                device,
                Some(&ckpt),
                |e, loss| {
                    if let Some(f) = cb.as_mut() {
                        f(e, epochs, loss)
                    }
                },
            );
            self.on_mask_epoch = cb;
            let trained = trained?.valid();
            save_model(&trained, &mask_path)?;
            remove_mask_checkpoints(&ckpt, None);
            trained
        };
        self.prepare_with_mask(mask, test, device);
        self.attack.save(out)?;
        Ok(train)
    }

    fn batch(
        &mut self,
        x: Tensor<4>,
        _y: Tensor<1, Int>,
        batch: &crate::data::batcher::HostBatch,
        _seed: u64,
        _epoch: usize,
        _index: usize,
    ) -> (Tensor<4>, Tensor<1, Int>, Option<Tensor<1>>) {
        let c = &self.attack.config;
        let [n, ..] = x.dims();
        let device = x.device();
        let nb = ((n as f64) * c.poison_rate) as usize;
        let nc = (((n as f64) * c.iab_cross_rate) as usize).min(n - nb);
        let labels: Vec<i64> = batch
            .labels
            .iter()
            .enumerate()
            .map(|(i, &l)| match i < nb {
                true => c.target_of(l as usize, self.attack.num_classes) as i64,
                false => l,
            })
            .collect();
        let y = crate::engine::eval::labels_tensor(labels, &device);
        if nb == 0 {
            return (x, y, None);
        }
        let g = self.generator.as_ref().expect("prepared");
        let m = self.mask.as_ref().expect("prepared");
        // Partners for the cross samples: the image half a batch away.
        let partner: Vec<i64> = (0..n).map(|i| ((i + n / 2) % n) as i64).collect();
        let pidx = Tensor::<1, Int>::from_data(TensorData::new(partner, [n]), &device);
        let x2 = x.clone().select(0, pidx);
        let x1b = x.clone().narrow(0, 0, nb);
        let p1 = g.forward(x1b.clone());
        let m1 = IabNets::mask_of(m, x1b.clone().inner()).autodiff();
        let bd = x1b.clone() + (p1.clone() - x1b.clone()) * m1;
        let mut parts = vec![bd];
        let mut div = None;
        if nc > 0 {
            let x1c = x.clone().narrow(0, nb, nc);
            let x2c = x2.narrow(0, nb, nc);
            let p2 = g.forward(x2c.clone());
            let m2 = IabNets::mask_of(m, x2c.clone().inner()).autodiff();
            parts.push(x1c.clone() + (p2.clone() - x1c) * m2);
            let k = nb.min(nc);
            div = Some(
                diversity_loss(
                    x1b.narrow(0, 0, k),
                    x2c.narrow(0, 0, k),
                    p1.narrow(0, 0, k),
                    p2.narrow(0, 0, k),
                ) * c.iab_lambda_div,
            );
        }
        if nb + nc < n {
            parts.push(x.narrow(0, nb + nc, n - nb - nc));
        }
        (Tensor::cat(parts, 0), y, div)
    }

    fn takes_scaled_gradients(&self) -> bool {
        // The generator's Adam steps on these gradients.
        false
    }

    fn after_backward(&mut self, grads: &mut burn::tensor::Gradients, _epoch: usize) {
        if let Some(g) = self.generator.take() {
            let gp = GradientsParams::from_module(grads, &g);
            self.generator = Some(self.adam.step(self.attack.config.iab_lr, g, gp));
        }
    }

    fn asr_meter(&self, device: &Device) -> Option<crate::engine::meter::AsrMeter> {
        Some(crate::engine::meter::AsrMeter::new(
            self.asr_set.clone()?,
            Arc::new(super::super::Backdoor::Iab(Box::new(self.nets()?))),
            256,
            device,
        ))
    }

    fn save_checkpoint(&self, dir: &Path, epochs_done: usize) -> Result<()> {
        let Some(g) = &self.generator else {
            return Ok(());
        };
        let (gf, af) = iab_ckpt_files(epochs_done);
        checkpoint::save_with_optimizer(dir, (&gf, &af), &g.valid(), &self.adam)?;
        if epochs_done > 0 {
            // Files of the previous epoch stay until the new state is written.
            let (pg, pa) = iab_ckpt_files(epochs_done - 1);
            checkpoint::remove_stale(
                dir,
                &["iab-generator-e", "iab-adam-e"],
                &[&gf, &af, &pg, &pa],
            );
        }
        Ok(())
    }

    fn restore_checkpoint(
        &mut self,
        dir: &Path,
        epochs_done: usize,
        device: &Device,
    ) -> Result<()> {
        let (gf, af) = iab_ckpt_files(epochs_done);
        let fresh = self.fresh_generator(device);
        let g = checkpoint::load_with_optimizer(dir, (&gf, &af), fresh, &mut self.adam, device)?;
        self.generator = Some(g.train());
        Ok(())
    }

    fn finish(&self, out: &Path) -> Result<()> {
        match self.nets() {
            Some(n) => n.save(out),
            None => Ok(()),
        }
    }
}
