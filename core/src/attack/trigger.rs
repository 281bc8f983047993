//! Static triggers: a function of the image alone, the same for every image.
//!
//! Each trigger has a plain-tensor implementation ([`Trigger::apply_tensor`]) that runs on any
//! device, and [`Trigger::apply`] that uses the hand-written WGSL kernels on wgpu devices and the
//! tensor implementation elsewhere. Images are NCHW `f32` in `[0,1]`.

use super::warp;
use crate::rng::Rng;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What is wrong with a `[C, H, W]` image shape read from a file, if anything: triggers need 1 to
/// 4 channels and sides of 3 to [`crate::data::MAX_IMAGE_SIDE`] pixels.
pub fn image_shape_problem([c, h, w]: [usize; 3]) -> Option<String> {
    let sides = 3..=crate::data::MAX_IMAGE_SIDE;
    (!(1..=4).contains(&c) || !sides.contains(&h) || !sides.contains(&w)).then(|| {
        format!(
            "image shape [{c}, {h}, {w}] out of range (1 to 4 channels, sides 3..={})",
            crate::data::MAX_IMAGE_SIDE
        )
    })
}

/// BadNets' 3x3 pattern, the same on every channel (method spec).
pub const BADNETS_PATTERN: [[f32; 3]; 3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]];

/// Where a 3x3 patch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corner {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

/// A trigger that depends only on the image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// `x' = x (1 - m) + p m` with a 0/1 mask `m` (`H*W`, all channels) and a pattern `p`
    /// (`C*H*W`): BadNets (one corner) and LC (four corners).
    Patch {
        channels: usize,
        height: usize,
        width: usize,
        mask: Vec<u8>,
        /// Pattern values times 255.
        pattern: Vec<u8>,
    },
    /// `x' = (1 - a) x + a p` (Blended).
    Blend {
        channels: usize,
        height: usize,
        width: usize,
        alpha: f32,
        /// Pattern values times 255.
        pattern: Vec<u8>,
    },
    /// `x' = clip(x + d sin(2 pi j f / W), 0, 1)` along columns `j` (SIG).
    Signal {
        channels: usize,
        height: usize,
        width: usize,
        delta: f32,
        frequency: f32,
    },
    /// `x' = grid_sample(x, grid)`, bilinear, align_corners (WaNet). `grid` is `H*W*2`, `(x, y)`
    /// in `[-1,1]` per output pixel.
    Warp {
        channels: usize,
        height: usize,
        width: usize,
        #[serde(skip)]
        grid: Vec<f32>,
    },
}

/// The smallest image side (of the shorter side) that gets BadNets' large patch
/// ([`Trigger::badnets`]); smaller images get the method spec's 3x3 corner.
pub const LARGE_BADNETS_SIDE: usize = 64;

/// `v * side / 224`, rounded: a position or size of the 224-pixel reference scaled to `side`.
fn scaled_224(v: usize, side: usize) -> usize {
    (v * side + 112) / 224
}

impl Trigger {
    /// BadNets. Images under [`LARGE_BADNETS_SIDE`] pixels (CIFAR-10, GTSRB): the method spec's
    /// 3x3 checkerboard at the lower-right corner. Larger ones: the authors' ImageNet-10 patch
    /// (BCU's `resource/badnet/imagenet10_random_15by15_blackwhite.npy`, their
    /// `config/attack/badnet/imagenet10.yaml`), at 224x224 a 15x15 one-pixel checkerboard, white
    /// where row + column is odd, at rows 98-112 and columns 194-208 (15 pixels in from the right
    /// edge); other sides scale its size and place (`docs/imagenet10-reference.md`).
    pub fn badnets(channels: usize, height: usize, width: usize) -> Trigger {
        if height.min(width) < LARGE_BADNETS_SIDE {
            return Self::corner_patches(channels, height, width, &[Corner::BottomRight]);
        }
        let (ph, pw) = (scaled_224(15, height), scaled_224(15, width));
        let at = (scaled_224(98, height), width - 2 * pw);
        Self::patches(channels, height, width, &[at], (ph, pw), |r, c| {
            if (r + c) % 2 == 1 { 255 } else { 0 }
        })
    }

    /// LC: the BadNets pattern copied (not mirrored) at all four corners.
    pub fn four_corners(channels: usize, height: usize, width: usize) -> Trigger {
        use Corner::*;
        Self::corner_patches(
            channels,
            height,
            width,
            &[TopLeft, TopRight, BottomLeft, BottomRight],
        )
    }

