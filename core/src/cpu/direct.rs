//! A direct 3x3 convolution (stride 1, padding 1, channels in multiples of 8): no column
//! matrix, the output channels in registers. The shape of every 3x3 convolution of the models
//! after the stem, forward and (with the kernel turned round and its channels swapped) input
//! gradient, and the weight gradient ([`weight_grad`]); on x86 also the forward pass and weight
//! gradient of the stride-2 convolutions of the stage transitions ([`forward_strided`],
//! [`weight_grad_strided`]). The AVX2 and the AVX-512 forms sum every output in the same order
//! with the same fused multiply-adds: the same bits on either kind of CPU for a call both run
//! (with AVX2 alone, planes under [`MIN_PLANE`] and the many channels of width 64's later
//! stages keep the column matrices: [`AVX2_MAX_CHANNELS`], [`AVX2_MAX_WEIGHT_GRAD_CHANNELS`],
//! [`AVX2_MAX_STRIDED_CHANNELS`]).
//!
//! Layout: channels in blocks of [`LANES`] (one 256-bit vector), innermost. The input is copied
//! once per call into `[n][c / 8][h + 2][w + 2][8]`, with the padding written as zeros so that
//! the kernel never tests a border; the weight into `[co / 8][ci / 8][3][3][ci % 8][co % 8]`. One
//! task computes the 8 output channels of one block of one image (`rayon` over images and
//! blocks): for each tile of `R` rows by `T` columns of outputs, `R * T` vectors of 8 output
//! channels are accumulated in registers, each step one weight vector (8 output channels of one
//! input channel and tap) times the input value broadcast, by fused multiply-add; the tile is
//! then written into the task's 8 output planes of the NCHW output. Every output is one task's
//! sum in a fixed order (input block, row of the kernel, column, input channel), so the result
//! does not depend on the thread count.
//!
//! Runs where the CPU has AVX2 and FMA (`pulp`'s `V3`, checked at run time), with 8 output
//! channels to a vector; where it also has AVX-512 (`V4`), output blocks go in pairs, 16 output
//! channels to a vector, in tiles of 16 accumulators (a row of 16, two rows of 8, four of 4);
//! the 4x4 and 8x8 planes with their sizes as constants, the products that read the zero
//! border left out (`small_plane`); planes whose rows are whole runs of 16 (32x32, 16x16) by
//! rows, the roles turned (`convolve_rows`: 16 pixels of one input channel, loaded from padded
//! NCHW planes, times each of 16 output channels' weights, so the tile is written as whole
//! vectors; the same products in the same order). In the browser (wasm built with `simd128`)
//! the same tiles of 8 output channels run as plain arrays the compiler vectorizes
//! (`portable_planes`: the forward pass and input gradient; the weight gradient in the same way,
//! `portable_weight_task`).
//! Elsewhere [`supported`] is false and the column-matrix convolution runs.

use rayon::prelude::*;

/// Channels per block: the `f32` lanes of a 256-bit vector.
pub const LANES: usize = 8;

/// The shape of one call: `n` images of `ci` channels of `h x w`, `co` filters of 3x3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape3 {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
}

/// Whether this machine runs the direct convolution: x86 with AVX2 and FMA, or wasm built with
/// `simd128` (the browser, in plain arrays the compiler vectorizes: [`portable_planes`]).
pub fn supported() -> bool {
    x86_direct() || portable()
}

/// Whether this build runs the portable forms ([`portable_planes`], [`portable_weight_task`]):
/// wasm with `simd128`, the browser.
fn portable() -> bool {
    cfg!(all(target_arch = "wasm32", target_feature = "simd128"))
}

/// The smallest plane (`h * w`) the direct convolution is used for without AVX-512: on smaller
/// planes (the last stage's 4x4) the column matrices' products were faster with AVX2 alone
/// (BENCHMARKS.md); with AVX-512 the direct convolution is used on every plane.
pub const MIN_PLANE: usize = 64;

/// The most channels for which the forward pass and the input gradient run directly without
/// AVX-512; above it (width 64's 16x16 and 8x8 stages) the column matrices' forward pass and
/// Burn's transposed convolution were faster on a CPU with AVX2 alone (BENCHMARKS.md,
/// 2026-12-07, second session).
pub const AVX2_MAX_CHANNELS: usize = 64;

/// The most input channels for which the weight gradient runs directly without AVX-512; above
/// it (width 64's 8x8 and 4x4 stages) the column matrices' products were faster on a CPU with
/// AVX2 alone (BENCHMARKS.md, 2026-12-07, second session).
pub const AVX2_MAX_WEIGHT_GRAD_CHANNELS: usize = 128;

/// The most input channels for which the stride-2 convolution runs directly without AVX-512
/// (measured as [`AVX2_MAX_WEIGHT_GRAD_CHANNELS`]).
pub const AVX2_MAX_STRIDED_CHANNELS: usize = 32;

/// Whether this machine runs the AVX-512 form (`pulp`'s `V4`).
pub fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        pulp::x86::V4::try_new().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a convolution of `ci` to `co` channels with a `kernel`, `stride` and `padding` is one
/// the direct convolution computes.
pub fn applies(
    ci: usize,
    co: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
) -> bool {
    ci.is_multiple_of(LANES)
        && co.is_multiple_of(LANES)
        && kernel == [3, 3]
        && stride == [1, 1]
        && padding == [(1, 1), (1, 1)]
}

/// Whether the CPU convolution of `g`'s shape runs directly here: the one place that decides
/// (this machine runs it, the shape is one it computes; without AVX-512 the plane is large
/// enough and, with AVX2, the channels at most [`AVX2_MAX_CHANNELS`]).
pub fn chosen(g: &super::conv::ConvGeometry) -> bool {
    let here = wide()
        || (g.h * g.w >= MIN_PLANE
            && (portable() || (x86_direct() && g.ci.max(g.co) <= AVX2_MAX_CHANNELS)));
    applies(g.ci, g.co, [g.kh, g.kw], g.stride, g.padding) && here
}

/// Whether `g` is a 3x3 convolution of stride 2 and padding 1 (the models' stage transitions)
/// whose forward pass and weight gradient run directly here (its input gradient stays Burn's
/// transposed convolution): input channels in multiples of 8; with AVX-512 output channels in
/// multiples of 16, with AVX2 alone in multiples of 8 and output planes of at least
/// [`MIN_PLANE`] and at most [`AVX2_MAX_STRIDED_CHANNELS`] input channels. Not in the browser
/// (the portable tiles have stride 1).
pub fn chosen_strided(g: &super::conv::ConvGeometry) -> bool {
    let (oh, ow) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let here = match wide() {
        true => g.co.is_multiple_of(2 * LANES),
        false => {
            x86_direct()
                && g.co.is_multiple_of(LANES)
                && oh * ow >= MIN_PLANE
                && g.ci <= AVX2_MAX_STRIDED_CHANNELS
        }
    };
    g.ci.is_multiple_of(LANES)
        && [g.kh, g.kw] == [3, 3]
        && g.stride == [2, 2]
        && g.padding == [(1, 1), (1, 1)]
        && here
}

/// Whether this machine runs the x86 forms (AVX2 and FMA; `pulp`'s `V3`).
fn x86_direct() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        pulp::x86::V3::try_new().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The direct convolution of `x` (`[s.n, s.ci, s.h, s.w]`) by `weight` (`[s.co, s.ci, 3, 3]`) at
/// stride 2, padding 1: `[s.n, s.co, (s.h + 1) / 2, (s.w + 1) / 2]`. Only where
/// [`chosen_strided`].
pub fn forward_strided(x: &[f32], weight: &[f32], s: Shape3) -> Vec<f32> {
    let xb = padded_blocks(x, s.n, s.ci, s.h, s.w);
    let wb = weight_blocks(weight, s.co, s.ci, false);
    convolve(&xb, &wb, s.n, s.ci, s.co, s.h, s.w, 2)
}

/// `g` as the direct convolution's shape.
pub fn shape_of(g: &super::conv::ConvGeometry) -> Shape3 {
    Shape3 {
        n: g.n,
        ci: g.ci,
        co: g.co,
        h: g.h,
        w: g.w,
    }
}

/// `x` (`[n, c, h, w]`) as `[n][c / 8][h + 2][w + 2][8]`, the border zero.
fn padded_blocks(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<[f32; LANES]> {
    let (ph, pw, cb) = (h + 2, w + 2, c / LANES);
    let mut out = vec![[0.0f32; LANES]; n * cb * ph * pw];
    out.par_chunks_mut(ph * pw)
        .enumerate()
        .for_each(|(task, block)| {
            // Image `task / cb`, channels `(task % cb) * 8 ..`.
            let planes = &x[task * LANES * h * w..][..LANES * h * w];
            for y in 0..h {
                let lines = std::array::from_fn(|lane| &planes[lane * h * w + y * w..][..w]);
                interleave(lines, &mut block[(y + 1) * pw + 1..][..w], 1);
            }
        });
    out
}

/// `dst[i * stride][lane] = lines[lane][i]`: 8 rows of values as vectors of 8 lanes, by 8x8
/// transposes in registers where the CPU has AVX2.
fn interleave(lines: [&[f32]; LANES], dst: &mut [[f32; LANES]], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        simd.vectorize(Interleave {
            simd,
            lines,
            dst,
            stride,
        });
        return;
    }
    for (i, values) in (0..lines[0].len()).zip(dst.iter_mut().step_by(stride)) {
        *values = std::array::from_fn(|lane| lines[lane][i]);
    }
}

