//! Input-Aware Dynamic attack (IAB): a generator makes a per-image pattern and a mask network a
//! per-image mask; `x' = x + (G(x) - x) * M(x)`.
//!
//! The networks follow the reference code: an encoder of three steps of two 3x3 conv blocks
//! (conv + BN(momentum 0.05) + ReLU) and a 2x2 max-pool, with widths `c, 2c, 4c`; a middle block;
//! a decoder of three steps of a bilinear x2 upsampling and two conv blocks halving the width, the
//! last block without ReLU; output `tanh(x) / (2 + 1e-7) + 0.5`. The mask network is the same
//! with one output channel, thresholded by `tanh(20 m - 10) / (2 + 1e-7) + 0.5`.

use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::{chunk_order, epoch_order, make_batch};
use crate::engine::checkpoint;
use crate::engine::eval::images_tensor;
use crate::optim::adam::{Adam, AdamConfig};
use crate::rng::Rng;
use crate::{Error, Result};
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use std::path::Path;
use std::sync::Arc;

const EPSILON: f32 = 1e-7;

/// 3x3 conv (padding 1, bias) + BN (momentum 0.05) + optional ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    #[module(skip)]
    pub relu: bool,
}

impl ConvBlock {
    fn new(c_in: usize, c_out: usize, relu: bool, device: &Device) -> Self {
        ConvBlock {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            bn: BatchNormConfig::new(c_out).with_momentum(0.05).init(device),
            relu,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = crate::cpu::batch_norm(&self.bn, crate::cpu::conv2d(&self.conv, x));
        if self.relu { relu(y) } else { y }
    }
}

/// The encoder-decoder shared by the pattern generator and the mask network.
#[derive(Module, Debug)]
pub struct Generator {
    pub down: Vec<ConvBlock>,
    pub middle: ConvBlock,
    pub up: Vec<ConvBlock>,
}

/// Encoder/decoder steps: images must be divisible by `2^STEPS`.
pub const STEPS: usize = 3;

impl Generator {
    /// A network from `c_in` image channels to `c_out` output channels with base width `width`.
    pub fn new(c_in: usize, c_out: usize, width: usize, device: &Device) -> Self {
        let mut down = Vec::new();
        let (mut cur, mut next) = (c_in, width);
        for step in 0..STEPS {
            down.push(ConvBlock::new(cur, next, true, device));
            down.push(ConvBlock::new(next, next, true, device));
            if step < STEPS - 1 {
                cur = next;
                next *= 2;
            }
        }
        let middle = ConvBlock::new(next, next, true, device);
        let mut up = Vec::new();
        cur = next;
        next = cur / 2;
        for step in 0..STEPS {
            up.push(ConvBlock::new(cur, cur, true, device));
            up.push(ConvBlock::new(cur, next, step < STEPS - 1, device));
            cur = next;
            next /= 2;
            if step + 2 == STEPS {
                next = c_out;
            }
        }
        Generator { down, middle, up }
    }

    /// Output in `(0, 1)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = x;
        for step in 0..STEPS {
            x = self.down[2 * step].forward(x);
            x = self.down[2 * step + 1].forward(x);
            x = max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
        }
        x = self.middle.forward(x);
        for step in 0..STEPS {
            x = upsample2x_bilinear(x);
            x = self.up[2 * step].forward(x);
            x = self.up[2 * step + 1].forward(x);
        }
        tanh(x) / (2.0 + EPSILON) + 0.5
    }

    /// The mask network's output threshold.
    pub fn threshold(m: Tensor<4>) -> Tensor<4> {
        tanh(m * 20.0 - 10.0) / (2.0 + EPSILON) + 0.5
    }
}

/// Bilinear x2 upsampling as PyTorch's `nn.Upsample(scale_factor=2, mode="bilinear")`
/// (`align_corners=False`), built from slices and weighted sums so that its backward runs on
/// every backend (CubeCL has no backward for bilinear `interpolate`). Along each axis, output
/// `2k` is `0.75 x[k] + 0.25 x[k-1]` and output `2k+1` is `0.75 x[k] + 0.25 x[k+1]`, with the edge
/// samples repeated.
///
/// # Shapes
/// - input: `[N, C, H, W]`
/// - output: `[N, C, 2H, 2W]`
pub fn upsample2x_bilinear(x: Tensor<4>) -> Tensor<4> {
    upsample_axis(upsample_axis(x, 2), 3)
}

