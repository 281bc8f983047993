//! Warping for WaNet: the smooth warp field, bilinear `grid_sample` (align_corners, zero padding)
//! and the per-sample affine grids of WaNet's post-warp augmentation.
//!
//! Grids are `[N, H, W, 2]` with `(x, y)` in `[-1, 1]` as in PyTorch's `grid_sample`.

use crate::rng::Rng;
use burn::prelude::*;

/// PyTorch's cubic convolution coefficient.
const CUBIC_A: f64 = -0.75;

fn cubic_weights(t: f64) -> [f64; 4] {
    let a = CUBIC_A;
    let w0 = ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a;
    let w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
    let u = 1.0 - t;
    let w2 = ((a + 2.0) * u - (a + 3.0)) * u * u + 1.0;
    let w3 = ((a * (u + 1.0) - 5.0 * a) * (u + 1.0) + 8.0 * a) * (u + 1.0) - 4.0 * a;
    [w0, w1, w2, w3]
}

/// Bicubic upsampling of one `k x k` plane to `h x w` with `align_corners=True`, border
/// clamped, as PyTorch's `F.interpolate(mode="bicubic", align_corners=True)`.
pub fn bicubic_upsample(plane: &[f32], k: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(plane.len(), k * k);
    let scale = |out: usize| {
        if out > 1 {
            (k as f64 - 1.0) / (out as f64 - 1.0)
        } else {
            0.0
        }
    };
    let (sy, sx) = (scale(h), scale(w));
    let at = |r: isize, c: isize| {
        let r = r.clamp(0, k as isize - 1) as usize;
        let c = c.clamp(0, k as isize - 1) as usize;
        plane[r * k + c] as f64
    };
    let mut out = vec![0.0f32; h * w];
    for i in 0..h {
        let ry = sy * i as f64;
        let iy = ry.floor();
        let wy = cubic_weights(ry - iy);
        for j in 0..w {
            let rx = sx * j as f64;
            let ix = rx.floor();
            let wx = cubic_weights(rx - ix);
            let mut acc = 0.0;
            for (dy, wyv) in wy.iter().enumerate() {
                let mut row = 0.0;
                for (dx, wxv) in wx.iter().enumerate() {
                    row += wxv * at(iy as isize - 1 + dy as isize, ix as isize - 1 + dx as isize);
                }
                acc += wyv * row;
            }
            out[i * w + j] = acc as f32;
        }
    }
    out
}

/// WaNet's random control points: `U(-1,1)^{2 x k x k}` divided by their mean absolute value.
pub fn wanet_control_points(k: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::from_parts(&[seed, 0x3A4E7]);
    let ins: Vec<f32> = (0..2 * k * k).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    let mean_abs = ins.iter().map(|v| v.abs()).sum::<f32>() / ins.len() as f32;
    ins.iter().map(|v| v / mean_abs).collect()
}

/// `linspace(-1, 1, n)[i]`.
fn lin(i: usize, n: usize) -> f32 {
    if n > 1 {
        -1.0 + 2.0 * i as f32 / (n - 1) as f32
    } else {
        0.0
    }
}

/// The identity grid `[H, W, 2]`.
pub fn identity_grid(h: usize, w: usize) -> Vec<f32> {
    let mut g = Vec::with_capacity(h * w * 2);
    for i in 0..h {
        for j in 0..w {
            g.push(lin(j, w));
            g.push(lin(i, h));
        }
    }
    g
}

/// WaNet's warp grid `clamp(identity + s * upsample(ins) / H, -1, 1)`, `[H, W, 2]`.
pub fn wanet_grid(ins: &[f32], k: usize, h: usize, w: usize, s: f32) -> Vec<f32> {
    assert_eq!(
        ins.len(),
        2 * k * k,
        "WaNet control points must be 2 x k x k"
    );
    let nx = bicubic_upsample(&ins[..k * k], k, h, w);
    let ny = bicubic_upsample(&ins[k * k..], k, h, w);
    let mut g = identity_grid(h, w);
    for p in 0..h * w {
        g[2 * p] = (g[2 * p] + s * nx[p] / h as f32).clamp(-1.0, 1.0);
        g[2 * p + 1] = (g[2 * p + 1] + s * ny[p] / h as f32).clamp(-1.0, 1.0);
    }
    g
}

/// WaNet's noise-mode grid: `clamp(grid + U(-1,1)^{H x W x 2} / H, -1, 1)`.
pub fn noise_grid(grid: &[f32], h: usize, rng: &mut Rng) -> Vec<f32> {
    grid.iter()
        .map(|&g| (g + (rng.next_f32() * 2.0 - 1.0) / h as f32).clamp(-1.0, 1.0))
        .collect()
}

/// WaNet's post-warp augmentation (method spec): random crop with padding 5 (probability 0.8),
/// rotation uniform in +-10 degrees about the centre (probability 0.5), horizontal flip
/// (probability 1/2, where allowed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WanetAugment {
    pub pad: usize,
    pub p_crop: f64,
    pub degrees: f64,
    pub p_rotation: f64,
    pub flip: bool,
}

impl WanetAugment {
    pub fn standard(flip: bool) -> Self {
        WanetAugment {
            pad: 5,
            p_crop: 0.8,
            degrees: 10.0,
            p_rotation: 0.5,
            flip,
        }
    }
}