/// [`interleave`]'s work, compiled with AVX2 by `pulp`.
#[cfg(target_arch = "x86_64")]
struct Interleave<'a> {
    simd: pulp::x86::V3,
    lines: [&'a [f32]; LANES],
    dst: &'a mut [[f32; LANES]],
    stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Interleave<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        use core::arch::x86_64::__m256;
        let Interleave {
            simd,
            lines,
            dst,
            stride,
        } = self;
        let avx = simd.avx;
        let len = lines[0].len();
        let whole = len / LANES * LANES;
        for x0 in (0..whole).step_by(LANES) {
            let r: [__m256; LANES] = std::array::from_fn(|lane| {
                let v: [f32; LANES] = lines[lane][x0..x0 + LANES].try_into().expect("8 values");
                pulp::cast(v)
            });
            // Pairs of rows, then pairs of pairs, then the 128-bit halves.
            let t0 = avx._mm256_unpacklo_ps(r[0], r[1]);
            let t1 = avx._mm256_unpackhi_ps(r[0], r[1]);
            let t2 = avx._mm256_unpacklo_ps(r[2], r[3]);
            let t3 = avx._mm256_unpackhi_ps(r[2], r[3]);
            let t4 = avx._mm256_unpacklo_ps(r[4], r[5]);
            let t5 = avx._mm256_unpackhi_ps(r[4], r[5]);
            let t6 = avx._mm256_unpacklo_ps(r[6], r[7]);
            let t7 = avx._mm256_unpackhi_ps(r[6], r[7]);
            let s0 = avx._mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = avx._mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = avx._mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = avx._mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = avx._mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = avx._mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = avx._mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = avx._mm256_shuffle_ps::<0xEE>(t5, t7);
            let columns = [
                avx._mm256_permute2f128_ps::<0x20>(s0, s4),
                avx._mm256_permute2f128_ps::<0x20>(s1, s5),
                avx._mm256_permute2f128_ps::<0x20>(s2, s6),
                avx._mm256_permute2f128_ps::<0x20>(s3, s7),
                avx._mm256_permute2f128_ps::<0x31>(s0, s4),
                avx._mm256_permute2f128_ps::<0x31>(s1, s5),
                avx._mm256_permute2f128_ps::<0x31>(s2, s6),
                avx._mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (i, column) in columns.into_iter().enumerate() {
                dst[(x0 + i) * stride] = pulp::cast(column);
            }
        }
        for i in whole..len {
            dst[i * stride] = std::array::from_fn(|lane| lines[lane][i]);
        }
    }
}

/// `weight` (`[co, ci, 3, 3]`) as `[co / 8][ci / 8][3][3][ci % 8]` vectors of 8 output channels.
/// With `turned`, the weight of the input gradient instead: the kernel turned round (tap
/// `(2 - dy, 2 - dx)`) with input and output channels swapped, so that `weight` is read as
/// `[ci, co, 3, 3]` and the result has `co` input blocks of `ci` outputs.
fn weight_blocks(weight: &[f32], co: usize, ci: usize, turned: bool) -> Vec<[f32; LANES]> {
    // The convolution computed: `outs` outputs from `ins` inputs.
    let (outs, ins) = if turned { (ci, co) } else { (co, ci) };
    let mut out = vec![[0.0f32; LANES]; outs / LANES * (ins / LANES) * 9 * LANES];
    for o in 0..outs {
        for i in 0..ins {
            for tap in 0..9 {
                let v = if turned {
                    weight[(i * ci + o) * 9 + (8 - tap)]
                } else {
                    weight[(o * ci + i) * 9 + tap]
                };
                let (ob, ib) = (o / LANES, i / LANES);
                let at = ((ob * (ins / LANES) + ib) * 9 + tap) * LANES + i % LANES;
                out[at][o % LANES] = v;
            }
        }
    }
    out
}

/// The direct convolution of `x` (`[s.n, s.ci, s.h, s.w]`) by `weight` (`[s.co, s.ci, 3, 3]`),
/// stride 1, padding 1: `[s.n, s.co, s.h, s.w]`. Only where [`supported`] and [`applies`].
pub fn forward(x: &[f32], weight: &[f32], s: Shape3) -> Vec<f32> {
    let wb = weight_blocks(weight, s.co, s.ci, false);
    if by_rows(s.co, s.w) {
        return convolve_rows(x, &wb, s.n, s.ci, s.co, s.h, s.w);
    }
    let xb = padded_blocks(x, s.n, s.ci, s.h, s.w);
    convolve(&xb, &wb, s.n, s.ci, s.co, s.h, s.w, 1)
}

/// The input gradient of [`forward`] for the output gradient `dy` (`[s.n, s.co, s.h, s.w]`):
/// `[s.n, s.ci, s.h, s.w]`, the same convolution of `dy` by the weight turned round with its
/// channels swapped.
pub fn input_grad(dy: &[f32], weight: &[f32], s: Shape3) -> Vec<f32> {
    let wb = weight_blocks(weight, s.co, s.ci, true);
    if by_rows(s.ci, s.w) {
        return convolve_rows(dy, &wb, s.n, s.co, s.ci, s.h, s.w);
    }
    let db = padded_blocks(dy, s.n, s.co, s.h, s.w);
    convolve(&db, &wb, s.n, s.co, s.ci, s.h, s.w, 1)
}

/// Whether a stride-1 convolution to `outs` channels on planes `w` wide runs by rows
/// ([`convolve_rows`]): with AVX-512, 16 output channels to a task and rows of whole runs of 16
/// (with AVX2 alone, 8 output channels by runs of 8 pixels measured no faster than the tiles).
fn by_rows(outs: usize, w: usize) -> bool {
    outs.is_multiple_of(2 * LANES) && w.is_multiple_of(2 * LANES) && wide()
}

/// [`convolve`] at stride 1 where [`by_rows`], the roles turned: the accumulators are 16 output
/// channels of 16 pixels of a row, each step one vector of 16 input pixels of a channel (from the
/// NCHW planes: no channel blocks to build) times each output channel's weight
/// broadcast, so that a tile's 16 vectors are written into the 16 output planes whole. The input
/// is read where it lies (no padded copy): the kernel rows that fall on the border are left out,
/// and the runs that start or end at a row's edge are shifted in registers with a zero lane. The
/// other products are summed in the same order as [`convolve`], so the same result.
#[allow(clippy::too_many_arguments)]
fn convolve_rows(
    x: &[f32],
    wb: &[[f32; LANES]],
    n: usize,
    ins: usize,
    outs: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V4::try_new() {
        let (ib, ob) = (ins / LANES, outs / LANES);
        let wide = widen(wb, ob, ib);
        let image = ins * h * w;
        let filters = ib * 9 * LANES;
        let mut out = vec![0.0f32; n * outs * h * w];
        out.par_chunks_mut(2 * LANES * h * w)
            .enumerate()
            .for_each(|(task, planes)| {
                let (img, pair) = (task / (ob / 2), task % (ob / 2));
                let p = Plane {
                    ib,
                    h,
                    w,
                    group: 2,
                    stride: 1,
                    // The input is read unpadded: its planes are `h x w`.
                    pw: w,
                    ph: h,
                };
                simd.vectorize(Rows {
                    simd,
                    input: &x[img * image..][..image],
                    weight: &wide[pair * filters..][..filters],
                    p,
                    planes,
                });
            });
        return out;
    }
    let _ = (x, wb, n, ins, outs, h, w);
    unreachable!("convolve_rows runs only where by_rows() says so")
}

/// One task of [`convolve_rows`], compiled with AVX-512 by `pulp`.
#[cfg(target_arch = "x86_64")]
struct Rows<'a> {
    simd: pulp::x86::V4,
    input: &'a [f32],
    weight: &'a [[f32; 2 * LANES]],
    p: Plane,
    planes: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        use core::arch::x86_64::__m512i;
        use pulp::f32x16;
        let Rows {
            simd,
            input,
            weight,
            p,
            planes,
        } = self;
        let Plane { ib, h, w, .. } = p;
        let plane = h * w;
        let avx = simd.avx512f;
        let zero: __m512i = pulp::cast(simd.splat_f32x16(0.0));
        let load = |at: usize| -> __m512i {
            let run: [f32; 2 * LANES] = input[at..at + 2 * LANES].try_into().expect("16 pixels");
            pulp::cast(run)
        };
        for y in 0..h {
            for x0 in (0..w).step_by(2 * LANES) {
                let mut acc = [simd.splat_f32x16(0.0); 2 * LANES];
                for b in 0..ib {
                    // Kernel rows on the border's zero rows add nothing.
                    for dy in (y == 0) as usize..3 - (y + 1 == h) as usize {
                        let row = (y + dy - 1) * w;
                        for dx in 0..3 {
                            let taps = &weight[(b * 9 + dy * 3 + dx) * LANES..][..LANES];
                            for (c, tap) in taps.iter().enumerate() {
                                let at = (b * LANES + c) * plane + row + x0;
                                // The 16 pixels at x0 + dx - 1: a zero lane in from the
                                // border at a row's first and last run.
                                let v = match dx {
                                    0 if x0 == 0 => avx._mm512_alignr_epi32::<15>(load(at), zero),
                                    0 => load(at - 1),
                                    2 if x0 + 2 * LANES == w => {
                                        avx._mm512_alignr_epi32::<1>(zero, load(at))
                                    }
                                    2 => load(at + 1),
                                    _ => load(at),
                                };
                                let xv: f32x16 = pulp::cast(v);
                                for (o, a) in acc.iter_mut().enumerate() {
                                    let wv = simd.splat_f32x16(tap[o]);
                                    *a = simd.mul_add_f32x16(xv, wv, *a);
                                }
                            }
                        }
                    }
                }
                for (o, a) in acc.iter().enumerate() {
                    let lanes: [f32; 2 * LANES] = pulp::cast(*a);
                    planes[o * h * w + y * w + x0..][..2 * LANES].copy_from_slice(&lanes);
                }
            }
        }
    }
}

