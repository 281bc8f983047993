//! Batch normalisation over NCHW `f32` buffers: training forward (batch statistics), inference
//! forward (given statistics) and the training backward, as plain loops on slices.
//!
//! Each channel's sums are computed by one thread, over the batch in order, into eight fixed
//! lanes combined in a fixed order at the end: the result does not depend on how many threads
//! run (rayon only decides which thread takes which channel or plane). Element-wise passes run
//! per `[H, W]` plane, in parallel over planes.

use rayon::prelude::*;

/// The layout of an NCHW activation: `n` images of `c` channels of `hw` values each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Nchw {
    /// Values per channel across the batch.
    pub fn per_channel(&self) -> usize {
        self.n * self.hw
    }

    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channel `ch`'s plane of image `i`.
    fn plane<'a>(&self, x: &'a [f32], i: usize, ch: usize) -> &'a [f32] {
        let start = (i * self.c + ch) * self.hw;
        &x[start..start + self.hw]
    }
}

const LANES: usize = 8;

/// `sum f(a[j], b[j])` over a plane into eight lanes (vectorisable, fixed order).
fn lane_sum(acc: &mut [f32; LANES], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += f(xa[l], xb[l]);
        }
    }
    for (l, (&ra, &rb)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += f(ra, rb);
    }
}

