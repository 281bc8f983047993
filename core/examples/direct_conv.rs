//! The direct 3x3 convolution (`cleanse_core::cpu::direct`) against the column-matrix one and
//! Burn's input gradient, milliseconds per call at each stage's shape of ResNet-18 (batch 128),
//! for BENCHMARKS.md. Run in one sitting, nothing else running:
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example direct_conv -- 16
//!
//! Columns: forward by Burn (`conv2d` on flex) and direct; input gradient by Burn
//! (`conv2d_x_backward`: a transposed convolution on flex) and direct; weight gradient by Burn
//! (`conv2d_weight_backward`) and direct (where the CPU has AVX-512).
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
    println!(
        "| layer | fwd Burn | fwd direct | input grad Burn | input grad direct | weight grad Burn | weight grad direct |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (c, hw) in [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)] {
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
        let dw = match direct::wide() {
            true => ms(reps, || {
                std::hint::black_box(direct::weight_grad(&xv, &dv, s));
            }),
            false => f64::NAN,
        };
        println!(
            "| {c} ch {hw}x{hw} | {burn_fwd:.1} | {fwd:.1} | {burn_dx:.1} | {dx:.1} | {burn_dw:.1} | {dw:.1} |"
        );
    }
}
