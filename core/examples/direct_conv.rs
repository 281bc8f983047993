//! The direct 3x3 convolution (`cleanse_core::cpu::direct`) against the column-matrix one and
//! Burn's input gradient, milliseconds per call at each stage's shape of ResNet-18 (batch 128),
//! for BENCHMARKS.md. Run in one sitting, nothing else running:
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example direct_conv -- 16
//!
//! Columns: forward by Burn (`conv2d` on flex), by the column matrices (`cpu::conv`, which
//! `cpu::conv2d` runs where the direct one is not chosen) and direct; input gradient by Burn
//! (`conv2d_x_backward`: a transposed convolution on flex, which `cpu::conv2d` runs where the
//! direct one is not chosen) and direct; weight gradient by Burn (`conv2d_weight_backward`), by
//! the column matrices and direct. A second table: the stride-2 convolutions of the stage
//! transitions, forward and weight gradient by the column matrices and direct. Every shape is
//! timed, including those `cpu::conv2d` leaves to the other versions on this CPU.
//!
//! `direct_conv 16 direct` times the direct forms alone (forward, input gradient, weight
//! gradient; 20 calls each), the quick table to profile them by, beside
//! `python3 bench/pytorch_op_times.py --direct --width 16 --threads 1`.
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use cleanse_core::cpu::direct::{self, Shape3};
use std::time::Instant;

fn ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64 * 1e3
}

/// The 3x3 stride-1 convolutions of a 32-pixel ResNet-18 of `width`: channels and plane side of
/// each stage.
fn stages(width: usize) -> [(usize, usize); 4] {
    [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)]
}

fn main() {
    use burn::backend::ops::ModuleOps;
    type Ops = burn::backend::Dispatch;
    let device = Device::flex();
    let width: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("width"))
        .unwrap_or(16);
    assert!(direct::supported(), "this CPU has no AVX2 and FMA");
    let (n, reps) = (128, 5);
    if std::env::args().nth(2).as_deref() == Some("direct") {
        direct_only(width, n, 20);
        return;
    }
    println!(
        "| layer | fwd Burn | fwd columns | fwd direct | input grad Burn | input grad direct | weight grad Burn | weight grad columns | weight grad direct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (c, hw) in stages(width) {
        let x = Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([c, c, 3, 3], Distribution::Normal(0.0, 0.1), &device);
        let dy = Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let opt = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let burn_fwd = ms(reps, || {
            let _ = conv2d(x.clone(), w.clone(), None, opt.clone()).into_data();
        });
        let s = Shape3 {
            n,
            ci: c,
            co: c,
            h: hw,
            w: hw,
        };
        let xv = x.to_data().try_to_vec::<f32>().expect("f32");
        let wv = w.to_data().try_to_vec::<f32>().expect("f32");
        let dv = dy.to_data().try_to_vec::<f32>().expect("f32");
        let fwd = ms(reps, || {
            std::hint::black_box(direct::forward(&xv, &wv, s));
        });
        let burn_dx = ms(reps, || {
            let t = <Ops as ModuleOps<Ops>>::conv2d_x_backward(
                x.clone().into_dispatch(),
                w.clone().into_dispatch(),
                dy.clone().into_dispatch(),
                opt.clone(),
            );
            let _ = Tensor::<4>::from_dispatch(t).into_data();
        });
        let dx = ms(reps, || {
            std::hint::black_box(direct::input_grad(&dv, &wv, s));
        });
        let burn_dw = ms(reps, || {
            let t = <Ops as ModuleOps<Ops>>::conv2d_weight_backward(
                x.clone().into_dispatch(),
                w.clone().into_dispatch(),
                dy.clone().into_dispatch(),
                opt.clone(),
            );
            let _ = Tensor::<4>::from_dispatch(t).into_data();
        });
        let dw = ms(reps, || {
            std::hint::black_box(direct::weight_grad(&xv, &dv, s));
        });
        let (fwd_cols, dw_cols) = by_columns(c, c, hw, 1, (&xv, &wv, &dv), reps, &device);
        println!(
            "| {c} ch {hw}x{hw} | {burn_fwd:.1} | {fwd_cols:.1} | {fwd:.1} | {burn_dx:.1} | {dx:.1} | {burn_dw:.1} | {dw_cols:.1} | {dw:.1} |"
        );
    }
    strided(width, n, reps, &device);
}

