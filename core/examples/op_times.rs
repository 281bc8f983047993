//! Op by op: milliseconds per call of ResNet-18's 3x3 convolution and batch norm at each stage's
//! shape (batch 128), on the CPU backend, for BENCHMARKS.md; `bench/pytorch_op_times.py` times
//! the same calls in PyTorch. Run in one sitting, nothing else running:
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example op_times -- 16
//!     python3 bench/pytorch_op_times.py --width 16 --threads 2
//!
//! Columns: conv forward; conv input gradient alone (a transposed convolution, what Burn's
//! default backward calls); conv forward + backward (input and weight gradients); batch norm
//! training forward and forward + backward, by Burn's default and by `cleanse_core::cpu`.
//! Each backward is seeded with `sum(y * r)` for a fixed random `r`.
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
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
    let device = Device::flex();
    let width: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("width"))
        .unwrap_or(16);
    let n = 128;
    let reps = 5;
    println!(
        "| layer | conv fwd | conv input grad | conv fwd+bwd | BN fwd (Burn) | BN fwd (cleanse) | BN fwd+bwd (Burn) | BN fwd+bwd (cleanse) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (c, hw) in [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)] {
        let x = Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let r =
            Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device).autodiff();
        let w = Tensor::<4>::random([c, c, 3, 3], Distribution::Normal(0.0, 0.1), &device);
        let opt = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let fwd = ms(reps, || {
            let _ = conv2d(x.clone(), w.clone(), None, opt.clone()).into_data();
        });
        let topt = ConvTransposeOptions::new([1, 1], [1, 1], [0, 0], [1, 1], 1);
        let dx = ms(reps, || {
            let _ = conv_transpose2d(x.clone(), w.clone(), None, topt.clone()).into_data();
        });
        let xa = x.clone().autodiff().require_grad();
        let wa = w.clone().autodiff().require_grad();
        let conv_fb = ms(reps, || {
            let y = conv2d(xa.clone(), wa.clone(), None, opt.clone());
            let g = (y * r.clone()).sum().backward();
            let _ = xa.grad(&g).expect("x grad").into_data();
            let _ = wa.grad(&g).expect("w grad").into_data();
        });
        let bn: BatchNorm = BatchNormConfig::new(c).init(&device.clone().autodiff());
        let bn_time = |ours: bool, backward: bool| {
            ms(reps, || {
                let y = if ours {
                    cleanse_core::cpu::batch_norm(&bn, xa.clone())
                } else {
                    bn.forward(xa.clone())
                };
                if backward {
                    let g = (y * r.clone()).sum().backward();
                    let _ = xa.grad(&g).expect("x grad").into_data();
                } else {
                    let _ = y.into_data();
                }
            })
        };
        let (bf, of) = (bn_time(false, false), bn_time(true, false));
        let (bb, ob) = (bn_time(false, true), bn_time(true, true));
        println!(
            "| {c} ch {hw}x{hw} | {fwd:.1} | {dx:.1} | {conv_fb:.1} | {bf:.1} | {of:.1} | {bb:.1} | {ob:.1} |"
        );
    }
}
