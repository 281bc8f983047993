//! ResNet-18 ("Deep Residual Learning for Image Recognition", He et al. 2016): a stem,
//! BasicBlocks [2,2,2,2] at widths w, 2w, 4w, 8w, global average pool, linear classifier. Two
//! stems: the CIFAR variant of BackdoorBench and the paper's code (3x3 stride-1 convolution, no
//! max-pool: the stages see the whole image) and the original ImageNet one, torchvision's
//! `resnet18` (7x7 stride-2 convolution with padding 3, BN, ReLU, 3x3 stride-2 max-pool with
//! padding 1: the stages see a quarter of the side).

use super::Features;
use super::blocks::{BasicBlock, bn, conv, global_avg_pool};
use burn::module::Module;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;

/// Which stem a [`ResNet18`] has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stem {
    /// 3x3 stride-1 convolution, BN, ReLU (32x32 inputs).
    #[default]
    Cifar,
    /// 7x7 stride-2 convolution, BN, ReLU, 3x3 stride-2 max-pool (ImageNet-size inputs).
    Imagenet,
}

impl Stem {
    /// The stem convolution's kernel side.
    pub fn kernel(self) -> usize {
        match self {
            Stem::Cifar => 3,
            Stem::Imagenet => 7,
        }
    }

    /// How many times smaller the first stage's side is than the image's.
    pub fn reduction(self) -> usize {
        match self {
            Stem::Cifar => 1,
            Stem::Imagenet => 4,
        }
    }
}

/// ResNet-18 with either stem.
#[derive(Module, Debug)]
pub struct ResNet18 {
    #[module(skip)]
    pub stem: Stem,
    pub stem_conv: burn::nn::conv::Conv2d,
    pub stem_bn: BatchNorm,
    pub layer1: Vec<BasicBlock>,
    pub layer2: Vec<BasicBlock>,
    pub layer3: Vec<BasicBlock>,
    pub layer4: Vec<BasicBlock>,
    pub fc: Linear,
}

/// Two blocks, the first with `stride`.
pub(crate) fn stage<B>(
    c_in: usize,
    c_out: usize,
    stride: usize,
    make: impl Fn(usize, usize, usize) -> B,
) -> Vec<B> {
    vec![make(c_in, c_out, stride), make(c_out, c_out, 1)]
}

impl ResNet18 {
    /// A freshly initialised network with base width `width`, `num_classes` outputs and the
    /// stem `stem`.
    pub fn new(stem: Stem, width: usize, num_classes: usize, device: &Device) -> Self {
        let w = width;
        let block = |i, o, s| BasicBlock::new(i, o, s, device);
        let stride = match stem {
            Stem::Cifar => 1,
            Stem::Imagenet => 2,
        };
        ResNet18 {
            stem,
            stem_conv: conv(3, w, stem.kernel(), stride, device),
            stem_bn: bn(w, device),
            layer1: stage(w, w, 1, block),
            layer2: stage(w, 2 * w, 2, block),
            layer3: stage(2 * w, 4 * w, 2, block),
            layer4: stage(4 * w, 8 * w, 2, block),
            fc: LinearConfig::new(8 * w, num_classes).init(device),
        }
    }

    /// Forward pass keeping the intermediate outputs.
    pub fn features(&self, x: Tensor<4>) -> Features {
        let run = |blocks: &[BasicBlock], x: Tensor<4>| blocks.iter().fold(x, |x, b| b.forward(x));
        // [N, w, H, W] (CIFAR), [N, w, H/2, W/2] (ImageNet)
        let x = crate::cpu::batch_norm_relu(&self.stem_bn, crate::cpu::conv2d(&self.stem_conv, x));
        let x = match self.stem {
            Stem::Cifar => x,
            // [N, w, H/4, W/4]; the input is a ReLU's output, so the padding (-inf in PyTorch)
            // never wins either way.
            Stem::Imagenet => max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([2, 2])
                    .with_padding([1, 1]),
            ),
        };
        // With r the stem's reduction (1 or 4):
        let s1 = run(&self.layer1, x); // [N, w, H/r, W/r]
        let s2 = run(&self.layer2, s1.clone()); // [N, 2w, H/2r, W/2r]
        let s3 = run(&self.layer3, s2.clone()); // [N, 4w, H/4r, W/4r]
        let (s4, penultimate, logits) = self.tail(s3.clone());
        Features {
            stages: [s1, s2, s3, s4],
            penultimate,
            logits,
        }
    }

    /// The last stage, pooling and classifier from the third stage's output: the last stage's
    /// output `[N, 8w, H/8r, W/8r]`, the pooled features `[N, 8w]` and the logits `[N, K]`.
    pub fn tail(&self, s3: Tensor<4>) -> (Tensor<4>, Tensor<2>, Tensor<2>) {
        let s4 = self.layer4.iter().fold(s3, |x, b| b.forward(x));
        let penultimate = global_avg_pool(s4.clone());
        let logits = self.fc.forward(penultimate.clone());
        (s4, penultimate, logits)
    }
}
