//! CIFAR ResNet-18 ("Deep Residual Learning for Image Recognition", He et al. 2016, in the
//! CIFAR variant of BackdoorBench and the paper's code): a 3x3 stride-1 stem without max-pool,
//! BasicBlocks [2,2,2,2] at widths w, 2w, 4w, 8w, global average pool, linear classifier.

use super::Features;
use super::blocks::{BasicBlock, bn, conv, global_avg_pool};
use burn::module::Module;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::prelude::*;

/// ResNet-18 for 32x32 inputs.
#[derive(Module, Debug)]
pub struct ResNet18 {
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
    /// A freshly initialised network with base width `width` and `num_classes` outputs.
    pub fn new(width: usize, num_classes: usize, device: &Device) -> Self {
        let w = width;
        let block = |i, o, s| BasicBlock::new(i, o, s, device);
        ResNet18 {
            stem_conv: conv(3, w, 3, 1, device),
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
        let x = crate::cpu::batch_norm_relu(&self.stem_bn, crate::cpu::conv2d(&self.stem_conv, x)); // [N, w, 32, 32]
        let s1 = run(&self.layer1, x); // [N, w, 32, 32]
        let s2 = run(&self.layer2, s1.clone()); // [N, 2w, 16, 16]
        let s3 = run(&self.layer3, s2.clone()); // [N, 4w, 8, 8]
        let (s4, penultimate, logits) = self.tail(s3.clone());
        Features {
            stages: [s1, s2, s3, s4],
            penultimate,
            logits,
        }
    }

    /// The last stage, pooling and classifier from the third stage's output: the last stage's
    /// output `[N, 8w, H/8, W/8]`, the pooled features `[N, 8w]` and the logits `[N, K]`.
    pub fn tail(&self, s3: Tensor<4>) -> (Tensor<4>, Tensor<2>, Tensor<2>) {
        let s4 = self.layer4.iter().fold(s3, |x, b| b.forward(x));
        let penultimate = global_avg_pool(s4.clone());
        let logits = self.fc.forward(penultimate.clone());
        (s4, penultimate, logits)
    }
}
