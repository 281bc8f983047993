//! Poisoned training and the attack success rate.
//!
//! [`AttackHooks`] plugs an attack into the training loop: it picks and poisons training images
//! (data-poisoning attacks), stamps triggers inside each batch (after augmentation, WaNet) and
//! measures the ASR after every epoch.

use super::lc::{Pgd, pgd_untargeted};
use super::warp;
use super::warp::WanetAugment;
use super::{Attack, AttackKind, Stamping, Trigger};
use crate::data::ImageSet;
use crate::data::batcher::HostBatch;
use crate::device::Selected;
use crate::engine::Observer;
use crate::engine::checkpoint;
use crate::engine::files;
use crate::engine::meter::{AsrMeter, triggered_accuracy};
use crate::engine::run_files::load_run_model;
use crate::model::Classifier;
use crate::rng::Rng;
use crate::train::run::{TrainConfig, TrainHooks, train};
use crate::{Error, Result};
use burn::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

/// Picks the training images to poison (indices into `set`).
///
/// Dirty-label attacks take `round(rate * len)` images among those whose label the attack
/// changes (all-to-one: every non-target image; all-to-all: every image); clean-label attacks
/// take `round(rate * count)` of the target class; training-control attacks poison in the
/// training loop and pick none here.
pub fn choose_poisoned(attack: &Attack, set: &ImageSet) -> Result<Vec<usize>> {
    let c = &attack.config;
    if c.kind.is_training_control() {
        return Ok(Vec::new());
    }
    let candidates: Vec<usize> = (0..set.len())
        .filter(|&i| {
            let y = set.labels[i] as usize;
            match c.kind.is_clean_label() {
                true => y == c.target,
                false => c.all_to_all || y != c.target,
            }
        })
        .collect();
    let base = match c.kind.is_clean_label() {
        true => candidates.len(),
        false => set.len(),
    };
    let count = (c.poison_rate * base as f64).round() as usize;
    if count == 0 {
        return Err(Error::config(
            "poison-rate",
            format!(
                "{} of {} {} images poisons none; raise the rate",
                c.poison_rate,
                base,
                match c.kind.is_clean_label() {
                    true => "target-class",
                    false => "training",
                }
            ),
        ));
    }
    if count > candidates.len() {
        return Err(Error::config(
            "poison-rate",
            format!(
                "asks for {count} poisoned images but only {} images can be poisoned",
                candidates.len()
            ),
        ));
    }
    // `candidates` is increasing, so the picked images stay in increasing order.
    Ok(Rng::from_parts(&[c.seed, 0x0090_150A])
        .sample_sorted(candidates.len(), count)
        .into_iter()
        .map(|i| candidates[i])
        .collect())
}

/// Stamps `trigger` on the images at `indices` of `set`, in place, rounding to 8 bits.
pub fn stamp_images(set: &mut ImageSet, indices: &[usize], trigger: &Trigger, device: &Device) {
    let n = set.image_len();
    for chunk in indices.chunks(256) {
        let mut host = Vec::with_capacity(chunk.len() * n);
        for &i in chunk {
            host.extend(set.image(i).iter().map(|&v| v as f32 / 255.0));
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(host, [chunk.len(), set.channels, set.height, set.width]),
            device,
        );
        let stamped = super::trigger::to_u8(trigger.apply(x));
        for (k, &i) in chunk.iter().enumerate() {
            set.pixels[i * n..(i + 1) * n].copy_from_slice(&stamped[k * n..(k + 1) * n]);
        }
    }
}

/// The images an ASR is measured on: every test image whose label the attack changes
/// (all-to-one: the non-target classes; all-to-all: all), labelled with the attack's target.
pub fn asr_set(attack: &Attack, test: &ImageSet) -> ImageSet {
    let c = &attack.config;
    let keep: Vec<usize> = (0..test.len())
        .filter(|&i| c.all_to_all || test.labels[i] as usize != c.target)
        .collect();
    let mut set = test.subset(&keep);
    for l in &mut set.labels {
        *l = c.target_of(*l as usize, test.num_classes) as u16;
    }
    set
}

/// ASR of `model` under a static-trigger attack, on the test images the attack changes.
pub fn attack_success_rate(
    model: &Classifier,
    attack: &Attack,
    test: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    let trigger = attack.trigger.as_ref().ok_or_else(|| {
        Error::config(
            "attack",
            "IAB's trigger comes from its generator; use the IAB evaluator",
        )
    })?;
    let set = Arc::new(asr_set(attack, test));
    Ok(triggered_accuracy(
        model,
        &set,
        &|x| trigger.apply(x),
        batch_size,
        device,
    ))
}

/// LC's clean model made by the attack run itself when none is given: trained into
/// `OUT/clean-model` (with the attack run's own training settings) as the first step of the run's
/// preparation, after the run has written `checkpoint/started.json`. A run stopped while
/// training it continues it on `--resume`; one stopped later reuses it.
pub struct OwnCleanModel {
    pub config: TrainConfig,
    pub selected: Selected,
    /// Receives the clean model's training progress.
    pub observer: Box<dyn Observer>,
}