/// Milliseconds per call of the direct forms alone at each stage's shape.
fn direct_only(width: usize, n: usize, reps: usize) {
    println!("| layer | fwd direct | input grad direct | weight grad direct |");
    println!("|---|---|---|---|");
    for (c, hw) in stages(width) {
        let s = Shape3 {
            n,
            ci: c,
            co: c,
            h: hw,
            w: hw,
        };
        let (xv, wv, dv) = (
            data(n * c * hw * hw),
            data(c * c * 9),
            data(n * c * hw * hw),
        );
        let fwd = ms(reps, || {
            std::hint::black_box(direct::forward(&xv, &wv, s));
        });
        let dx = ms(reps, || {
            std::hint::black_box(direct::input_grad(&dv, &wv, s));
        });
        let dw = ms(reps, || {
            std::hint::black_box(direct::weight_grad(&xv, &dv, s));
        });
        println!("| {c} ch {hw}x{hw} | {fwd:.2} | {dx:.2} | {dw:.2} |");
    }
}

/// The stride-2 table: column matrices against the direct convolution.
fn strided(width: usize, n: usize, reps: usize, device: &Device) {
    println!();
    println!("| stride 2 | fwd columns | fwd direct | weight grad columns | weight grad direct |");
    println!("|---|---|---|---|---|");
    for (c, hw) in [(width, 32usize), (2 * width, 16), (4 * width, 8)] {
        let l = hw.div_ceil(2) * hw.div_ceil(2);
        let (xv, wv, dv) = (
            data(n * c * hw * hw),
            data(2 * c * c * 9),
            data(n * 2 * c * l),
        );
        let (fwd_cols, dw_cols) = by_columns(c, 2 * c, hw, 2, (&xv, &wv, &dv), reps, device);
        let s = Shape3 {
            n,
            ci: c,
            co: 2 * c,
            h: hw,
            w: hw,
        };
        let fwd = ms(reps, || {
            std::hint::black_box(direct::forward_strided(&xv, &wv, s));
        });
        let dw = ms(reps, || {
            std::hint::black_box(direct::weight_grad_strided(&xv, &dv, s));
        });
        println!(
            "| {c} -> {} ch, {hw}x{hw} -> {} | {fwd_cols:.1} | {fwd:.1} | {dw_cols:.1} | {dw:.1} |",
            2 * c,
            hw / 2
        );
    }
}

/// Values in [-1, 1) without a random generator.
fn data(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 211) as f32 / 100.0 - 1.0)
        .collect()
}

/// Milliseconds of the forward pass and the weight gradient by the column matrices (`cpu::conv`,
/// as `cpu::conv2d` computes them where the direct convolution is not chosen) of a 3x3
/// convolution of `ci` to `co` channels on `hw x hw` planes at `stride`, padding 1, for the
/// input, weight and output gradient `(x, w, dy)`.
fn by_columns(
    ci: usize,
    co: usize,
    hw: usize,
    stride: usize,
    (xv, wv, dv): (&[f32], &[f32], &[f32]),
    reps: usize,
    device: &Device,
) -> (f64, f64) {
    use cleanse_core::cpu::conv::{self, ConvGeometry};
    let n = xv.len() / (ci * hw * hw);
    let g = ConvGeometry::three_by_three(n, ci, co, hw, stride);
    let (k, l) = (g.rows(), g.cols());
    let w = Tensor::<3>::from_data(TensorData::new(wv.to_vec(), [1, co, k]), device);
    let fwd = ms(reps, || {
        for images in g.chunks(1) {
            let cols = conv::columns(xv, &g, images.clone(), 1);
            let cols = Tensor::<3>::from_data(TensorData::new(cols, [images.len(), k, l]), device);
            let _ = w.clone().matmul(cols).into_data();
        }
    });
    let group = g.group();
    let dw = ms(reps, || {
        let mut dw = vec![0.0f32; co * k];
        for images in g.chunks(group) {
            let groups = images.len().div_ceil(group);
            let members = images.len() / groups;
            let cols = conv::columns(xv, &g, images.clone(), members);
            let rows = conv::group_rows(dv, &g, images, members);
            let cols =
                Tensor::<3>::from_data(TensorData::new(cols, [groups, k, members * l]), device);
            let rows =
                Tensor::<3>::from_data(TensorData::new(rows, [groups, co, members * l]), device);
            let parts = rows.matmul(cols.swap_dims(1, 2)).into_data();
            conv::add_images(&mut dw, &parts.try_to_vec::<f32>().expect("f32"));
        }
        std::hint::black_box(dw);
    });
    (fwd, dw)
}