/// Whether the direct weight gradient ([`weight_grad`]) can compute `g`'s shape here: with
/// AVX-512, output channels in multiples of 16; with AVX2 alone, planes of at least
/// [`MIN_PLANE`] (as the forward pass) and at most [`AVX2_MAX_WEIGHT_GRAD_CHANNELS`] input
/// channels; in the browser ([`portable`]) every shape that
/// [`applies`]; elsewhere the column version.
pub fn chosen_for_weight_grad(g: &super::conv::ConvGeometry) -> bool {
    let here = match wide() {
        true => g.co.is_multiple_of(2 * LANES),
        false => {
            portable()
                || (x86_direct() && g.h * g.w >= MIN_PLANE && g.ci <= AVX2_MAX_WEIGHT_GRAD_CHANNELS)
        }
    };
    applies(g.ci, g.co, [g.kh, g.kw], g.stride, g.padding) && here
}

/// The weight gradient of [`forward`] for the output gradient `dy` (`[s.n, s.co, s.h, s.w]`):
/// `[s.co, s.ci, 3, 3]`, `dW[o][i][dy][dx] = sum over images, rows, columns of
/// dY[o][y][x] X[i][y + dy - 1][x + dx - 1]`. With AVX-512 one task per 16 output channels, 8
/// input channels and kernel row: the three taps of the row for the 8 input channels in 24
/// registers of 16 output channels; with AVX2 one task per 8 output channels, 8 input channels
/// and tap, in 8 registers. Each weight is summed image by image by fused multiply-adds over the
/// rows and columns in order, the images' sums added in image order: the same result with
/// either. Only where [`chosen_for_weight_grad`].
pub fn weight_grad(x: &[f32], dy: &[f32], s: Shape3) -> Vec<f32> {
    weight_grad_at(x, dy, s, 1)
}

/// [`weight_grad`] of the stride-2 convolution ([`forward_strided`]; `dy` is
/// `[s.n, s.co, (s.h + 1) / 2, (s.w + 1) / 2]`). Only where [`chosen_strided`].
pub fn weight_grad_strided(x: &[f32], dy: &[f32], s: Shape3) -> Vec<f32> {
    weight_grad_at(x, dy, s, 2)
}

fn weight_grad_at(x: &[f32], dy: &[f32], s: Shape3, stride: usize) -> Vec<f32> {
    if !wide() {
        #[cfg(target_arch = "x86_64")]
        if x86_direct() {
            return lane_weight_grad(x, dy, s, stride, fused_weight_task);
        }
        return lane_weight_grad(x, dy, s, stride, portable_weight_task);
    }
    let (oh, ow) = ((s.h - 1) / stride + 1, (s.w - 1) / stride + 1);
    let xb = padded_blocks(x, s.n, s.ci, s.h, s.w);
    let gb = wide_blocks(dy, s.n, s.co, oh * ow);
    let (ib, pairs) = (s.ci / LANES, s.co / (2 * LANES));
    let tasks: Vec<(usize, usize, usize)> = (0..pairs)
        .flat_map(|p| (0..ib).flat_map(move |b| (0..3).map(move |dy| (p, b, dy))))
        .collect();
    let sums: Vec<[[[f32; 2 * LANES]; LANES]; 3]> = tasks
        .par_iter()
        .map(|&(p, b, dy)| weight_task(&xb, &gb, (s, stride), p, b, dy))
        .collect();
    let mut dw = vec![0.0f32; s.co * s.ci * 9];
    for (&(p, b, dy), sum) in tasks.iter().zip(&sums) {
        for (dx, channels) in sum.iter().enumerate() {
            for (c, lanes) in channels.iter().enumerate() {
                for (lane, v) in lanes.iter().enumerate() {
                    let (o, i) = (p * 2 * LANES + lane, b * LANES + c);
                    dw[(o * s.ci + i) * 9 + dy * 3 + dx] = *v;
                }
            }
        }
    }
    dw
}

/// `x` (`[n, c, plane]`) as `[n][c / 16][plane][16]`.
fn wide_blocks(x: &[f32], n: usize, c: usize, plane: usize) -> Vec<[f32; 2 * LANES]> {
    let mut out = vec![[0.0f32; 2 * LANES]; n * c / (2 * LANES) * plane];
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(task, block)| {
            // Each vector of 16 as two of 8 lanes: the first 8 planes' values, then the others'.
            let block: &mut [[f32; LANES]] = pulp::bytemuck::cast_slice_mut(block);
            let planes = &x[task * 2 * LANES * plane..][..2 * LANES * plane];
            for half in 0..2 {
                let lines =
                    std::array::from_fn(|lane| &planes[(half * LANES + lane) * plane..][..plane]);
                interleave(lines, &mut block[half..], 2);
            }
        });
    out
}

/// `x` (`[n, c, plane]`) as `[n][c / 8][plane][8]`.
fn lane_blocks(x: &[f32], n: usize, c: usize, plane: usize) -> Vec<[f32; LANES]> {
    let mut out = vec![[0.0f32; LANES]; n * c / LANES * plane];
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(task, block)| {
            let planes = &x[task * LANES * plane..][..LANES * plane];
            let lines = std::array::from_fn(|lane| &planes[lane * plane..][..plane]);
            interleave(lines, block, 1);
        });
    out
}

/// What a task of [`lane_weight_grad`] reads: the padded input blocks, the output gradient's
/// blocks of 8 channels, the shape and the stride.
#[derive(Clone, Copy)]
struct LaneInputs<'a> {
    xb: &'a [[f32; LANES]],
    gb: &'a [[f32; LANES]],
    s: Shape3,
    stride: usize,
}

/// One task of [`lane_weight_grad`]: the sums of output block `o`, input block `b` and kernel
/// tap `tap`, as `[input channel]` arrays of 8 output channels.
type LaneWeightKernel = fn(LaneInputs, usize, usize, usize) -> [[f32; LANES]; LANES];

/// [`weight_grad_at`] in blocks of 8 output channels: one task per output block, input block and
/// kernel tap, computed by `kernel` ([`fused_weight_task`] with AVX2, [`portable_weight_task`] in
/// the browser).
fn lane_weight_grad(
    x: &[f32],
    dy: &[f32],
    s: Shape3,
    stride: usize,
    kernel: LaneWeightKernel,
) -> Vec<f32> {
    let (oh, ow) = ((s.h - 1) / stride + 1, (s.w - 1) / stride + 1);
    let xb = padded_blocks(x, s.n, s.ci, s.h, s.w);
    let gb = lane_blocks(dy, s.n, s.co, oh * ow);
    let inputs = LaneInputs {
        xb: &xb,
        gb: &gb,
        s,
        stride,
    };
    let (ib, ob) = (s.ci / LANES, s.co / LANES);
    let tasks: Vec<(usize, usize, usize)> = (0..ob)
        .flat_map(|o| (0..ib).flat_map(move |b| (0..9).map(move |tap| (o, b, tap))))
        .collect();
    let sums: Vec<[[f32; LANES]; LANES]> = tasks
        .par_iter()
        .map(|&(o, b, tap)| kernel(inputs, o, b, tap))
        .collect();
    let mut dw = vec![0.0f32; s.co * s.ci * 9];
    for (&(o, b, tap), sum) in tasks.iter().zip(&sums) {
        for (c, lanes) in sum.iter().enumerate() {
            for (lane, v) in lanes.iter().enumerate() {
                dw[((o * LANES + lane) * s.ci + b * LANES + c) * 9 + tap] = *v;
            }
        }
    }
    dw
}