/// One image's draw of `a` as a sampling grid `[H, W, 2]`.
pub fn augment_grid(h: usize, w: usize, a: &WanetAugment, rng: &mut Rng) -> Vec<f32> {
    let (pad, p_crop, deg, p_rot, flip) = (a.pad, a.p_crop, a.degrees, a.p_rotation, a.flip);
    let (mut dx, mut dy) = (0.0f64, 0.0f64);
    if pad > 0 && rng.bernoulli(p_crop) {
        dx = rng.below(2 * pad + 1) as f64 - pad as f64;
        dy = rng.below(2 * pad + 1) as f64 - pad as f64;
    }
    let angle = if deg > 0.0 && rng.bernoulli(p_rot) {
        (rng.next_f64() * 2.0 - 1.0) * deg.to_radians()
    } else {
        0.0
    };
    let flipped = flip && rng.bernoulli(0.5);
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let norm = |v: f64, n: usize| {
        if n > 1 {
            (2.0 * v / (n as f64 - 1.0) - 1.0) as f32
        } else {
            0.0
        }
    };
    let mut g = Vec::with_capacity(h * w * 2);
    for i in 0..h {
        for j in 0..w {
            let px = if flipped {
                w as f64 - 1.0 - j as f64
            } else {
                j as f64
            };
            let (rx, ry) = (px - cx, i as f64 - cy);
            let sx = cos * rx + sin * ry + cx + dx;
            let sy = -sin * rx + cos * ry + cy + dy;
            g.push(norm(sx, w));
            g.push(norm(sy, h));
        }
    }
    g
}

/// Bilinear `grid_sample` (align_corners, zero padding) on `x`'s device: the WGSL kernel on wgpu
/// (values only, no gradient), [`grid_sample_tensor`] elsewhere.
pub fn grid_sample(x: Tensor<4>, grid: Tensor<4>) -> Tensor<4> {
    if crate::kernels::runs_wgsl(&x.device()) {
        crate::kernels::grid_sample(x, grid)
    } else {
        grid_sample_tensor(x, grid)
    }
}

/// Bilinear `grid_sample` with `align_corners=True` and zero padding, in plain tensor operations
/// (differentiable in `x`). `x`: `[N, C, H, W]`; `grid`: `[N, Ho, Wo, 2]`.
pub fn grid_sample_tensor(x: Tensor<4>, grid: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let [gn, ho, wo, two] = grid.dims();
    assert!(gn == n && two == 2, "grid must be [N, Ho, Wo, 2]");
    let m = ho * wo;
    let grid = grid.reshape([n, m, 2]);
    let gx = grid.clone().narrow(2, 0, 1).reshape([n, m]);
    let gy = grid.narrow(2, 1, 1).reshape([n, m]);
    let ix = (gx + 1.0) * (0.5 * (w as f32 - 1.0));
    let iy = (gy + 1.0) * (0.5 * (h as f32 - 1.0));
    let x0 = ix.clone().floor();
    let y0 = iy.clone().floor();
    let fx = ix - x0.clone();
    let fy = iy - y0.clone();
    let flat = x.reshape([n, c, h * w]);
    let mut out: Option<Tensor<3>> = None;
    for (oy, ox) in [(0.0f32, 0.0f32), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)] {
        let xc = x0.clone() + ox;
        let yc = y0.clone() + oy;
        let wx = if ox == 0.0 {
            fx.clone().neg() + 1.0
        } else {
            fx.clone()
        };
        let wy = if oy == 0.0 {
            fy.clone().neg() + 1.0
        } else {
            fy.clone()
        };
        let valid = xc.clone().greater_equal_elem(0.0).float()
            * xc.clone().lower_equal_elem(w as f32 - 1.0).float()
            * yc.clone().greater_equal_elem(0.0).float()
            * yc.clone().lower_equal_elem(h as f32 - 1.0).float();
        let weight = (wx * wy * valid).reshape([n, 1, m]);
        let idx = (yc.clamp(0.0, h as f32 - 1.0) * w as f32 + xc.clamp(0.0, w as f32 - 1.0))
            .int()
            .reshape([n, 1, m])
            .repeat_dim(1, c);
        let v = flat.clone().gather(2, idx) * weight;
        out = Some(match out {
            None => v,
            Some(o) => o + v,
        });
    }
    out.expect("four corners").reshape([n, c, ho, wo])
}

/// The same sampling on the host, one image `[C, H, W]` and one grid `[Ho, Wo, 2]`: the
/// independent reference the tests compare both device implementations with.
pub fn grid_sample_host(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    grid: &[f32],
    ho: usize,
    wo: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; c * ho * wo];
    for p in 0..ho * wo {
        let ix = (grid[2 * p] as f64 + 1.0) * 0.5 * (w as f64 - 1.0);
        let iy = (grid[2 * p + 1] as f64 + 1.0) * 0.5 * (h as f64 - 1.0);
        let (x0, y0) = (ix.floor(), iy.floor());
        let (fx, fy) = (ix - x0, iy - y0);
        for (yy, wy) in [(y0, 1.0 - fy), (y0 + 1.0, fy)] {
            for (xx, wx) in [(x0, 1.0 - fx), (x0 + 1.0, fx)] {
                if xx < 0.0 || yy < 0.0 || xx > w as f64 - 1.0 || yy > h as f64 - 1.0 {
                    continue;
                }
                let src = yy as usize * w + xx as usize;
                for ch in 0..c {
                    out[ch * ho * wo + p] += (wx * wy * x[ch * h * w + src] as f64) as f32;
                }
            }
        }
    }
    out
}
