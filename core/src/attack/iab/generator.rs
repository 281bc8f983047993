//! IAB's networks: the encoder-decoder shared by the pattern generator and the mask network.

use crate::Result;
use crate::engine::checkpoint::{load_model, save_model};
use crate::rng::Rng;
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use std::path::Path;

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
        save_model(
            &self.generator.valid(),
            &dir.join(super::super::files::IAB_GENERATOR),
        )?;
        save_model(&self.mask.valid(), &dir.join(super::super::files::IAB_MASK))
    }

    /// Reads networks saved by [`IabNets::save`].
    pub fn load(dir: &Path, channels: usize, width: usize, device: &Device) -> Result<IabNets> {
        Ok(IabNets {
            generator: load_model(
                Generator::new(channels, channels, width, device),
                &dir.join(super::super::files::IAB_GENERATOR),
            )?
            .valid(),
            mask: load_model(
                Generator::new(channels, 1, width, device),
                &dir.join(super::super::files::IAB_MASK),
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