/// A task of [`lane_weight_grad`] in plain arrays of 8 lanes (the browser's form, like
/// [`portable_planes`]: separate multiplies and adds), the 64 sums summed image by image, the
/// images' sums added in image order.
fn portable_weight_task(a: LaneInputs, o: usize, b: usize, tap: usize) -> [[f32; LANES]; LANES] {
    let LaneInputs { xb, gb, s, stride } = a;
    let (oh, ow) = ((s.h - 1) / stride + 1, (s.w - 1) / stride + 1);
    let (ib, ob) = (s.ci / LANES, s.co / LANES);
    let (ky, kx) = (tap / 3, tap % 3);
    let (h, pw) = (s.h, s.w + 2);
    let mut total = [[0.0f32; LANES]; LANES];
    for img in 0..s.n {
        let input = &xb[(img * ib + b) * (h + 2) * pw..][..(h + 2) * pw];
        let grads = &gb[(img * ob + o) * oh * ow..][..oh * ow];
        let mut acc = [[0.0f32; LANES]; LANES];
        for y in 0..oh {
            // A row of the zero border adds nothing.
            let padded = y * stride + ky;
            if padded == 0 || padded == h + 1 {
                continue;
            }
            let row = &input[padded * pw..][..pw];
            for (xo, g) in grads[y * ow..][..ow].iter().enumerate() {
                let taps = &row[xo * stride + kx];
                for (sums, v) in acc.iter_mut().zip(taps) {
                    for (sum, gv) in sums.iter_mut().zip(g) {
                        *sum += v * gv;
                    }
                }
            }
        }
        for (sums, image) in total.iter_mut().zip(&acc) {
            for (sum, v) in sums.iter_mut().zip(image) {
                *sum += v;
            }
        }
    }
    total
}

/// A task of [`lane_weight_grad`] with AVX2 and FMA: 8 registers of 8 output channels (one per
/// input channel), each weight's products added by fused multiply-adds in the order of the
/// AVX-512 form ([`WeightTask`]), so the same result.
#[cfg(target_arch = "x86_64")]
fn fused_weight_task(a: LaneInputs, o: usize, b: usize, tap: usize) -> [[f32; LANES]; LANES] {
    let simd = pulp::x86::V3::try_new().expect("chosen only with AVX2 and FMA");
    simd.vectorize(FusedWeightTask { simd, a, o, b, tap })
}

/// [`fused_weight_task`]'s work, compiled with AVX2 and FMA by `pulp`.
#[cfg(target_arch = "x86_64")]
struct FusedWeightTask<'a> {
    simd: pulp::x86::V3,
    a: LaneInputs<'a>,
    o: usize,
    b: usize,
    tap: usize,
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for FusedWeightTask<'_> {
    type Output = [[f32; LANES]; LANES];

    #[inline(always)]
    fn call(self) -> Self::Output {
        use pulp::f32x8;
        let FusedWeightTask { simd, a, o, b, tap } = self;
        let LaneInputs { xb, gb, s, stride } = a;
        let (oh, ow) = ((s.h - 1) / stride + 1, (s.w - 1) / stride + 1);
        let (ib, ob) = (s.ci / LANES, s.co / LANES);
        let (ky, kx) = (tap / 3, tap % 3);
        let (h, pw) = (s.h, s.w + 2);
        let zero = simd.splat_f32x8(0.0);
        let mut total = [zero; LANES];
        for img in 0..s.n {
            let input = &xb[(img * ib + b) * (h + 2) * pw..][..(h + 2) * pw];
            let grads = &gb[(img * ob + o) * oh * ow..][..oh * ow];
            let mut acc = [zero; LANES];
            for y in 0..oh {
                // A row of the zero border adds nothing (as in the AVX-512 form).
                let padded = y * stride + ky;
                if padded == 0 || padded == h + 1 {
                    continue;
                }
                // The pixels by iterators: with an index checked in this loop the compiler kept
                // one accumulator on the stack and copied the others each pixel.
                let row = &input[padded * pw + kx..][..pw - kx];
                for (g, taps) in grads[y * ow..][..ow].iter().zip(row.iter().step_by(stride)) {
                    let g: f32x8 = pulp::cast(*g);
                    acc = std::array::from_fn(|c| {
                        simd.mul_add_f32x8(simd.splat_f32x8(taps[c]), g, acc[c])
                    });
                }
            }
            for (sum, image) in total.iter_mut().zip(&acc) {
                *sum = simd.add_f32x8(*sum, *image);
            }
        }
        total.map(pulp::cast)
    }
}

/// One task of [`weight_grad`]: the sums for output pair `p`, input block `b`, kernel row `dy`,
/// as `[dx][input channel]` vectors of 16 output channels.
fn weight_task(
    xb: &[[f32; LANES]],
    gb: &[[f32; 2 * LANES]],
    (s, stride): (Shape3, usize),
    p: usize,
    b: usize,
    dy: usize,
) -> [[[f32; 2 * LANES]; LANES]; 3] {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V4::try_new() {
        return simd.vectorize(WeightTask {
            simd,
            xb,
            gb,
            s,
            stride,
            p,
            b,
            dy,
        });
    }
    let _ = (xb, gb, s, stride, p, b, dy);
    unreachable!("the direct weight gradient runs only where chosen_for_weight_grad() says so")
}

/// [`weight_task`]'s work, compiled with AVX-512 by `pulp`.
#[cfg(target_arch = "x86_64")]
struct WeightTask<'a> {
    simd: pulp::x86::V4,
    xb: &'a [[f32; LANES]],
    gb: &'a [[f32; 2 * LANES]],
    s: Shape3,
    stride: usize,
    p: usize,
    b: usize,
    dy: usize,
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for WeightTask<'_> {
    type Output = [[[f32; 2 * LANES]; LANES]; 3];

    #[inline(always)]
    fn call(self) -> Self::Output {
        use pulp::f32x16;
        let WeightTask {
            simd,
            xb,
            gb,
            s,
            stride,
            p,
            b,
            dy,
        } = self;
        let (h, w) = (s.h, s.w);
        let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        let pw = w + 2;
        let (ib, pairs) = (s.ci / LANES, s.co / (2 * LANES));
        let zero = simd.splat_f32x16(0.0);
        let mut total = [[zero; LANES]; 3];
        for img in 0..s.n {
            let input = &xb[(img * ib + b) * (h + 2) * pw..][..(h + 2) * pw];
            let grads = &gb[(img * pairs + p) * oh * ow..][..oh * ow];
            let mut acc = [[zero; LANES]; 3];
            for y in 0..oh {
                // The padded input row; a row of the zero border adds nothing (`0 * g` leaves a
                // finite sum as it is).
                let padded = y * stride + dy;
                if padded == 0 || padded == h + 1 {
                    continue;
                }
                let row = &input[padded * pw..][..pw];
                let line = &grads[y * ow..][..ow];
                for (x, g) in line.iter().enumerate() {
                    let g: f32x16 = pulp::bytemuck::cast(*g);
                    let taps = &row[x * stride..][..3];
                    for dx in 0..3 {
                        for c in 0..LANES {
                            let v = simd.splat_f32x16(taps[dx][c]);
                            acc[dx][c] = simd.mul_add_f32x16(v, g, acc[dx][c]);
                        }
                    }
                }
            }
            for dx in 0..3 {
                for c in 0..LANES {
                    total[dx][c] = simd.add_f32x16(total[dx][c], acc[dx][c]);
                }
            }
        }
        total.map(|channels| channels.map(pulp::bytemuck::cast))
    }
}

/// Output blocks per task where their number allows: each input value broadcast serves this
/// many weight vectors.
const GROUP: usize = 2;

/// `ins` blocked padded input channels (`h x w` planes) to `outs` NCHW output channels, at
/// `stride` 1 (outputs `h x w`) or 2 (outputs `(h + 1) / 2 x (w + 1) / 2`; x86 only).
#[allow(clippy::too_many_arguments)]
fn convolve(
    xb: &[[f32; LANES]],
    wb: &[[f32; LANES]],
    n: usize,
    ins: usize,
    outs: usize,
    h: usize,
    w: usize,
    stride: usize,
) -> Vec<f32> {
    let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let mut out = vec![0.0f32; n * outs * oh * ow];
    let (ib, ob) = (ins / LANES, outs / LANES);
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V4::try_new().filter(|_| ob % 2 == 0) {
        // AVX-512: pairs of output blocks, 16 output channels to a vector.
        let image = ib * (h + 2) * (w + 2);
        let filters = ib * 9 * LANES;
        let wide = widen(wb, ob, ib);
        out.par_chunks_mut(2 * LANES * oh * ow)
            .enumerate()
            .for_each(|(task, planes)| {
                let (img, pair) = (task / (ob / 2), task % (ob / 2));
                let input = &xb[img * image..][..image];
                let weight = &wide[pair * filters..][..filters];
                let p = Plane {
                    ib,
                    h: oh,
                    w: ow,
                    group: 2,
                    stride,
                    pw: w + 2,
                    ph: h + 2,
                };
                simd.vectorize(Wide {
                    simd,
                    input,
                    weight,
                    p,
                    planes,
                });
            });
        return out;
    }
    convolve_blocks(xb, wb, (ib, ob, h, w, stride), &mut out, block_planes);
    out
}

/// One task's output planes from its padded input blocks and weight blocks: [`block_planes`]
/// (the tests also pass [`portable_planes`]).
type BlockKernel = fn(&[[f32; LANES]], &[[f32; LANES]], Plane, &mut [f32]);