fn combine(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Per-channel mean and biased variance (two passes: the mean, then the squared deviations).
pub fn batch_stats(x: &[f32], s: Nchw) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), s.len(), "batch_stats: buffer and shape differ");
    let m = s.per_channel().max(1) as f32;
    (0..s.c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = [0.0f32; LANES];
            for i in 0..s.n {
                let p = s.plane(x, i, ch);
                lane_sum(&mut acc, p, p, |a, _| a);
            }
            let mean = combine(acc) / m;
            let mut acc = [0.0f32; LANES];
            for i in 0..s.n {
                let p = s.plane(x, i, ch);
                lane_sum(&mut acc, p, p, |a, _| (a - mean) * (a - mean));
            }
            (mean, combine(acc) / m)
        })
        .unzip()
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta`, per channel; with `then_relu`, `relu(y)`
/// in the same pass (as Burn's ReLU computes it: NaN kept, everything else not above 0 is 0).
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    x: &[f32],
    s: Nchw,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    then_relu: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), s.len(), "normalize: buffer and shape differ");
    let mut out = vec![0.0f32; x.len()];
    if s.hw == 0 {
        return out;
    }
    let per_channel = channel_affine(s, gamma, beta, mean, var, eps);
    out.par_chunks_mut(s.hw)
        .zip(x.par_chunks(s.hw))
        .enumerate()
        .for_each(|(plane, (o, xp))| {
            // One plane (a few KiB) copied, then normalised while it is in the cache.
            o.copy_from_slice(xp);
            normalize_plane(o, per_channel[plane % s.c], then_relu);
        });
    out
}

/// [`normalize`] written over its input (the same values, no second buffer): for an input no
/// one else holds.
#[allow(clippy::too_many_arguments)]
pub fn normalize_in_place(
    x: &mut [f32],
    s: Nchw,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    then_relu: bool,
) {
    assert_eq!(x.len(), s.len(), "normalize: buffer and shape differ");
    if s.hw == 0 {
        return;
    }
    let per_channel = channel_affine(s, gamma, beta, mean, var, eps);
    x.par_chunks_mut(s.hw)
        .enumerate()
        .for_each(|(plane, xp)| normalize_plane(xp, per_channel[plane % s.c], then_relu));
}

/// One plane of evaluation's batch norm, in place: `(v - mean) * scale + beta` with its
/// channel's `(mean, scale, beta)`, then ReLU when `then_relu`.
#[inline(always)]
fn normalize_plane(xp: &mut [f32], (mu, scale, b): (f32, f32, f32), then_relu: bool) {
    match then_relu {
        false => {
            for v in xp.iter_mut() {
                *v = (*v - mu) * scale + b;
            }
        }
        true => {
            for v in xp.iter_mut() {
                *v = relu((*v - mu) * scale + b);
            }
        }
    }
}

/// Per channel, `(mean, inv_std * gamma, beta)`: what evaluation's batch norm applies.
fn channel_affine(
    s: Nchw,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Vec<(f32, f32, f32)> {
    let inv_std = inv_std(var, eps);
    (0..s.c)
        .map(|ch| (mean[ch], inv_std[ch] * gamma[ch], beta[ch]))
        .collect()
}

/// Burn's ReLU of one value (`flex`'s: NaN propagates, as in PyTorch).
#[inline(always)]
pub fn relu(y: f32) -> f32 {
    if y.is_nan() || y > 0.0 { y } else { 0.0 }
}

/// Elements per task of the residual sum.
const SUM_CHUNK: usize = 1 << 14;

/// `relu(a + b)` element by element, in one pass (the residual blocks' sum).
pub fn add_relu(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add_relu: the buffers differ in length");
    let mut out = vec![0.0f32; a.len()];
    out.par_chunks_mut(SUM_CHUNK)
        .zip(a.par_chunks(SUM_CHUNK).zip(b.par_chunks(SUM_CHUNK)))
        .for_each(|(o, (a, b))| {
            // One chunk copied, then summed while it is in the cache.
            o.copy_from_slice(a);
            add_relu_chunk(o, b);
        });
    out
}

/// [`add_relu`] written over `a` (for an `a` no one else holds).
pub fn add_relu_in_place(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "add_relu: the buffers differ in length");
    a.par_chunks_mut(SUM_CHUNK)
        .zip(b.par_chunks(SUM_CHUNK))
        .for_each(|(a, b)| add_relu_chunk(a, b));
}

/// `a = relu(a + b)`, element by element.
#[inline(always)]
fn add_relu_chunk(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = relu(*x + y);
    }
}

/// `1 / sqrt(var + eps)`, computed as Burn's default does (`f32` add, sqrt, reciprocal).
pub fn inv_std(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter().map(|&v| 1.0 / (v + eps as f32).sqrt()).collect()
}

/// Gradients of the training forward: `(x_grad, gamma_grad, beta_grad)`.
///
/// With `x̂ = (x - mean) * inv_std`: `beta_grad = Σ dy`, `gamma_grad = Σ dy x̂`, and
/// `x_grad = gamma inv_std (dy - mean(dy) - x̂ mean(dy x̂))`, sums and means per channel.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    s: Nchw,
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(
        x.len(),
        s.len(),
        "batch-norm backward: input and shape differ"
    );
    assert_eq!(
        dy.len(),
        s.len(),
        "batch-norm backward: gradient and shape differ"
    );
    let inv_std = inv_std(var, eps);
    let (beta_grad, gamma_grad): (Vec<f32>, Vec<f32>) = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            let (mu, is) = (mean[ch], inv_std[ch]);
            let mut sum_dy = [0.0f32; LANES];
            let mut sum_dy_xhat = [0.0f32; LANES];
            for i in 0..s.n {
                let (xp, gp) = (s.plane(x, i, ch), s.plane(dy, i, ch));
                lane_sum(&mut sum_dy, gp, gp, |g, _| g);
                lane_sum(&mut sum_dy_xhat, gp, xp, |g, v| g * ((v - mu) * is));
            }
            (combine(sum_dy), combine(sum_dy_xhat))
        })
        .unzip();
    let m = s.per_channel().max(1) as f32;
    let mut x_grad = vec![0.0f32; x.len()];
    if s.hw > 0 {
        x_grad
            .par_chunks_mut(s.hw)
            .zip(x.par_chunks(s.hw).zip(dy.par_chunks(s.hw)))
            .enumerate()
            .for_each(|(plane, (o, (xp, gp)))| {
                let ch = plane % s.c;
                let (mu, is) = (mean[ch], inv_std[ch]);
                let mean_dy = beta_grad[ch] / m;
                let mean_dy_xhat = gamma_grad[ch] / m;
                let scale = gamma[ch] * is;
                for ((o, &v), &g) in o.iter_mut().zip(xp).zip(gp) {
                    let xhat = (v - mu) * is;
                    *o = scale * ((g - mean_dy) - xhat * mean_dy_xhat);
                }
            });
    }
    (x_grad, gamma_grad, beta_grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..len).map(|_| r.next_f32() * 4.0 - 1.5).collect()
    }

    /// The textbook formulas in f64, one value at a time.
    fn reference(x: &[f32], dy: &[f32], s: Nchw, gamma: &[f32], eps: f64) -> [Vec<f64>; 5] {
        let m = s.per_channel() as f64;
        let idx = |i: usize, ch: usize, j: usize| (i * s.c + ch) * s.hw + j;
        let (mut mean, mut var) = (vec![0.0; s.c], vec![0.0; s.c]);
        let (mut gg, mut bg) = (vec![0.0; s.c], vec![0.0; s.c]);
        let mut xg = vec![0.0; x.len()];
        for ch in 0..s.c {
            let vals: Vec<usize> = (0..s.n)
                .flat_map(|i| (0..s.hw).map(move |j| idx(i, ch, j)))
                .collect();
            mean[ch] = vals.iter().map(|&k| x[k] as f64).sum::<f64>() / m;
            var[ch] = vals
                .iter()
                .map(|&k| (x[k] as f64 - mean[ch]).powi(2))
                .sum::<f64>()
                / m;
            let is = 1.0 / (var[ch] + eps).sqrt();
            let xhat = |k: usize| (x[k] as f64 - mean[ch]) * is;
            bg[ch] = vals.iter().map(|&k| dy[k] as f64).sum();
            gg[ch] = vals.iter().map(|&k| dy[k] as f64 * xhat(k)).sum();
            for &k in &vals {
                xg[k] = gamma[ch] as f64 * is * (dy[k] as f64 - bg[ch] / m - xhat(k) * gg[ch] / m);
            }
        }
        [mean, var, xg, gg, bg]
    }

    fn close(a: &[f32], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x as f64 - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn matches_the_formulas_in_f64_on_odd_shapes() {
        for (k, s) in [
            Nchw { n: 1, c: 3, hw: 1 },
            Nchw { n: 2, c: 5, hw: 9 },
            Nchw { n: 3, c: 7, hw: 25 },
            Nchw { n: 4, c: 2, hw: 17 },
        ]
        .into_iter()
        .enumerate()
        {
            let x = data(s.len(), k as u64);
            let dy = data(s.len(), 100 + k as u64);
            let gamma = data(s.c, 200 + k as u64);
            let beta = data(s.c, 300 + k as u64);
            let eps = 1e-5;
            let [mean, var, xg, gg, bg] = reference(&x, &dy, s, &gamma, eps);
            let (m, v) = batch_stats(&x, s);
            close(&m, &mean, 1e-5, "mean");
            close(&v, &var, 1e-5, "var");
            let y = normalize(&x, s, &gamma, &beta, &m, &v, eps, false);
            let want: Vec<f64> = (0..x.len())
                .map(|i| {
                    let ch = (i / s.hw) % s.c;
                    (x[i] as f64 - mean[ch]) / (var[ch] + eps).sqrt() * gamma[ch] as f64
                        + beta[ch] as f64
                })
                .collect();
            close(&y, &want, 1e-4, "y");
            let (xg2, gg2, bg2) = backward(&x, &dy, s, &gamma, &m, &v, eps);
            close(&xg2, &xg, 1e-3, "x_grad");
            close(&gg2, &gg, 1e-4, "gamma_grad");
            close(&bg2, &bg, 1e-4, "beta_grad");
        }
    }

    #[test]
    fn the_same_bits_on_one_thread_and_on_four() {
        let s = Nchw { n: 8, c: 6, hw: 50 };
        let x = data(s.len(), 1);
        let dy = data(s.len(), 2);
        let gamma = data(s.c, 3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let (m, v) = batch_stats(&x, s);
                let y = normalize(&x, s, &gamma, &gamma, &m, &v, 1e-5, false);
                let (xg, gg, bg) = backward(&x, &dy, s, &gamma, &m, &v, 1e-5);
                [m, v, y, xg, gg, bg].map(|t| t.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            })
        };
        assert_eq!(run(1), run(4));
    }
}
