//! 2-D convolution over NCHW `f32` buffers as column matrices: the slice-level halves of the CPU
//! convolution's forward and weight gradient (the matrix products are the backend's, in
//! [`super`]).
//!
//! [`columns`] lays the input out as column matrices: row `(c, dy, dx)` holds, for each output
//! position, the input value that kernel tap reads (0 in the padding). Images go in groups: a
//! group of `g` images is one `[C_in * KH * KW, g * OH * OW]` matrix. The forward uses groups of
//! one image, `W [C_out, K] x columns`, written straight into the NCHW output; the weight gradient
//! uses groups of about [`GROUP_COLS`] output positions, `dY [C_out, g * L] x columns^T` per
//! group, so that each product sums over several images itself and the per-group results stay
//! few; they are added in group order ([`add_images`]). Every sum has one fixed order, so the
//! results do not depend on the thread count.
//!
//! Images are processed in chunks whose column matrices stay under [`COLUMN_BUDGET`] values; the
//! chunk and group sizes depend on the shapes only.

use rayon::prelude::*;
use std::ops::Range;

/// The most `f32` values the column matrices of one chunk of images may take (8 MiB: small
/// enough to stay in the last-level cache and to be reused by the allocator without fresh pages).
pub const COLUMN_BUDGET: usize = 2 << 20;

/// Output positions per group of the weight gradient's column matrices (the inner dimension of
/// each of its matrix products).
pub const GROUP_COLS: usize = 2048;

/// The shapes of one convolution: `n` images of `ci` channels of `h x w`, `co` filters of
/// `kh x kw`, the stride and the padding before and after each spatial axis (no dilation, one
/// group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [(usize, usize); 2],
}

impl ConvGeometry {
    /// A 3x3 convolution of `ci` to `co` channels on `n` images of `hw x hw` at `stride`,
    /// padding 1: the shape of every convolution of the models after the stem.
    pub fn three_by_three(n: usize, ci: usize, co: usize, hw: usize, stride: usize) -> Self {
        ConvGeometry {
            n,
            ci,
            h: hw,
            w: hw,
            co,
            kh: 3,
            kw: 3,
            stride: [stride, stride],
            padding: [(1, 1), (1, 1)],
        }
    }

    /// The output's height and width.
    pub fn out(&self) -> [usize; 2] {
        let side =
            |size: usize, k: usize, s: usize, (b, e): (usize, usize)| (size + b + e - k) / s + 1;
        [
            side(self.h, self.kh, self.stride[0], self.padding[0]),
            side(self.w, self.kw, self.stride[1], self.padding[1]),
        ]
    }