impl OwnCleanModel {
    /// Whether `out` (the attack run's folder) already holds the finished clean model.
    pub fn is_done(out: &Path) -> bool {
        out.join(files::LC_CLEAN_MODEL).join(files::MODEL).is_file()
    }

    /// Trains the clean model into `out/clean-model` unless it is there, continuing a stopped
    /// training, and loads it.
    fn make(&mut self, out: &Path, device: &Device) -> Result<Classifier> {
        let dir = out.join(files::LC_CLEAN_MODEL);
        let in_dir = |e: Error| Error::artifact(&dir, format!("LC's clean model: {e}"));
        if !Self::is_done(out) {
            let resume = checkpoint::resumable(&dir.join(files::CHECKPOINT_DIR));
            let trained = train(
                &self.config,
                &dir,
                resume,
                &self.selected,
                self.observer.as_mut(),
            );
            self.observer.finish();
            trained.map_err(in_dir)?;
        }
        Ok(load_run_model(&dir, device).map_err(in_dir)?.model)
    }
}

/// An attack plugged into the training loop.
pub struct AttackHooks {
    pub attack: Attack,
    /// LC: the clean model the adversarial images are made on.
    pub clean_model: Option<Classifier>,
    /// LC without a given clean model: how [`TrainHooks::prepare`] makes one.
    own_clean_model: Option<OwnCleanModel>,
    /// WaNet: post-warp augmentation.
    pub wanet_augment: WanetAugment,
    poisoned_local: HashSet<usize>,
    asr_set: Option<Arc<ImageSet>>,
    eval_batch_size: usize,
}

impl AttackHooks {
    pub fn new(attack: Attack, clean_model: Option<Classifier>, flip: bool) -> Result<Self> {
        if attack.config.kind == AttackKind::Lc && clean_model.is_none() {
            return Err(Error::config(
                "clean-model",
                "LC makes its adversarial images on a clean model; none was given",
            ));
        }
        Ok(Self::with_clean_model(attack, clean_model, None, flip))
    }

    /// LC hooks that train their own clean model in [`TrainHooks::prepare`] ([`OwnCleanModel`]).
    pub fn with_own_clean_model(attack: Attack, own: OwnCleanModel, flip: bool) -> Result<Self> {
        if attack.config.kind != AttackKind::Lc {
            return Err(Error::config(
                "clean-model",
                format!(
                    "only LC uses a clean model, not {}",
                    attack.config.kind.name()
                ),
            ));
        }
        Ok(Self::with_clean_model(attack, None, Some(own), flip))
    }

    fn with_clean_model(
        attack: Attack,
        clean_model: Option<Classifier>,
        own_clean_model: Option<OwnCleanModel>,
        flip: bool,
    ) -> Self {
        AttackHooks {
            attack,
            clean_model,
            own_clean_model,
            wanet_augment: WanetAugment::standard(flip),
            poisoned_local: HashSet::new(),
            asr_set: None,
            eval_batch_size: 256,
        }
    }

    fn trigger(&self) -> &Trigger {
        self.attack
            .trigger
            .as_ref()
            .expect("static-trigger attacks have a trigger")
    }

    /// WaNet: the first `rho_a` of the batch warped and relabelled, the next `cross_ratio`
    /// times as many warped with a noisy grid and labels kept, then the post-warp augmentation.
    fn wanet_batch(
        &self,
        x: Tensor<4>,
        y: Tensor<1, Int>,
        labels: &[i64],
        rng: &mut Rng,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let c = &self.attack.config;
        let [n, _, h, w] = x.dims();
        let Some(Trigger::Warp { grid, .. }) = &self.attack.trigger else {
            unreachable!("WaNet has a warp trigger")
        };
        let nb = ((n as f64) * c.poison_rate) as usize;
        let nc = (((nb as f64) * c.wanet_cross_ratio) as usize).min(n - nb);
        let device = x.device();
        let mut grids: Vec<f32> = Vec::with_capacity(n * h * w * 2);
        let identity = warp::identity_grid(h, w);
        for i in 0..n {
            if i < nb {
                grids.extend_from_slice(grid);
            } else if i < nb + nc {
                grids.extend(warp::noise_grid(grid, h, rng));
            } else {
                grids.extend_from_slice(&identity);
            }
        }
        let warped = warp::grid_sample(
            x,
            Tensor::from_data(TensorData::new(grids, [n, h, w, 2]), &device),
        );
        let a = self.wanet_augment;
        let mut aug: Vec<f32> = Vec::with_capacity(n * h * w * 2);
        for _ in 0..n {
            aug.extend(warp::augment_grid(h, w, &a, rng));
        }
        let out = warp::grid_sample(
            warped,
            Tensor::from_data(TensorData::new(aug, [n, h, w, 2]), &device),
        );
        let _ = y;
        let new_labels: Vec<i64> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| match i < nb {
                true => c.target_of(l as usize, self.attack.num_classes) as i64,
                false => l,
            })
            .collect();
        (out, crate::engine::eval::labels_tensor(new_labels, &device))
    }
}