fn upsample_axis(x: Tensor<4>, axis: usize) -> Tensor<4> {
    let dims = x.dims();
    let n = dims[axis];
    let (prev, next) = if n == 1 {
        (x.clone(), x.clone())
    } else {
        (
            Tensor::cat(
                vec![
                    x.clone().narrow(axis, 0, 1),
                    x.clone().narrow(axis, 0, n - 1),
                ],
                axis,
            ),
            Tensor::cat(
                vec![
                    x.clone().narrow(axis, 1, n - 1),
                    x.clone().narrow(axis, n - 1, 1),
                ],
                axis,
            ),
        )
    };
    let even = x.clone() * 0.75 + prev * 0.25;
    let odd = x * 0.75 + next * 0.25;
    let mut out = dims;
    out[axis] = 2 * n;
    Tensor::stack::<5>(vec![even, odd], axis + 1).reshape(out)
}

/// PyTorch's default conv initialisation (weights and biases uniform in `±1/sqrt(fan_in)`),
/// drawn per parameter path from `seed`.
struct DefaultInit {
    seed: u64,
    path: Vec<String>,
    conv_fan_in: Option<(String, usize)>,
}

impl ModuleMapper for DefaultInit {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let leaf = self.path.last().cloned().unwrap_or_default();
        let parent = self.path[..self.path.len().saturating_sub(1)].join(".");
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let fan_in = match (D, leaf.as_str()) {
            (4, "weight") => {
                let f = dims[1] * dims[2] * dims[3];
                self.conv_fan_in = Some((parent.clone(), f));
                Some(f)
            }
            (1, "bias") => match &self.conv_fan_in {
                Some((p, f)) if *p == parent => Some(*f),
                _ => None,
            },
            _ => None,
        };
        let Some(fan_in) = fan_in else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let mut parts = vec![self.seed];
        parts.extend(self.path.join(".").bytes().map(u64::from));
        let mut rng = Rng::from_parts(&parts);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
            .collect();
        let mut fresh = Tensor::<D>::from_data(TensorData::new(values, dims), &tensor.device());
        if tensor.is_require_grad() {
            fresh = fresh.require_grad();
        }
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// A generator initialised from `seed` alone.
pub fn seeded_generator(
    c_in: usize,
    c_out: usize,
    width: usize,
    seed: u64,
    device: &Device,
) -> Generator {
    Generator::new(c_in, c_out, width, device).map(&mut DefaultInit {
        seed,
        path: Vec::new(),
        conv_fan_in: None,
    })
}

/// The pattern generator and the mask network.
#[derive(Clone, Debug)]
pub struct IabNets {
    pub generator: Generator,
    pub mask: Generator,
}

impl IabNets {
    /// Fresh networks for `channels`-channel images.
    pub fn new(channels: usize, width: usize, seed: u64, device: &Device) -> Self {
        IabNets {
            generator: seeded_generator(channels, channels, width, derive(seed, 1), device),
            mask: seeded_generator(channels, 1, width, derive(seed, 2), device),
        }
    }

    /// The per-image mask in `(0, 1)`.
    pub fn mask_of(mask: &Generator, x: Tensor<4>) -> Tensor<4> {
        Generator::threshold(mask.forward(x))
    }

    /// `x + (G(x) - x) * M(x)`.
    pub fn stamp(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.generator.forward(x.clone());
        let m = Self::mask_of(&self.mask, x.clone());
        x.clone() + (p - x) * m
    }

    /// Evaluation copies (batch norm on running statistics, no autodiff).
    pub fn valid(&self) -> IabNets {
        IabNets {
            generator: self.generator.valid(),
            mask: self.mask.valid(),
        }
    }