    /// Rows of an image's column matrix: `ci * kh * kw`.
    pub fn rows(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    /// Columns of an image's column matrix: the output positions.
    pub fn cols(&self) -> usize {
        let [oh, ow] = self.out();
        oh * ow
    }

    /// Images per weight-gradient group: about [`GROUP_COLS`] output positions.
    pub fn group(&self) -> usize {
        GROUP_COLS
            .div_ceil(self.cols().max(1))
            .clamp(1, self.n.max(1))
    }

    /// Images per chunk, a multiple of `group` images.
    pub fn chunk(&self, group: usize) -> usize {
        let fit = COLUMN_BUDGET / (self.rows() * self.cols()).max(1);
        (fit / group * group).max(group).min(self.n.max(1))
    }

    /// The chunks of images, in order, each a multiple of `group` images but the last.
    pub fn chunks(&self, group: usize) -> impl Iterator<Item = Range<usize>> + use<> {
        let (n, c) = (self.n, self.chunk(group));
        (0..n).step_by(c).map(move |s| s..(s + c).min(n))
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// The output columns `o` at which kernel column `dx` reads inside the input row (the rest
    /// read padding), along one axis of input size `size`, stride `s`, padding before `p` and
    /// `count` outputs.
    fn inside(count: usize, size: usize, s: usize, p: usize, d: usize) -> Range<usize> {
        // o * s + d - p in [0, size)  <=>  o >= ceil((p - d) / s) and o * s < size + p - d.
        let lo = match p > d {
            true => (p - d).div_ceil(s),
            false => 0,
        };
        let hi = match size + p > d {
            true => (size + p - d).div_ceil(s).min(count),
            false => 0,
        };
        lo.min(hi)..hi
    }
}

/// Writes kernel tap `tap`'s row of one input plane `src` into `row` (the output positions; left
/// as it is where the tap reads padding, so `row` must start zeroed).
fn fill_row(src: &[f32], g: &ConvGeometry, tap: usize, row: &mut [f32]) {
    let [oh, ow] = g.out();
    let (dy, dx) = (tap / g.kw, tap % g.kw);
    let ys = ConvGeometry::inside(oh, g.h, g.stride[0], g.padding[0].0, dy);
    let xs = ConvGeometry::inside(ow, g.w, g.stride[1], g.padding[1].0, dx);
    if xs.is_empty() {
        // The tap reads only padding (a wide kernel over a narrow input).
        return;
    }
    for y in ys {
        let iy = y * g.stride[0] + dy - g.padding[0].0;
        let line = &src[iy * g.w..][..g.w];
        let dst = &mut row[y * ow..][..ow];
        let start = xs.start * g.stride[1] + dx - g.padding[1].0;
        match g.stride[1] {
            1 => dst[xs.clone()].copy_from_slice(&line[start..start + xs.len()]),
            s => {
                for (d, v) in dst[xs.clone()]
                    .iter_mut()
                    .zip(line[start..].iter().step_by(s))
                {
                    *d = *v;
                }
            }
        }
    }
}

/// The column matrices of `images` (a range of the batch `x`) in groups of `group` images (the
/// last group may be shorter): `[groups, rows, group * cols]`.
pub fn columns(x: &[f32], g: &ConvGeometry, images: Range<usize>, group: usize) -> Vec<f32> {
    let (k, l, taps, plane) = (g.rows(), g.cols(), g.taps(), g.h * g.w);
    let first = images.start;
    let mut out = vec![0.0f32; images.len() * k * l];
    // One task per group; in it, input channel by channel, `taps` rows each.
    out.par_chunks_mut(group * k * l)
        .enumerate()
        .for_each(|(j, block)| {
            let members = block.len() / (k * l);
            let start = first + j * group;
            for (c, rows) in block.chunks_exact_mut(taps * members * l).enumerate() {
                for (r, row) in rows.chunks_exact_mut(l).enumerate() {
                    let i = start + r % members;
                    fill_row(&x[(i * g.ci + c) * plane..][..plane], g, r / members, row);
                }
            }
        });
    out
}

/// The output gradient `dy` (`[n, co, cols]`) of `images` regrouped like [`columns`]:
/// `[groups, co, group * cols]`.
pub fn group_rows(dy: &[f32], g: &ConvGeometry, images: Range<usize>, group: usize) -> Vec<f32> {
    let l = g.cols();
    let first = images.start;
    let mut out = vec![0.0f32; images.len() * g.co * l];
    out.par_chunks_mut(group * g.co * l)
        .enumerate()
        .for_each(|(j, block)| {
            let members = block.len() / (g.co * l);
            for (r, row) in block.chunks_exact_mut(l).enumerate() {
                let (co, i) = (r / members, first + j * group + r % members);
                row.copy_from_slice(&dy[(i * g.co + co) * l..][..l]);
            }
        });
    out
}

/// `acc += sum_i parts[i]` over `parts` (`[parts, acc.len()]`), the parts in order for every
/// element.
pub fn add_images(acc: &mut [f32], parts: &[f32]) {
    let len = acc.len();
    if len == 0 {
        return;
    }
    const BLOCK: usize = 1024;
    acc.par_chunks_mut(BLOCK).enumerate().for_each(|(b, dst)| {
        for part in parts.chunks_exact(len) {
            for (d, v) in dst.iter_mut().zip(&part[b * BLOCK..]) {
                *d += *v;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(
        n: usize,
        ci: usize,
        hw: [usize; 2],
        k: [usize; 2],
        s: usize,
        p: usize,
    ) -> ConvGeometry {
        ConvGeometry {
            n,
            ci,
            h: hw[0],
            w: hw[1],
            co: 2,
            kh: k[0],
            kw: k[1],
            stride: [s, s],
            padding: [(p, p), (p, p)],
        }
    }

    fn data(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
            .collect()
    }

    /// The column matrix by its definition, one value at a time.
    fn columns_by_definition(x: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let [oh, ow] = g.out();
        let mut out = vec![];
        for i in 0..g.n {
            for c in 0..g.ci {
                for dy in 0..g.kh {
                    for dx in 0..g.kw {
                        for y in 0..oh {
                            for xo in 0..ow {
                                let iy = (y * g.stride[0] + dy) as isize - g.padding[0].0 as isize;
                                let ix = (xo * g.stride[1] + dx) as isize - g.padding[1].0 as isize;
                                let inside = iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < g.h
                                    && (ix as usize) < g.w;
                                out.push(match inside {
                                    true => {
                                        x[((i * g.ci + c) * g.h + iy as usize) * g.w + ix as usize]
                                    }
                                    false => 0.0,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// `(n, c_in, [h, w], [kh, kw], stride, padding)`.
    type Case = (usize, usize, [usize; 2], [usize; 2], usize, usize);

    const CASES: [Case; 8] = [
        (2, 3, [5, 5], [3, 3], 1, 1),
        // Taps that read only padding: one output, most of the 7x7 kernel outside the input.
        (1, 2, [1, 2], [7, 7], 2, 3),
        (1, 2, [6, 7], [3, 3], 2, 1),
        (3, 1, [4, 4], [1, 1], 1, 0),
        (2, 2, [8, 8], [1, 1], 2, 0),
        (1, 1, [1, 1], [3, 3], 1, 1),
        (2, 2, [7, 5], [3, 3], 2, 0),
        (1, 3, [9, 9], [7, 7], 2, 3),
    ];

    #[test]
    fn columns_hold_what_each_output_position_reads() {
        for (n, ci, hw, k, s, p) in CASES {
            let g = geometry(n, ci, hw, k, s, p);
            let x = data(n * ci * hw[0] * hw[1]);
            let want = columns_by_definition(&x, &g);
            let (k, l) = (g.rows(), g.cols());
            assert_eq!(columns(&x, &g, 0..n, 1), want, "{g:?}");
            // A later range of the batch is that range's part of the whole.
            assert_eq!(columns(&x, &g, 1..n, 1), want[k * l..].to_vec());
            // Groups of two: image i's row r at group i / 2, row r, member i % 2, the last group
            // shorter when n is odd.
            let grouped = columns(&x, &g, 0..n, 2);
            for i in 0..n {
                let members = if i / 2 * 2 + 2 <= n { 2 } else { 1 };
                for r in 0..k {
                    let at = (i / 2 * 2) * k * l + (r * members + i % 2) * l;
                    assert_eq!(grouped[at..][..l], want[(i * k + r) * l..][..l], "{g:?}");
                }
            }
        }
    }

    #[test]
    fn output_gradients_group_like_the_columns() {
        let g = geometry(5, 2, [3, 3], [3, 3], 1, 1);
        let l = g.cols();
        let dy = data(5 * g.co * l);
        let grouped = group_rows(&dy, &g, 1..5, 3);
        // Images 1, 2, 3 in the first group, 4 alone in the second.
        for (i, j, members, m) in [(1, 0, 3, 0), (2, 0, 3, 1), (3, 0, 3, 2), (4, 1, 1, 0)] {
            for co in 0..g.co {
                let at = j * 3 * g.co * l + (co * members + m) * l;
                assert_eq!(grouped[at..][..l], dy[(i * g.co + co) * l..][..l]);
            }
        }
    }

    #[test]
    fn image_sums_run_in_image_order() {
        let parts = data(5 * 3000);
        let mut acc = vec![1.0; 3000];
        add_images(&mut acc, &parts);
        for j in [0, 1023, 1024, 2999] {
            let mut want = 1.0f32;
            for i in 0..5 {
                want += parts[i * 3000 + j];
            }
            assert_eq!(acc[j], want);
        }
    }

    #[test]
    fn chunks_cover_the_batch_in_order_in_whole_groups() {
        let mut g = geometry(7, 512, [32, 32], [3, 3], 1, 1);
        g.n = 301;
        for group in [1, g.group()] {
            let chunks: Vec<_> = g.chunks(group).collect();
            assert!(chunks.len() > 1, "{chunks:?}");
            assert_eq!(chunks.first().map(|r| r.start), Some(0));
            assert_eq!(chunks.last().map(|r| r.end), Some(301));
            assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
            assert!(
                chunks[..chunks.len() - 1]
                    .iter()
                    .all(|r| r.len() % group == 0)
            );
            assert!(
                chunks.iter().all(|r| r.len() * g.rows() * g.cols()
                    <= COLUMN_BUDGET.max(group * g.rows() * g.cols()))
            );
        }
        assert_eq!(g.group(), 2);
    }
}