    /// 3x3 BadNets patterns at the given corners.
    pub fn corner_patches(
        channels: usize,
        height: usize,
        width: usize,
        corners: &[Corner],
    ) -> Trigger {
        assert!(height >= 3 && width >= 3, "images must be at least 3x3");
        let at: Vec<(usize, usize)> = corners
            .iter()
            .map(|corner| match corner {
                Corner::TopLeft => (0, 0),
                Corner::TopRight => (0, width - 3),
                Corner::BottomLeft => (height - 3, 0),
                Corner::BottomRight => (height - 3, width - 3),
            })
            .collect();
        Self::patches(channels, height, width, &at, (3, 3), |r, c| {
            (BADNETS_PATTERN[r][c] * 255.0) as u8
        })
    }

    /// A [`Trigger::Patch`] of `rows x cols` squares whose top-left pixels are `at`, every
    /// channel of pixel `(r, c)` of a square (relative to its corner) set to `value(r, c)`.
    fn patches(
        channels: usize,
        height: usize,
        width: usize,
        at: &[(usize, usize)],
        (rows, cols): (usize, usize),
        value: impl Fn(usize, usize) -> u8,
    ) -> Trigger {
        let mut mask = vec![0u8; height * width];
        let mut pattern = vec![0u8; channels * height * width];
        for &(r0, c0) in at {
            for r in 0..rows {
                for c in 0..cols {
                    let p = (r0 + r) * width + c0 + c;
                    mask[p] = 1;
                    for ch in 0..channels {
                        pattern[ch * height * width + p] = value(r, c);
                    }
                }
            }
        }
        Trigger::Patch {
            channels,
            height,
            width,
            mask,
            pattern,
        }
    }

    /// Blended: a seeded pattern with every value uniform in `{0, ..., 255}`/255.
    pub fn blended(channels: usize, height: usize, width: usize, alpha: f32, seed: u64) -> Trigger {
        let mut rng = Rng::from_parts(&[seed, 0xB1E4D]);
        let pattern = (0..channels * height * width)
            .map(|_| rng.below(256) as u8)
            .collect();
        Trigger::Blend {
            channels,
            height,
            width,
            alpha,
            pattern,
        }
    }

    /// SIG: the horizontal sinusoid of amplitude `delta` (in `[0,1]` units) and frequency `f`.
    pub fn signal(
        channels: usize,
        height: usize,
        width: usize,
        delta: f32,
        frequency: f32,
    ) -> Trigger {
        Trigger::Signal {
            channels,
            height,
            width,
            delta,
            frequency,
        }
    }

    /// WaNet's fixed warp for `k x k` control points `ins` (`2*k*k`, already normalised) and
    /// strength `s` (method spec).
    pub fn warp(
        channels: usize,
        height: usize,
        width: usize,
        ins: &[f32],
        k: usize,
        s: f32,
    ) -> Trigger {
        Trigger::Warp {
            channels,
            height,
            width,
            grid: warp::wanet_grid(ins, k, height, width, s),
        }
    }

    /// `[C, H, W]` this trigger is made for.
    pub fn shape(&self) -> [usize; 3] {
        match *self {
            Trigger::Patch {
                channels,
                height,
                width,
                ..
            }
            | Trigger::Blend {
                channels,
                height,
                width,
                ..
            }
            | Trigger::Signal {
                channels,
                height,
                width,
                ..
            }
            | Trigger::Warp {
                channels,
                height,
                width,
                ..
            } => [channels, height, width],
        }
    }

    /// What is wrong with a trigger read from a file, if anything: a shape out of range, a mask or
    /// pattern of the wrong length, or a parameter that is not a finite number in range.
    pub fn check(&self) -> Option<String> {
        let shape = self.shape();
        if let Some(reason) = image_shape_problem(shape) {
            return Some(format!("trigger: {reason}"));
        }
        let [c, h, w] = shape;
        let expect = |what: &str, len: usize, want: usize| {
            (len != want).then(|| format!("trigger {what} has {len} values; expected {want}"))
        };
        match self {
            Trigger::Patch { mask, pattern, .. } => expect("mask", mask.len(), h * w)
                .or_else(|| expect("pattern", pattern.len(), c * h * w))
                .or_else(|| {
                    mask.iter()
                        .any(|&m| m > 1)
                        .then(|| "trigger mask values must be 0 or 1".to_string())
                }),
            Trigger::Blend { alpha, pattern, .. } => expect("pattern", pattern.len(), c * h * w)
                .or_else(|| {
                    (!(0.0..=1.0).contains(alpha))
                        .then(|| format!("blend alpha must be in [0, 1]; got {alpha}"))
                }),
            Trigger::Signal {
                delta, frequency, ..
            } => (!(delta.is_finite() && frequency.is_finite()))
                .then(|| "signal delta and frequency must be finite".to_string()),
            Trigger::Warp { grid, .. } => {
                expect("warp grid", grid.len(), h * w * 2).or_else(|| {
                    grid.iter()
                        .any(|v| !v.is_finite())
                        .then(|| "warp grid values must be finite".to_string())
                })
            }
        }
    }