impl TrainHooks for AttackHooks {
    fn canonical(&self) -> crate::engine::run_dir::Canonical {
        super::canonical_run
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
        original_indices: &[usize],
        test: &ImageSet,
        out: &Path,
        device: &Device,
    ) -> Result<ImageSet> {
        if self.clean_model.is_none()
            && let Some(own) = self.own_clean_model.as_mut()
        {
            self.clean_model = Some(own.make(out, device)?);
        }
        let train = self.poison_training_set(train, original_indices, test, device)?;
        self.attack.save(out)?;
        Ok(train)
    }

    fn batch(
        &mut self,
        x: Tensor<4>,
        y: Tensor<1, Int>,
        batch: &HostBatch,
        seed: u64,
        epoch: usize,
        index: usize,
    ) -> (Tensor<4>, Tensor<1, Int>, Option<Tensor<1>>) {
        let (x, y) = self.poison_batch(x, y, batch, seed, epoch, index);
        (x, y, None)
    }

    fn asr_meter(&self, device: &Device) -> Option<AsrMeter> {
        Some(AsrMeter::new(
            self.asr_set.clone()?,
            Arc::new(super::Backdoor::Static(self.attack.trigger.clone()?)),
            self.eval_batch_size,
            device,
        ))
    }
}

impl AttackHooks {
    /// Chooses the poisoned images (recorded in `attack.poisoned` as indices into the data set's
    /// training part, through `original_indices`), makes LC's adversarial images, and stamps
    /// before-augmentation triggers; after this, [`AttackHooks::poison_batch`] poisons batches.
    /// Writes nothing: [`TrainHooks::prepare`] saves the attack afterwards.
    pub fn poison_training_set(
        &mut self,
        mut train: ImageSet,
        original_indices: &[usize],
        test: &ImageSet,
        device: &Device,
    ) -> Result<ImageSet> {
        let local = choose_poisoned(&self.attack, &train)?;
        self.attack.poisoned = local.iter().map(|&i| original_indices[i]).collect();
        let c = self.attack.config.clone();
        if c.kind == AttackKind::Lc {
            let model = self.clean_model.as_ref().ok_or_else(|| {
                Error::config(
                    "clean-model",
                    "LC's own clean model is made by the run's preparation, which has not run",
                )
            })?;
            let subset = train.subset(&local);
            let adv = pgd_untargeted(
                model,
                &subset,
                &Pgd {
                    eps: c.lc_eps,
                    step: c.lc_step,
                    steps: c.lc_steps,
                    batch_size: 128,
                },
                device,
            );
            let n = train.image_len();
            for (k, &i) in local.iter().enumerate() {
                train.pixels[i * n..(i + 1) * n].copy_from_slice(&adv[k * n..(k + 1) * n]);
            }
        }
        if c.stamping == Stamping::BeforeAugment && !c.kind.is_training_control() {
            stamp_images(&mut train, &local, self.trigger(), device);
            if !c.kind.is_clean_label() {
                for &i in &local {
                    train.labels[i] =
                        c.target_of(train.labels[i] as usize, train.num_classes) as u16;
                }
            }
        }
        self.poisoned_local = local.into_iter().collect();
        self.asr_set = Some(Arc::new(asr_set(&self.attack, test)));
        Ok(train)
    }

    /// The batch with the attack applied.
    pub fn poison_batch(
        &self,
        x: Tensor<4>,
        y: Tensor<1, Int>,
        batch: &HostBatch,
        seed: u64,
        epoch: usize,
        index: usize,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let c = &self.attack.config;
        if c.kind == AttackKind::Wanet {
            let mut rng = Rng::from_parts(&[seed, epoch as u64, index as u64, 0x3A4E7]);
            return self.wanet_batch(x, y, &batch.labels, &mut rng);
        }
        if c.stamping != Stamping::AfterAugment || c.kind.is_training_control() {
            return (x, y);
        }
        let rows: Vec<bool> = batch
            .indices
            .iter()
            .map(|i| self.poisoned_local.contains(i))
            .collect();
        if !rows.iter().any(|&r| r) {
            return (x, y);
        }
        let [n, ..] = x.dims();
        let device = x.device();
        let wrow: Vec<f32> = rows.iter().map(|&r| r as u8 as f32).collect();
        let wt = Tensor::<4>::from_data(TensorData::new(wrow, [n, 1, 1, 1]), &device);
        let stamped = self.trigger().apply(x.clone());
        let x = x.clone() + (stamped - x) * wt;
        if c.kind.is_clean_label() {
            return (x, y);
        }
        let labels: Vec<i64> = batch
            .labels
            .iter()
            .zip(&rows)
            .map(|(&l, &r)| match r {
                true => c.target_of(l as usize, self.attack.num_classes) as i64,
                false => l,
            })
            .collect();
        (x, crate::engine::eval::labels_tensor(labels, &device))
    }
}