    /// Writes both networks into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_module(
            &self.generator.valid(),
            &dir.join(super::files::IAB_GENERATOR),
        )?;
        save_module(&self.mask.valid(), &dir.join(super::files::IAB_MASK))
    }

    /// Reads networks saved by [`IabNets::save`].
    pub fn load(dir: &Path, channels: usize, width: usize, device: &Device) -> Result<IabNets> {
        Ok(IabNets {
            generator: load_module(
                Generator::new(channels, channels, width, device),
                &dir.join(super::files::IAB_GENERATOR),
            )?
            .valid(),
            mask: load_module(
                Generator::new(channels, 1, width, device),
                &dir.join(super::files::IAB_MASK),
            )?
            .valid(),
        })
    }

    /// Networks from the bytes of the two files [`IabNets::save`] writes (`names` are what
    /// errors call them).
    pub fn from_bytes(
        generator: Vec<u8>,
        mask: Vec<u8>,
        names: [&Path; 2],
        channels: usize,
        width: usize,
        device: &Device,
    ) -> Result<IabNets> {
        use crate::engine::checkpoint::model_from_bytes;
        Ok(IabNets {
            generator: model_from_bytes(
                Generator::new(channels, channels, width, device),
                generator,
                names[0],
            )?
            .valid(),
            mask: model_from_bytes(Generator::new(channels, 1, width, device), mask, names[1])?
                .valid(),
        })
    }
}

fn derive(seed: u64, k: u64) -> u64 {
    crate::rng::derive_seed(&[seed, 0x1AB, k])
}

pub use crate::engine::checkpoint::{load_model as load_module, save_model as save_module};

/// Per-sample root-mean-square difference of two `[N, C, H, W]` batches, `[N]`.
pub fn rms_distance(a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
    let [n, ..] = a.dims();
    let d = a - b;
    (d.clone() * d)
        .reshape([n as i32, -1])
        .mean_dim(1)
        .reshape([n])
        .sqrt()
}

/// The diversity loss `mean(rms(x1 - x2) / (rms(p1 - p2) + 1e-7))`.
pub fn diversity_loss(x1: Tensor<4>, x2: Tensor<4>, p1: Tensor<4>, p2: Tensor<4>) -> Tensor<1> {
    let di = rms_distance(x1, x2);
    let dp = rms_distance(p1, p2);
    (di / (dp + EPSILON)).mean()
}

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

/// Called with (epoch, epochs, mean loss) after each mask pre-training epoch.
pub type MaskEpochCallback = Box<dyn FnMut(usize, usize, f64) + Send>;

/// IAB plugged into the training loop: the mask network is pre-trained first, then the
/// generator trains with the classifier (CE through the poisoned and cross samples, plus the
/// diversity loss), stepped by its own Adam.
pub struct IabHooks {
    pub attack: super::Attack,
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
    pub fn new(attack: super::Attack, batch_size: usize, augment: Augment, seed: u64) -> Self {
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
        self.asr_set = Some(Arc::new(super::poison::asr_set(&self.attack, test)));
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
        let mask_path = out.join(super::files::IAB_MASK);
        let ckpt = out.join(crate::train::run::files::CHECKPOINT_DIR);
        let mask = if mask_path.is_file() {
            // A run stopped between saving the mask and removing its checkpoints.
            remove_mask_checkpoints(&ckpt, None);
            load_module(Generator::new(ch, 1, c.iab_width, device), &mask_path)?
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
            save_module(&trained, &mask_path)?;
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

    fn after_backward(&mut self, grads: &mut burn::tensor::Gradients, _epoch: usize) {
        if let Some(g) = self.generator.take() {
            let gp = GradientsParams::from_module(grads, &g);
            self.generator = Some(self.adam.step(self.attack.config.iab_lr, g, gp));
        }
    }

    fn asr_meter(&self, device: &Device) -> Option<crate::engine::meter::AsrMeter> {
        Some(crate::engine::meter::AsrMeter::new(
            self.asr_set.clone()?,
            Arc::new(super::Backdoor::Iab(Box::new(self.nets()?))),
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