    /// The SIG signal value at column `j`.
    pub fn signal_value(delta: f32, frequency: f32, width: usize, j: usize) -> f32 {
        delta * (2.0 * std::f32::consts::PI * j as f32 * frequency / width as f32).sin()
    }

    /// Applies the trigger with plain tensor operations (the reference for the WGSL kernels).
    pub fn apply_tensor(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        assert_eq!(
            [c, h, w],
            self.shape(),
            "trigger made for another image shape"
        );
        let device = x.device();
        match self {
            Trigger::Patch { mask, pattern, .. } => {
                let m = u8_tensor(mask, [1, 1, h, w], 1.0, &device);
                let p = u8_tensor(pattern, [1, c, h, w], 1.0 / 255.0, &device);
                let keep = m.clone().neg().add_scalar(1.0);
                x * keep + p * m
            }
            Trigger::Blend { alpha, pattern, .. } => {
                let p = u8_tensor(pattern, [1, c, h, w], 1.0 / 255.0, &device);
                x * (1.0 - alpha) + p * *alpha
            }
            Trigger::Signal {
                delta, frequency, ..
            } => {
                let row: Vec<f32> = (0..w)
                    .map(|j| Self::signal_value(*delta, *frequency, w, j))
                    .collect();
                let s = Tensor::<4>::from_data(TensorData::new(row, [1, 1, 1, w]), &device);
                (x + s).clamp(0.0, 1.0)
            }
            Trigger::Warp { grid, .. } => {
                let g =
                    Tensor::<4>::from_data(TensorData::new(grid.clone(), [1, h, w, 2]), &device)
                        .repeat_dim(0, n);
                warp::grid_sample_tensor(x, g)
            }
        }
    }

    /// Applies the trigger on `x`'s device: the WGSL kernels on wgpu, tensor operations elsewhere.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        if !crate::kernels::runs_wgsl(&x.device()) {
            return self.apply_tensor(x);
        }
        self.apply_kernel(x)
    }

    /// Applies the trigger with the hand-written WGSL kernels (wgpu devices only).
    pub fn apply_kernel(&self, x: Tensor<4>) -> Tensor<4> {
        use crate::kernels;
        let [n, c, h, w] = x.dims();
        assert_eq!(
            [c, h, w],
            self.shape(),
            "trigger made for another image shape"
        );
        let device = x.device().inner();
        match self {
            Trigger::Patch { mask, pattern, .. } => kernels::stamp_patch(
                x,
                u8_tensor(mask, [1, 1, h, w], 1.0, &device),
                u8_tensor(pattern, [1, c, h, w], 1.0 / 255.0, &device),
            ),
            Trigger::Blend { alpha, pattern, .. } => kernels::blend(
                x,
                u8_tensor(pattern, [1, c, h, w], 1.0 / 255.0, &device),
                *alpha,
            ),
            Trigger::Signal {
                delta, frequency, ..
            } => kernels::sig(x, *delta, *frequency),
            Trigger::Warp { grid, .. } => {
                let g =
                    Tensor::<4>::from_data(TensorData::new(grid.clone(), [1, h, w, 2]), &device)
                        .repeat_dim(0, n);
                kernels::grid_sample(x, g)
            }
        }
    }

    /// Applies the trigger to one planar `u8` image, rounding back to 8 bits (dataset poisoning).
    pub fn apply_u8(&self, image: &[u8], device: &Device) -> Vec<u8> {
        let [c, h, w] = self.shape();
        let x = Tensor::<4>::from_data(
            TensorData::new(
                image.iter().map(|&v| v as f32 / 255.0).collect(),
                [1, c, h, w],
            ),
            device,
        );
        to_u8(self.apply(x))
    }
}

/// A `u8` array as an `f32` tensor scaled by `scale`.
pub(crate) fn u8_tensor<const D: usize>(
    values: &[u8],
    shape: [usize; D],
    scale: f32,
    device: &Device,
) -> Tensor<D> {
    let v: Vec<f32> = values.iter().map(|&b| b as f32 * scale).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Rounds images in `[0,1]` to 8-bit values (as poisoned data sets are stored).
pub fn to_u8<const D: usize>(x: Tensor<D>) -> Vec<u8> {
    x.into_data()
        .try_to_vec::<f32>()
        .expect("f32 tensor")
        .into_iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}