/// [`convolve`] in blocks of 8 output channels, `ib` input and `ob` output blocks, input planes
/// `h x w` at `stride`, into `out`: one task per image and block (or pair of blocks), computed by
/// `kernel`.
fn convolve_blocks(
    xb: &[[f32; LANES]],
    wb: &[[f32; LANES]],
    (ib, ob, h, w, stride): (usize, usize, usize, usize, usize),
    out: &mut [f32],
    kernel: BlockKernel,
) {
    let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let image = ib * (h + 2) * (w + 2);
    let filters = ib * 9 * LANES;
    // Rows of 8 or more fill a tile of one block; narrower planes pair output blocks.
    let group = if !ow.is_multiple_of(8) && ob.is_multiple_of(GROUP) {
        GROUP
    } else {
        1
    };
    out.par_chunks_mut(group * LANES * oh * ow)
        .enumerate()
        .for_each(|(task, planes)| {
            let (img, first) = (task / (ob / group), task % (ob / group) * group);
            let input = &xb[img * image..][..image];
            let weight = &wb[first * filters..][..group * filters];
            let shape = Plane {
                ib,
                h: oh,
                w: ow,
                group,
                stride,
                pw: w + 2,
                ph: h + 2,
            };
            kernel(input, weight, shape, planes);
        });
}

/// The weight blocks `wb` (`ob` output blocks of `ib` input blocks) as pairs of output blocks:
/// `[ob / 2][ib][3][3][ci % 8]` vectors of 16 output channels.
#[cfg(target_arch = "x86_64")]
fn widen(wb: &[[f32; LANES]], ob: usize, ib: usize) -> Vec<[f32; 2 * LANES]> {
    let filters = ib * 9 * LANES;
    let mut out = vec![[0.0f32; 2 * LANES]; ob / 2 * filters];
    for (pair, dst) in out.chunks_exact_mut(filters).enumerate() {
        let (a, b) = (
            &wb[2 * pair * filters..][..filters],
            &wb[(2 * pair + 1) * filters..][..filters],
        );
        for (d, (x, y)) in dst.iter_mut().zip(a.iter().zip(b)) {
            d[..LANES].copy_from_slice(x);
            d[LANES..].copy_from_slice(y);
        }
    }
    out
}

/// One task's work with AVX-512 (`pulp`'s `V4`): 16 output planes from vectors of 16 channels.
#[cfg(target_arch = "x86_64")]
struct Wide<'a> {
    simd: pulp::x86::V4,
    input: &'a [[f32; LANES]],
    weight: &'a [[f32; 2 * LANES]],
    p: Plane,
    planes: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Wide<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Wide {
            simd,
            input,
            weight,
            p,
            planes,
        } = self;
        if small_plane(simd, input, weight, p, planes) {
            return;
        }
        // 16 accumulators of the 32 registers: a row of 16, two rows of 8 or four of 4.
        match (p.stride, p.w % 16, p.w % 8, p.h % 2, p.w % 4, p.h % 4) {
            (1, 0, _, _, _, _) => wide_tiles::<1, 16, 1>(simd, input, weight, p, planes),
            (1, _, 0, 0, _, _) => wide_tiles::<2, 8, 1>(simd, input, weight, p, planes),
            (1, _, _, _, 0, 0) => wide_tiles::<4, 4, 1>(simd, input, weight, p, planes),
            (1, ..) => wide_tiles::<1, 1, 1>(simd, input, weight, p, planes),
            (_, 0, _, _, _, _) => wide_tiles::<1, 16, 2>(simd, input, weight, p, planes),
            (_, _, 0, 0, _, _) => wide_tiles::<2, 8, 2>(simd, input, weight, p, planes),
            (_, _, _, _, 0, 0) => wide_tiles::<4, 4, 2>(simd, input, weight, p, planes),
            _ => wide_tiles::<1, 1, 2>(simd, input, weight, p, planes),
        }
    }
}

/// The 4x4 and 8x8 planes at stride 1 (the last two stages of a 32-pixel model), whose sizes are
/// constants here: every tile is known at compile time, with its offsets into the padded input
/// and which of its rows and columns read the zero border at each kernel tap. Those products
/// (on a 4x4 plane 44 of every 144, on 8x8 a sixth) are left out; the others are summed in the
/// same order as [`wide_tiles`] (input block, kernel row, column, input channel), and adding
/// `0 * w` leaves a finite sum as it is, so the result is the same. False for other planes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn small_plane(
    simd: pulp::x86::V4,
    input: &[[f32; LANES]],
    weight: &[[f32; 2 * LANES]],
    p: Plane,
    planes: &mut [f32],
) -> bool {
    let a = (simd, input, weight, p.ib);
    match (p.stride, p.h, p.w) {
        (1, 4, 4) => fixed_tile::<4, 4, 6, 36, 0, true, true>(a, planes),
        (1, 8, 8) => {
            fixed_tile::<2, 8, 10, 100, 0, true, false>(a, planes);
            fixed_tile::<2, 8, 10, 100, 2, false, false>(a, planes);
            fixed_tile::<2, 8, 10, 100, 4, false, false>(a, planes);
            fixed_tile::<2, 8, 10, 100, 6, false, true>(a, planes);
        }
        _ => return false,
    }
    true
}

/// One tile of [`small_plane`]: rows `Y0 .. Y0 + R` of a plane `T` wide, whose padded input planes
/// are `PW` wide and `PLANE` long; `TOP` / `BOTTOM`: the tile's first / last row is the plane's.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::type_complexity)]
fn fixed_tile<
    const R: usize,
    const T: usize,
    const PW: usize,
    const PLANE: usize,
    const Y0: usize,
    const TOP: bool,
    const BOTTOM: bool,
>(
    (simd, input, weight, ib): (pulp::x86::V4, &[[f32; LANES]], &[[f32; 2 * LANES]], usize),
    planes: &mut [f32],
) {
    let mut acc = [[simd.splat_f32x16(0.0); T]; R];
    for b in 0..ib {
        let channels: &[[f32; LANES]; PLANE] = input[b * PLANE..][..PLANE]
            .try_into()
            .expect("a padded plane");
        let filters: &[[f32; 2 * LANES]; 9 * LANES] = weight[b * 9 * LANES..][..9 * LANES]
            .try_into()
            .expect("an input block's filters");
        let a = (simd, channels, filters);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 0, 0>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 0, 1>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 0, 2>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 1, 0>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 1, 1>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 1, 2>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 2, 0>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 2, 1>(acc, a);
        acc = fixed_tap::<R, T, PW, PLANE, Y0, TOP, BOTTOM, 2, 2>(acc, a);
    }
    let area = planes.len() / (2 * LANES);
    for (r, row) in acc.iter().enumerate() {
        for (t, v) in row.iter().enumerate() {
            let lanes: [f32; 2 * LANES] = pulp::bytemuck::cast(*v);
            for (o, value) in lanes.iter().enumerate() {
                planes[o * area + (Y0 + r) * T + t] = *value;
            }
        }
    }
}

/// Kernel tap (`DY`, `DX`) of one input block added to a [`fixed_tile`]'s accumulators, the rows
/// and columns that read the border at this tap left out.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::type_complexity)]
fn fixed_tap<
    const R: usize,
    const T: usize,
    const PW: usize,
    const PLANE: usize,
    const Y0: usize,
    const TOP: bool,
    const BOTTOM: bool,
    const DY: usize,
    const DX: usize,
>(
    mut acc: [[pulp::f32x16; T]; R],
    (simd, channels, filters): (
        pulp::x86::V4,
        &[[f32; LANES]; PLANE],
        &[[f32; 2 * LANES]; 9 * LANES],
    ),
) -> [[pulp::f32x16; T]; R] {
    // The rows and columns of the tile that read inside the plane at this tap.
    let r0 = (TOP && DY == 0) as usize;
    let r1 = R - (BOTTOM && DY == 2) as usize;
    let t0 = (DX == 0) as usize;
    let t1 = T - (DX == 2) as usize;
    for c in 0..LANES {
        let wv: pulp::f32x16 = pulp::bytemuck::cast(filters[(DY * 3 + DX) * LANES + c]);
        for r in r0..r1 {
            for t in t0..t1 {
                let v = simd.splat_f32x16(channels[(Y0 + r + DY) * PW + t + DX][c]);
                acc[r][t] = simd.mul_add_f32x16(v, wv, acc[r][t]);
            }
        }
    }
    acc
}

/// [`Wide`] in tiles of `R` rows by `T` columns of 16 output channels, at stride `S`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn wide_tiles<const R: usize, const T: usize, const S: usize>(
    simd: pulp::x86::V4,
    input: &[[f32; LANES]],
    weight: &[[f32; 2 * LANES]],
    p: Plane,
    planes: &mut [f32],
) {
    use pulp::f32x16;
    let Plane {
        ib, h, w, pw, ph, ..
    } = p;
    let plane = ph * pw;
    let vector = |a: [f32; 2 * LANES]| -> f32x16 { pulp::bytemuck::cast(a) };
    for y0 in (0..h).step_by(R) {
        for x0 in (0..w).step_by(T) {
            let mut acc = [[simd.splat_f32x16(0.0); T]; R];
            for b in 0..ib {
                let channels = &input[b * plane..][..plane];
                let filters = &weight[b * 9 * LANES..][..9 * LANES];
                for dy in 0..3 {
                    let rows: [&[[f32; LANES]]; R] = std::array::from_fn(|r| {
                        &channels[((y0 + r) * S + dy) * pw + x0 * S..][..(T - 1) * S + 3]
                    });
                    for dx in 0..3 {
                        let taps = &filters[(dy * 3 + dx) * LANES..][..LANES];
                        for (c, tap) in taps.iter().enumerate() {
                            let wv = vector(*tap);
                            for r in 0..R {
                                for t in 0..T {
                                    let v = simd.splat_f32x16(rows[r][t * S + dx][c]);
                                    acc[r][t] = simd.mul_add_f32x16(v, wv, acc[r][t]);
                                }
                            }
                        }
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (t, v) in row.iter().enumerate() {
                    let lanes: [f32; 2 * LANES] = pulp::bytemuck::cast(*v);
                    let at = (y0 + r) * w + x0 + t;
                    for (o, value) in lanes.iter().enumerate() {
                        planes[o * h * w + at] = *value;
                    }
                }
            }
        }
    }
}

/// What one task computes: `group` blocks of 8 output planes of `h x w` from `ib` input blocks
/// of padded `ph x pw` planes, at `stride`.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Plane {
    ib: usize,
    h: usize,
    w: usize,
    group: usize,
    stride: usize,
    pw: usize,
    ph: usize,
}

/// The `group * 8` output planes (`planes`, `[group * 8][h][w]`) of one task.
fn block_planes(input: &[[f32; LANES]], weight: &[[f32; LANES]], p: Plane, planes: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        simd.vectorize(Block {
            simd,
            input,
            weight,
            p,
            planes,
        });
        return;
    }
    portable_planes(input, weight, p, planes);
}

