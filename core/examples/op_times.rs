//! Op by op: milliseconds per call of ResNet-18's 3x3 convolution and batch norm at each stage's
//! shape (batch 128), on the CPU backend, for BENCHMARKS.md; `bench/pytorch_op_times.py` times
//! the same calls in PyTorch. Run in one sitting, nothing else running:
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example op_times -- 16
//!     python3 bench/pytorch_op_times.py --width 16 --threads 2
//!
//! Columns: conv forward, by Burn and by `cleanse_core::cpu`; conv input gradient alone (a
//! transposed convolution, what Burn's backward and the project's call); conv weight gradient
//! alone and conv forward + backward (input and weight gradients), each by Burn and by
//! `cleanse_core::cpu`; batch norm training forward and forward + backward, by Burn's
//! default and by `cleanse_core::cpu`.
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
        "| layer | conv fwd (Burn) | conv fwd (cleanse) | conv input grad (Burn) | conv weight grad (Burn) | conv weight grad (cleanse) | conv fwd+bwd (Burn) | conv fwd+bwd (cleanse) | BN fwd (Burn) | BN fwd (cleanse) | BN fwd+bwd (Burn) | BN fwd+bwd (cleanse) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, hw) in [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)] {
        let x = Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let r =
            Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device).autodiff();
        let w = Tensor::<4>::random([c, c, 3, 3], Distribution::Normal(0.0, 0.1), &device);
        let opt = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let fwd = ms(reps, || {
            let _ = conv2d(x.clone(), w.clone(), None, opt.clone()).into_data();
        });
        let layer = burn::nn::conv::Conv2d {
            weight: burn::module::Param::from_tensor(w.clone()),
            bias: None,
            stride: [1, 1],
            kernel_size: [3, 3],
            dilation: [1, 1],
            groups: 1,
            padding: burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1),
        };
        let our_fwd = ms(reps, || {
            let _ = cleanse_core::cpu::conv2d(&layer, x.clone()).into_data();
        });
        // The weight gradient alone, Burn's and the project's, on the plain backend.
        let dy = Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let weight_grad = |ours: bool| {
            use burn::backend::ops::ModuleOps;
            use cleanse_core::cpu::CpuKernels;
            type Ops = burn::backend::Dispatch;
            ms(reps, || {
                let (xd, wd, gd) = (
                    x.clone().into_dispatch(),
                    w.clone().into_dispatch(),
                    dy.clone().into_dispatch(),
                );
                let t = match ours {
                    false => {
                        <Ops as ModuleOps<Ops>>::conv2d_weight_backward(xd, wd, gd, opt.clone())
                    }
                    true => <Ops as CpuKernels>::conv_weight_grad(xd, wd, gd, opt.clone()),
                };
                let _ = Tensor::<4>::from_dispatch(t).into_data();
            })
        };
        let (bw, ow) = (weight_grad(false), weight_grad(true));
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
        let layer_ad = burn::nn::conv::Conv2d {
            weight: burn::module::Param::from_tensor(wa.clone()),
            ..layer.clone()
        };
        let our_fb = ms(reps, || {
            let y = cleanse_core::cpu::conv2d(&layer_ad, xa.clone());
            let g = (y * r.clone()).sum().backward();
            let _ = xa.grad(&g).expect("x grad").into_data();
            let _ = layer_ad.weight.val().grad(&g).expect("w grad").into_data();
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
            "| {c} ch {hw}x{hw} | {fwd:.1} | {our_fwd:.1} | {dx:.1} | {bw:.1} | {ow:.1} | {conv_fb:.1} | {our_fb:.1} | {bf:.1} | {of:.1} | {bb:.1} | {ob:.1} |"
        );
    }
}
