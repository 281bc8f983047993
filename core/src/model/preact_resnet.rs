//! PreAct-ResNet-18 ("Identity Mappings in Deep Residual Networks", He et al. 2016), as in
//! BackdoorBench's `models/preact_resnet.py`: 3x3 stem conv, pre-activation blocks [2,2,2,2],
//! average pool, linear classifier. As there (and in the WaNet and kuangliu code it comes from),
//! no BN-ReLU follows the last block: the pooled features are the last block's sum itself.

use super::Features;
use super::blocks::{PreActBlock, conv, global_avg_pool};
use super::resnet::stage;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// PreAct-ResNet-18 for 32x32 inputs.
#[derive(Module, Debug)]
pub struct PreActResNet18 {
    pub stem_conv: burn::nn::conv::Conv2d,
    pub layer1: Vec<PreActBlock>,
    pub layer2: Vec<PreActBlock>,
    pub layer3: Vec<PreActBlock>,
    pub layer4: Vec<PreActBlock>,
    pub fc: Linear,
}

impl PreActResNet18 {
    /// A freshly initialised network with base width `width` and `num_classes` outputs.
    pub fn new(width: usize, num_classes: usize, device: &Device) -> Self {
        let w = width;
        let block = |i, o, s| PreActBlock::new(i, o, s, device);
        PreActResNet18 {
            stem_conv: conv(3, w, 3, 1, device),
            layer1: stage(w, w, 1, block),
            layer2: stage(w, 2 * w, 2, block),
            layer3: stage(2 * w, 4 * w, 2, block),
            layer4: stage(4 * w, 8 * w, 2, block),
            fc: LinearConfig::new(8 * w, num_classes).init(device),
        }
    }

    /// Forward pass keeping the intermediate outputs.
    pub fn features(&self, x: Tensor<4>) -> Features {
        let run = |blocks: &[PreActBlock], x: Tensor<4>| blocks.iter().fold(x, |x, b| b.forward(x));
        let x = crate::cpu::conv2d(&self.stem_conv, x);
        let s1 = run(&self.layer1, x);
        let s2 = run(&self.layer2, s1.clone());
        let s3 = run(&self.layer3, s2.clone());
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