/// [`block_planes`] in plain arrays of 8 lanes, which the compiler turns into the target's vectors
/// (two `v128` for each in the browser's wasm, built with `simd128`): separate multiplies and
/// adds, no fused multiply-add, summed in the same order as the x86 forms.
fn portable_planes(input: &[[f32; LANES]], weight: &[[f32; LANES]], p: Plane, planes: &mut [f32]) {
    assert_eq!(p.stride, 1, "the portable tiles have stride 1");
    // 8 vectors of accumulators: four columns of one block, or two columns of two blocks.
    match (p.group, p.w % 4, p.w % 2) {
        (1, 0, _) => portable_tiles::<1, 4>(input, weight, p, planes),
        (1, _, _) => portable_tiles::<1, 1>(input, weight, p, planes),
        (_, _, 0) => portable_tiles::<2, 2>(input, weight, p, planes),
        _ => portable_tiles::<2, 1>(input, weight, p, planes),
    }
}

/// [`portable_planes`] in tiles of `G` output blocks by `T` columns of one row.
fn portable_tiles<const G: usize, const T: usize>(
    input: &[[f32; LANES]],
    weight: &[[f32; LANES]],
    p: Plane,
    planes: &mut [f32],
) {
    let Plane {
        ib, h, w, pw, ph, ..
    } = p;
    let plane = ph * pw;
    let filters = ib * 9 * LANES;
    for y in 0..h {
        for x0 in (0..w).step_by(T) {
            let mut acc = [[[0.0f32; LANES]; T]; G];
            for b in 0..ib {
                let channels = &input[b * plane..][..plane];
                for dy in 0..3 {
                    let row = &channels[(y + dy) * pw + x0..][..T + 2];
                    for dx in 0..3 {
                        let tap = b * 9 * LANES + (dy * 3 + dx) * LANES;
                        for c in 0..LANES {
                            let wv: [[f32; LANES]; G] =
                                std::array::from_fn(|g| weight[g * filters + tap + c]);
                            for t in 0..T {
                                let v = row[t + dx][c];
                                for g in 0..G {
                                    for o in 0..LANES {
                                        acc[g][t][o] += v * wv[g][o];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (g, block) in acc.iter().enumerate() {
                for (t, lanes) in block.iter().enumerate() {
                    for (o, value) in lanes.iter().enumerate() {
                        planes[(g * LANES + o) * h * w + y * w + x0 + t] = *value;
                    }
                }
            }
        }
    }
}

/// [`block_planes`]'s work, compiled with AVX2 and FMA by `pulp`.
#[cfg(target_arch = "x86_64")]
struct Block<'a> {
    simd: pulp::x86::V3,
    input: &'a [[f32; LANES]],
    weight: &'a [[f32; LANES]],
    p: Plane,
    planes: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Block<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Block {
            simd,
            input,
            weight,
            p,
            planes,
        } = self;
        // 8 accumulators: two output blocks by four columns; one output block by eight columns
        // where blocks do not pair.
        let a = (simd, input, weight, p);
        match (p.stride, p.group, p.w % 8, p.w % 4) {
            (1, 1, 0, _) => tiles::<1, 1, 8, 1>(a, planes),
            (1, 1, _, _) => tiles::<1, 1, 1, 1>(a, planes),
            (1, _, _, 0) => tiles::<2, 1, 4, 1>(a, planes),
            (1, ..) => tiles::<2, 1, 1, 1>(a, planes),
            (_, 1, 0, _) => tiles::<1, 1, 8, 2>(a, planes),
            (_, 1, _, _) => tiles::<1, 1, 1, 2>(a, planes),
            (_, _, _, 0) => tiles::<2, 1, 4, 2>(a, planes),
            _ => tiles::<2, 1, 1, 2>(a, planes),
        }
    }
}

/// [`block_planes`] in tiles of `G` output blocks by `R` rows by `T` columns, at stride `S`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::type_complexity)]
fn tiles<const G: usize, const R: usize, const T: usize, const S: usize>(
    (simd, input, weight, p): (pulp::x86::V3, &[[f32; LANES]], &[[f32; LANES]], Plane),
    planes: &mut [f32],
) {
    use pulp::f32x8;
    let Plane {
        ib, h, w, pw, ph, ..
    } = p;
    let plane = ph * pw;
    let filters = ib * 9 * LANES;
    let vector = |a: [f32; LANES]| -> f32x8 { pulp::bytemuck::cast(a) };
    for y0 in (0..h).step_by(R) {
        for x0 in (0..w).step_by(T) {
            let mut acc = [[[simd.splat_f32x8(0.0); T]; R]; G];
            for b in 0..ib {
                let channels = &input[b * plane..][..plane];
                let blocks: [&[[f32; LANES]]; G] =
                    std::array::from_fn(|g| &weight[g * filters + b * 9 * LANES..][..9 * LANES]);
                for dy in 0..3 {
                    // The `R` input rows this kernel row reads, `(T - 1) * S + 3` pixels each.
                    let rows: [&[[f32; LANES]]; R] = std::array::from_fn(|r| {
                        &channels[((y0 + r) * S + dy) * pw + x0 * S..][..(T - 1) * S + 3]
                    });
                    for dx in 0..3 {
                        let tap = (dy * 3 + dx) * LANES;
                        // A loop the compiler cannot unroll: unrolled, it loads the broadcasts
                        // of all 8 channels (and taps) ahead, more than the 16 registers hold,
                        // and stores and reloads 32 bytes for each 4-byte load.
                        for c in 0..std::hint::black_box(LANES) {
                            let c = c % LANES;
                            let wv: [f32x8; G] =
                                std::array::from_fn(|g| vector(blocks[g][tap + c]));
                            for r in 0..R {
                                for t in 0..T {
                                    let v = simd.splat_f32x8(rows[r][t * S + dx][c]);
                                    for g in 0..G {
                                        acc[g][r][t] = simd.mul_add_f32x8(v, wv[g], acc[g][r][t]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (g, block) in acc.iter().enumerate() {
                for (r, row) in block.iter().enumerate() {
                    for (t, v) in row.iter().enumerate() {
                        let lanes: [f32; LANES] = pulp::bytemuck::cast(*v);
                        let at = (y0 + r) * w + x0 + t;
                        for (o, value) in lanes.iter().enumerate() {
                            planes[(g * LANES + o) * h * w + at] = *value;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, in f64.
    fn naive(x: &[f32], weight: &[f32], s: Shape3) -> Vec<f32> {
        let mut out = vec![0.0f32; s.n * s.co * s.h * s.w];
        for i in 0..s.n {
            for o in 0..s.co {
                for y in 0..s.h {
                    for xo in 0..s.w {
                        let mut sum = 0.0f64;
                        for c in 0..s.ci {
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let (iy, ix) = (y + dy, xo + dx);
                                    if iy < 1 || ix < 1 || iy > s.h || ix > s.w {
                                        continue;
                                    }
                                    let xv = x[((i * s.ci + c) * s.h + iy - 1) * s.w + ix - 1];
                                    let wv = weight[((o * s.ci + c) * 3 + dy) * 3 + dx];
                                    sum += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((i * s.co + o) * s.h + y) * s.w + xo] = sum as f32;
                    }
                }
            }
        }
        out
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919) % 211) as f32 / 50.0 - 2.0)
            .collect()
    }

    const SHAPES: [Shape3; 9] = [
        Shape3 {
            n: 3,
            ci: 32,
            co: 32,
            h: 2,
            w: 2,
        },
        Shape3 {
            n: 2,
            ci: 8,
            co: 16,
            h: 1,
            w: 1,
        },
        Shape3 {
            n: 2,
            ci: 8,
            co: 8,
            h: 8,
            w: 8,
        },
        Shape3 {
            n: 1,
            ci: 16,
            co: 8,
            h: 4,
            w: 4,
        },
        Shape3 {
            n: 3,
            ci: 8,
            co: 24,
            h: 16,
            w: 16,
        },
        Shape3 {
            n: 1,
            ci: 8,
            co: 16,
            h: 5,
            w: 3,
        },
        Shape3 {
            n: 2,
            ci: 24,
            co: 16,
            h: 6,
            w: 12,
        },
        // The fixed 4x4 and 8x8 planes of the AVX-512 form (and, swapped, their input gradients).
        Shape3 {
            n: 2,
            ci: 16,
            co: 32,
            h: 4,
            w: 4,
        },
        Shape3 {
            n: 3,
            ci: 16,
            co: 16,
            h: 8,
            w: 8,
        },
    ];

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: [{i}] {x} vs {y}"
            );
        }
    }

    #[test]
    fn the_blocked_copies_are_the_layouts_they_name() {
        // Plane widths with and without a whole number of 8-value runs (the transposed part and
        // the rest).
        for (n, c, h, w) in [(2, 16, 3, 12), (1, 8, 4, 4), (2, 32, 5, 8), (1, 16, 2, 19)] {
            let x = data(n * c * h * w, 5);
            let padded = padded_blocks(&x, n, c, h, w);
            let (ph, pw) = (h + 2, w + 2);
            assert_eq!(padded.len(), n * c / LANES * ph * pw);
            for (i, lanes) in padded.iter().enumerate() {
                let (task, at) = (i / (ph * pw), i % (ph * pw));
                let (y, xx) = (at / pw, at % pw);
                for (lane, v) in lanes.iter().enumerate() {
                    let inside = (1..=h).contains(&y) && (1..=w).contains(&xx);
                    let want = match inside {
                        true => x[(task * LANES + lane) * h * w + (y - 1) * w + xx - 1],
                        false => 0.0,
                    };
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "{n}x{c}x{h}x{w}: [{i}][{lane}]"
                    );
                }
            }
            if c % 16 != 0 {
                continue;
            }
            let wide = wide_blocks(&x, n, c, h * w);
            assert_eq!(wide.len(), n * c / 16 * h * w);
            for (i, lanes) in wide.iter().enumerate() {
                let (task, at) = (i / (h * w), i % (h * w));
                for (lane, v) in lanes.iter().enumerate() {
                    let want = x[(task * 2 * LANES + lane) * h * w + at];
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "{n}x{c}x{h}x{w}: wide [{i}][{lane}]"
                    );
                }
            }
        }
    }

    /// [`forward`] with the portable tiles (the browser's form) on any machine.
    fn portable_forward(x: &[f32], weight: &[f32], s: Shape3) -> Vec<f32> {
        let xb = padded_blocks(x, s.n, s.ci, s.h, s.w);
        let wb = weight_blocks(weight, s.co, s.ci, false);
        let mut out = vec![0.0f32; s.n * s.co * s.h * s.w];
        let blocks = (s.ci / LANES, s.co / LANES, s.h, s.w, 1);
        convolve_blocks(&xb, &wb, blocks, &mut out, portable_planes);
        out
    }

    #[test]
    fn the_portable_tiles_are_the_convolution() {
        for s in SHAPES {
            let x = data(s.n * s.ci * s.h * s.w, 3);
            let w = data(s.co * s.ci * 9, 4);
            let what = format!("portable {s:?}");
            close(&portable_forward(&x, &w, s), &naive(&x, &w, s), &what);
        }
    }

    #[test]
    fn by_rows_is_the_blocked_convolution_bit_for_bit() {
        if !wide() {
            return;
        }
        let shapes = [
            (2, 16, 32, 3, 32),
            (1, 48, 16, 2, 16),
            (2, 32, 48, 4, 48),
            (1, 16, 16, 1, 16),
        ];
        for (n, ci, co, h, w) in shapes {
            let s = Shape3 { n, ci, co, h, w };
            let x = data(n * ci * h * w, 9);
            let weight = data(co * ci * 9, 10);
            let dy = data(n * co * h * w, 11);
            let what = format!("{s:?}");
            close(&forward(&x, &weight, s), &naive(&x, &weight, s), &what);
            let wb = weight_blocks(&weight, co, ci, false);
            let blocked = convolve(&padded_blocks(&x, n, ci, h, w), &wb, n, ci, co, h, w, 1);
            assert!(by_rows(co, w), "{what}");
            let rows = convolve_rows(&x, &wb, n, ci, co, h, w);
            assert_eq!(bits(&rows), bits(&blocked), "forward {what}");
            // The input gradient: `ci` outputs from `co` inputs.
            let wt = weight_blocks(&weight, co, ci, true);
            let blocked = convolve(&padded_blocks(&dy, n, co, h, w), &wt, n, co, ci, h, w, 1);
            assert!(by_rows(ci, w), "{what}");
            let rows = convolve_rows(&dy, &wt, n, co, ci, h, w);
            assert_eq!(bits(&rows), bits(&blocked), "input gradient {what}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn the_direct_convolution_is_the_convolution() {
        if !supported() {
            return;
        }
        for s in SHAPES {
            let x = data(s.n * s.ci * s.h * s.w, 1);
            let w = data(s.co * s.ci * 9, 2);
            close(&forward(&x, &w, s), &naive(&x, &w, s), &format!("{s:?}"));
        }
    }

    /// The stride-2 convolution by its definition: the stride-1 one's outputs at even places.
    fn naive_strided(x: &[f32], weight: &[f32], s: Shape3) -> Vec<f32> {
        let full = naive(x, weight, s);
        let (oh, ow) = (s.h.div_ceil(2), s.w.div_ceil(2));
        let mut out = Vec::with_capacity(s.n * s.co * oh * ow);
        for plane in full.chunks_exact(s.h * s.w) {
            for y in 0..oh {
                for xo in 0..ow {
                    out.push(plane[2 * y * s.w + 2 * xo]);
                }
            }
        }
        out
    }

    #[test]
    fn the_strided_direct_convolution_is_the_convolution_at_stride_2() {
        if !x86_direct() {
            return;
        }
        for s in SHAPES {
            let x = data(s.n * s.ci * s.h * s.w, 4);
            let w = data(s.co * s.ci * 9, 5);
            let what = format!("stride 2 {s:?}");
            close(
                &forward_strided(&x, &w, s),
                &naive_strided(&x, &w, s),
                &what,
            );
        }
        // Its weight gradient: the stride-1 one's with the output gradient zero at odd places.
        for s in SHAPES.into_iter().filter(|s| s.co % 16 == 0 || !wide()) {
            let (oh, ow) = (s.h.div_ceil(2), s.w.div_ceil(2));
            let x = data(s.n * s.ci * s.h * s.w, 8);
            let dy = data(s.n * s.co * oh * ow, 9);
            let mut full = vec![0.0f32; s.n * s.co * s.h * s.w];
            for (plane, grads) in full
                .chunks_exact_mut(s.h * s.w)
                .zip(dy.chunks_exact(oh * ow))
            {
                for y in 0..oh {
                    for xo in 0..ow {
                        plane[2 * y * s.w + 2 * xo] = grads[y * ow + xo];
                    }
                }
            }
            let what = format!("stride-2 weight gradient {s:?}");
            close(
                &weight_grad_strided(&x, &dy, s),
                &weight_grad(&x, &full, s),
                &what,
            );
        }
        // A stage transition of the width-16 ResNet-18 (32 -> 16 rows of 16 outputs).
        let s = Shape3 {
            n: 2,
            ci: 16,
            co: 32,
            h: 32,
            w: 32,
        };
        let (x, w) = (data(s.n * s.ci * 32 * 32, 6), data(s.co * s.ci * 9, 7));
        close(
            &forward_strided(&x, &w, s),
            &naive_strided(&x, &w, s),
            "32x32",
        );
    }

    #[test]
    fn the_input_gradient_is_the_transposed_convolution() {
        if !supported() {
            return;
        }
        for s in SHAPES {
            let dy = data(s.n * s.co * s.h * s.w, 3);
            let w = data(s.co * s.ci * 9, 4);
            // dX[i][c][y][x] = sum over o, taps of dY[i][o][y + 1 - dy][x + 1 - dx] W[o][c][dy][dx]:
            // the convolution of dY by W turned round, channels swapped.
            let mut turned = vec![0.0f32; s.ci * s.co * 9];
            for o in 0..s.co {
                for c in 0..s.ci {
                    for tap in 0..9 {
                        turned[(c * s.co + o) * 9 + 8 - tap] = w[(o * s.ci + c) * 9 + tap];
                    }
                }
            }
            let swapped = Shape3 {
                ci: s.co,
                co: s.ci,
                ..s
            };
            close(
                &input_grad(&dy, &w, s),
                &naive(&dy, &turned, swapped),
                &format!("{s:?}"),
            );
        }
    }

    /// The weight gradient by its definition, in f64.
    fn naive_weight_grad(x: &[f32], dy: &[f32], s: Shape3) -> Vec<f32> {
        let mut want = vec![0.0f32; s.co * s.ci * 9];
        for o in 0..s.co {
            for i in 0..s.ci {
                for tap in 0..9 {
                    let (ky, kx) = (tap / 3, tap % 3);
                    let mut sum = 0.0f64;
                    for img in 0..s.n {
                        for y in 0..s.h {
                            for xo in 0..s.w {
                                let (iy, ix) = (y + ky, xo + kx);
                                if iy < 1 || ix < 1 || iy > s.h || ix > s.w {
                                    continue;
                                }
                                let xv = x[((img * s.ci + i) * s.h + iy - 1) * s.w + ix - 1];
                                let g = dy[((img * s.co + o) * s.h + y) * s.w + xo];
                                sum += xv as f64 * g as f64;
                            }
                        }
                    }
                    want[(o * s.ci + i) * 9 + tap] = sum as f32;
                }
            }
        }
        want
    }

    const WEIGHT_GRAD_SHAPES: [Shape3; 5] = [
        Shape3 {
            n: 5,
            ci: 32,
            co: 32,
            h: 2,
            w: 2,
        },
        Shape3 {
            n: 2,
            ci: 8,
            co: 16,
            h: 1,
            w: 1,
        },
        Shape3 {
            n: 2,
            ci: 8,
            co: 16,
            h: 8,
            w: 8,
        },
        Shape3 {
            n: 3,
            ci: 24,
            co: 32,
            h: 5,
            w: 7,
        },
        Shape3 {
            n: 1,
            ci: 16,
            co: 16,
            h: 4,
            w: 4,
        },
    ];

    #[test]
    fn the_weight_gradient_sums_over_images_and_positions() {
        if !x86_direct() {
            return;
        }
        for s in WEIGHT_GRAD_SHAPES {
            let x = data(s.n * s.ci * s.h * s.w, 5);
            let dy = data(s.n * s.co * s.h * s.w, 6);
            let want = naive_weight_grad(&x, &dy, s);
            close(&weight_grad(&x, &dy, s), &want, &format!("{s:?}"));
        }
    }

    #[test]
    fn the_portable_weight_gradient_sums_over_images_and_positions() {
        // Eight output channels as well as sixteen: the browser's form takes every multiple of 8.
        let eight = Shape3 {
            n: 2,
            ci: 16,
            co: 8,
            h: 6,
            w: 3,
        };
        for s in WEIGHT_GRAD_SHAPES.into_iter().chain([eight]) {
            let x = data(s.n * s.ci * s.h * s.w, 7);
            let dy = data(s.n * s.co * s.h * s.w, 8);
            let want = naive_weight_grad(&x, &dy, s);
            let what = format!("portable {s:?}");
            let portable = lane_weight_grad(&x, &dy, s, 1, portable_weight_task);
            close(&portable, &want, &what);
        }
    }

    /// The input value at padded place (`py`, `px`) of channel `i` of image `img`: 0 on the border.
    fn padded_value(x: &[f32], s: Shape3, img: usize, i: usize, py: usize, px: usize) -> f32 {
        match (1..=s.h).contains(&py) && (1..=s.w).contains(&px) {
            true => x[((img * s.ci + i) * s.h + py - 1) * s.w + px - 1],
            false => 0.0,
        }
    }

    /// The convolution at `stride` as the x86 forms sum it, one value at a time: for each output,
    /// fused multiply-adds over input blocks, kernel rows, columns and the block's channels in
    /// that order, the border's zeros included.
    fn ordered_forward(x: &[f32], weight: &[f32], s: Shape3, stride: usize) -> Vec<f32> {
        let (oh, ow) = ((s.h - 1) / stride + 1, (s.w - 1) / stride + 1);
        let mut out = vec![0.0f32; s.n * s.co * oh * ow];
        for img in 0..s.n {
            for o in 0..s.co {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut acc = 0.0f32;
                        for b in 0..s.ci / LANES {
                            for tap in 0..9 {
                                let (ky, kx) = (tap / 3, tap % 3);
                                for c in 0..LANES {
                                    let i = b * LANES + c;
                                    let (py, px) = (y * stride + ky, xo * stride + kx);
                                    let v = padded_value(x, s, img, i, py, px);
                                    acc = v.mul_add(weight[(o * s.ci + i) * 9 + tap], acc);
                                }
                            }
                        }
                        out[((img * s.co + o) * oh + y) * ow + xo] = acc;
                    }
                }
            }
        }
        out
    }

    /// The weight gradient at `stride` as the x86 forms sum it: for each weight, image by image
    /// fused multiply-adds over the output rows (those reading the zero border rows left out)
    /// and columns in order, the images' sums added in image order.
    fn ordered_weight_grad(x: &[f32], dy: &[f32], s: Shape3, stride: usize) -> Vec<f32> {
        let (oh, ow) = ((s.h - 1) / stride + 1, (s.w - 1) / stride + 1);
        let mut dw = vec![0.0f32; s.co * s.ci * 9];
        for o in 0..s.co {
            for i in 0..s.ci {
                for tap in 0..9 {
                    let (ky, kx) = (tap / 3, tap % 3);
                    let mut total = 0.0f32;
                    for img in 0..s.n {
                        let mut acc = 0.0f32;
                        for y in 0..oh {
                            let py = y * stride + ky;
                            if py == 0 || py == s.h + 1 {
                                continue;
                            }
                            for xo in 0..ow {
                                let v = padded_value(x, s, img, i, py, xo * stride + kx);
                                let g = dy[((img * s.co + o) * oh + y) * ow + xo];
                                acc = v.mul_add(g, acc);
                            }
                        }
                        total += acc;
                    }
                    dw[(o * s.ci + i) * 9 + tap] = total;
                }
            }
        }
        dw
    }

    /// The AVX2 and the AVX-512 forms give the same bits: each is compared with the one order of
    /// fused multiply-adds they share, on the machine's form (CI's machines have AVX-512, others
    /// AVX2 alone), at both strides, on the shapes where both run (16 output channels a block
    /// pair), the planes by rows, the fixed 4x4 and 8x8 ones and the tiled ones among them.
    #[test]
    fn the_x86_forms_sum_in_one_order_bit_for_bit() {
        if !x86_direct() {
            return;
        }
        let extra = [
            Shape3 {
                n: 2,
                ci: 16,
                co: 32,
                h: 16,
                w: 16,
            },
            Shape3 {
                n: 1,
                ci: 8,
                co: 16,
                h: 32,
                w: 32,
            },
        ];
        let shapes = SHAPES.into_iter().chain(extra).filter(|s| s.co % 16 == 0);
        for s in shapes {
            let (oh, ow) = (s.h.div_ceil(2), s.w.div_ceil(2));
            let x = data(s.n * s.ci * s.h * s.w, 12);
            let weight = data(s.co * s.ci * 9, 13);
            let dy = data(s.n * s.co * s.h * s.w, 14);
            let dy2 = data(s.n * s.co * oh * ow, 15);
            let what = format!("{s:?}");
            let want = ordered_forward(&x, &weight, s, 1);
            assert_eq!(
                bits(&forward(&x, &weight, s)),
                bits(&want),
                "forward {what}"
            );
            let want = ordered_forward(&x, &weight, s, 2);
            let got = forward_strided(&x, &weight, s);
            assert_eq!(bits(&got), bits(&want), "stride 2 {what}");
            let want = ordered_weight_grad(&x, &dy, s, 1);
            let got = weight_grad(&x, &dy, s);
            assert_eq!(bits(&got), bits(&want), "weight gradient {what}");
            let want = ordered_weight_grad(&x, &dy2, s, 2);
            let got = weight_grad_strided(&x, &dy2, s);
            assert_eq!(bits(&got), bits(&want), "stride-2 weight gradient {what}");
        }
    }

    #[test]
    fn only_three_by_three_stride_one_padding_one_in_blocks_of_eight() {
        assert!(applies(16, 32, [3, 3], [1, 1], [(1, 1), (1, 1)]));
        assert!(!applies(3, 16, [3, 3], [1, 1], [(1, 1), (1, 1)]));
        assert!(!applies(16, 12, [3, 3], [1, 1], [(1, 1), (1, 1)]));
        assert!(!applies(16, 32, [3, 3], [2, 2], [(1, 1), (1, 1)]));
        assert!(!applies(16, 32, [1, 1], [1, 1], [(0, 0), (0, 0)]));
    }

    /// Which op runs which ResNet-18 stage here: with AVX-512 every 3x3 stride-1 stage; with
    /// AVX2 alone the direct forward pass up to 64 channels on planes of at least 64 and the
    /// direct weight gradient up to 128 input channels; the stride-2 ones up to 32.
    #[test]
    fn each_cpu_kind_chooses_the_stages_it_was_measured_fastest_on() {
        let at = |c, co, hw, stride| {
            super::super::conv::ConvGeometry::three_by_three(2, c, co, hw, stride)
        };
        let stages = [(16, 32), (64, 32), (128, 16), (256, 8), (512, 4), (128, 4)];
        let forward: Vec<bool> = stages
            .iter()
            .map(|&(c, hw)| chosen(&at(c, c, hw, 1)))
            .collect();
        let weight: Vec<bool> = stages
            .iter()
            .map(|&(c, hw)| chosen_for_weight_grad(&at(c, c, hw, 1)))
            .collect();
        let strided: Vec<bool> = [(16, 32), (32, 16), (64, 32)]
            .iter()
            .map(|&(c, hw)| chosen_strided(&at(c, 2 * c, hw, 2)))
            .collect();
        if wide() {
            assert_eq!(forward, [true; 6]);
            assert_eq!(weight, [true; 6]);
            assert_eq!(strided, [true; 3]);
        } else if x86_direct() {
            assert_eq!(forward, [true, true, false, false, false, false]);
            assert_eq!(weight, [true, true, true, false, false, false]);
            assert_eq!(strided, [true, true, false]);
        } else if !portable() {
            assert_eq!(forward, [false; 6]);
            assert_eq!(strided, [false; 3]);
        }
    }
}
