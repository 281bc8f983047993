//! Building blocks shared by the ResNets.

use crate::cpu::{add_relu, batch_norm, batch_norm_relu, conv2d};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::prelude::*;

/// Kaiming-normal, fan-out, ReLU gain: the method spec's conv initialisation.
pub fn kaiming_fan_out() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: true,
    }
}

/// A bias-free `k`x`k` convolution with "same" padding.
pub fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(false)
        .with_initializer(kaiming_fan_out())
        .init(device)
}

/// Batch normalisation, PyTorch defaults (momentum 0.1, eps 1e-5, weight 1, bias 0).
pub fn bn(c: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c).init(device)
}

/// 1x1 convolution + BN shortcut.
#[derive(Module, Debug)]
pub struct Shortcut {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// ResNet BasicBlock: conv-BN-ReLU-conv-BN plus shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub shortcut: Option<Shortcut>,
}

impl BasicBlock {
    /// A block from `c_in` to `c_out` channels; a projection shortcut when the shape changes.
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| Shortcut {
            conv: conv(c_in, c_out, 1, stride, device),
            bn: bn(c_out, device),
        });
        BasicBlock {
            conv1: conv(c_in, c_out, 3, stride, device),
            bn1: bn(c_out, device),
            conv2: conv(c_out, c_out, 3, 1, device),
            bn2: bn(c_out, device),
            shortcut,
        }
    }

    /// The block's batch normalisations: `bn1`, `bn2`, then the shortcut's.
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = vec![&mut self.bn1, &mut self.bn2];
        if let Some(s) = &mut self.shortcut {
            v.push(&mut s.bn);
        }
        v
    }

    /// # Shapes
    /// `[N, c_in, H, W]` -> `[N, c_out, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = batch_norm_relu(&self.bn1, conv2d(&self.conv1, x.clone()));
        let out = batch_norm(&self.bn2, conv2d(&self.conv2, out));
        let skip = match &self.shortcut {
            Some(s) => batch_norm(&s.bn, conv2d(&s.conv, x)),
            None => x,
        };
        add_relu(out, skip)
    }
}

/// Pre-activation block: BN-ReLU-conv-BN-ReLU-conv plus shortcut (1x1 conv, no BN).
#[derive(Module, Debug)]
pub struct PreActBlock {
    pub bn1: BatchNorm,
    pub conv1: Conv2d,
    pub bn2: BatchNorm,
    pub conv2: Conv2d,
    pub shortcut: Option<Conv2d>,
}

impl PreActBlock {
    /// A block from `c_in` to `c_out` channels.
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        PreActBlock {
            bn1: bn(c_in, device),
            conv1: conv(c_in, c_out, 3, stride, device),
            bn2: bn(c_out, device),
            conv2: conv(c_out, c_out, 3, 1, device),
            shortcut: (stride != 1 || c_in != c_out).then(|| conv(c_in, c_out, 1, stride, device)),
        }
    }

    /// The block's batch normalisations: `bn1`, `bn2`.
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        vec![&mut self.bn1, &mut self.bn2]
    }

    /// # Shapes
    /// `[N, c_in, H, W]` -> `[N, c_out, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = batch_norm_relu(&self.bn1, x.clone());
        let skip = match &self.shortcut {
            Some(c) => conv2d(c, out.clone()),
            None => x,
        };
        let out = conv2d(&self.conv1, out);
        let out = conv2d(&self.conv2, batch_norm_relu(&self.bn2, out));
        out + skip
    }
}

/// Global average pooling `[N, C, H, W]` -> `[N, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}
