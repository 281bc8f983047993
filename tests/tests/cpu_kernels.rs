//! The project's CPU kernels (`cleanse_core::cpu`) against Burn's default implementation of the
//! same op on the same backend (`flex`): values, gradients and running statistics.
//!
//! Tolerances: outputs and statistics within 1e-5 relative (plus 1e-5 absolute), gradients within
//! 1e-4: both compute in f32 with sums in a different order. Convolutions sum up to 4,608 products
//! per output and up to 2,048 per weight gradient: 1e-4 for their outputs, 1e-3 for gradients.

use burn::backend::Dispatch;
use burn::module::Param;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use cleanse_core::cpu::{self, CpuKernels};

fn flex() -> Device {
    Device::flex()
}

fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut r = cleanse_core::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.next_f32() * 3.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32, what: &str) {
    let a: Vec<f32> = a.into_data().try_to_vec().expect("f32");
    let b: Vec<f32> = b.into_data().try_to_vec().expect("f32");
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: cleanse {x} vs Burn {y}"
        );
    }
}

/// A batch norm with random gamma and beta and running statistics away from the defaults.
fn layer(c: usize, seed: u64, device: &Device) -> BatchNorm {
    let mut bn: BatchNorm = BatchNormConfig::new(c).init(device);
    bn.gamma = Param::from_tensor(random([c], seed, device));
    bn.beta = Param::from_tensor(random([c], seed + 1, device));
    bn.running_mean = burn::module::RunningState::new(random([c], seed + 2, device));
    bn.running_var =
        burn::module::RunningState::new(random([c], seed + 3, device).abs().add_scalar(0.5));
    bn
}

/// Shapes: batch 1, odd sizes, 1x1 planes, channel counts 3 to 512.
const SHAPES: [[usize; 4]; 6] = [
    [1, 3, 5, 7],
    [2, 16, 32, 32],
    [3, 7, 1, 1],
    [4, 64, 8, 8],
    [5, 512, 2, 2],
    [8, 128, 4, 3],
];

#[test]
fn training_forward_and_gradients_match_burns_batch_norm() {
    let ad = flex().autodiff();
    for (k, [n, c, h, w]) in SHAPES.into_iter().enumerate() {
        let seed = 10 * k as u64;
        let x = random([n, c, h, w], seed, &flex());
        let r = random([n, c, h, w], seed + 5, &ad);
        let gamma = random([c], seed + 6, &flex());
        let beta = random([c], seed + 7, &flex());
        let eps = 1e-5;

        let run = |ours: bool| {
            let (x, g, b) = (
                x.clone().autodiff().require_grad(),
                gamma.clone().autodiff().require_grad(),
                beta.clone().autodiff().require_grad(),
            );
            let (out, mean, var) = if ours {
                let (o, m, v) = <Dispatch as CpuKernels>::bn_train(
                    x.clone().into_dispatch(),
                    g.clone().into_dispatch(),
                    b.clone().into_dispatch(),
                    eps,
                );
                (
                    Tensor::<4>::from_dispatch(o),
                    Tensor::<1>::from_dispatch(m),
                    Tensor::<1>::from_dispatch(v),
                )
            } else {
                let t =
                    burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), eps);
                (t.output, t.mean, t.variance)
            };
            let grads = (out.clone() * r.clone()).sum().backward();
            (
                out.inner(),
                mean.inner(),
                var.inner(),
                x.grad(&grads).expect("x grad"),
                g.grad(&grads).expect("gamma grad"),
                b.grad(&grads).expect("beta grad"),
            )
        };
        let (o1, m1, v1, xg1, gg1, bg1) = run(true);
        let (o2, m2, v2, xg2, gg2, bg2) = run(false);
        let at = format!("{n}x{c}x{h}x{w}");
        assert_close(o1, o2, 1e-5, &format!("output {at}"));
        assert_close(m1, m2, 1e-5, &format!("mean {at}"));
        assert_close(v1, v2, 1e-5, &format!("variance {at}"));
        assert_close(xg1, xg2, 1e-4, &format!("x grad {at}"));
        assert_close(gg1, gg2, 1e-4, &format!("gamma grad {at}"));
        assert_close(bg1, bg2, 1e-4, &format!("beta grad {at}"));
    }
}

#[test]
fn the_model_batch_norm_matches_burns_in_training_and_evaluation() {
    let ad = flex().autodiff();
    for (k, [n, c, h, w]) in SHAPES.into_iter().enumerate() {
        let seed = 100 + 10 * k as u64;
        // Two layers with the same values (a clone would share its running statistics).
        let ours = layer(c, seed, &ad);
        let burns = layer(c, seed, &ad);
        let at = format!("{n}x{c}x{h}x{w}");
        // Two training steps: the running statistics are updated twice.
        for step in 0..2 {
            let x = random([n, c, h, w], seed + 20 + step, &ad);
            let y1 = cpu::batch_norm(&ours, x.clone());
            let y2 = burns.forward(x);
            assert_close(y1.inner(), y2.inner(), 1e-5, &format!("train output {at}"));
        }
        assert_close(
            ours.running_mean.value(),
            burns.running_mean.value(),
            1e-5,
            &format!("running mean {at}"),
        );
        assert_close(
            ours.running_var.value(),
            burns.running_var.value(),
            1e-5,
            &format!("running variance {at}"),
        );
        // Evaluation: plain tensors through the running statistics.
        let (ours, burns) = (ours.valid(), burns.valid());
        let x = random([n, c, h, w], seed + 30, &flex());
        assert_close(
            cpu::batch_norm(&ours, x.clone()),
            burns.forward(x),
            1e-5,
            &format!("eval output {at}"),
        );
    }
}

/// The fused evaluation ops give the bits of the two ops they replace: batch norm then ReLU, and
/// the residual sum then ReLU (negative values, zeros and a NaN included), also when they write
/// over an input no one else holds.
#[test]
fn the_fused_relus_give_the_bits_of_the_two_ops() {
    use burn::tensor::activation::relu;
    let bits = |t: Tensor<4>| -> Vec<u32> {
        let v: Vec<f32> = t.into_data().try_to_vec().expect("f32");
        v.iter().map(|f| f.to_bits()).collect()
    };
    for (k, [n, c, h, w]) in SHAPES.into_iter().enumerate() {
        let seed = 300 + 10 * k as u64;
        let bn = layer(c, seed, &flex());
        let x = random([n, c, h, w], seed + 5, &flex());
        let at = format!("{n}x{c}x{h}x{w}");
        assert_eq!(
            bits(cpu::batch_norm_relu(&bn, x.clone())),
            bits(relu(cpu::batch_norm(&bn, x.clone()))),
            "batch norm + ReLU {at}"
        );
        let mut b: Vec<f32> = random([n, c, h, w], seed + 6, &flex())
            .into_data()
            .try_to_vec()
            .expect("f32");
        b[0] = f32::NAN;
        if b.len() > 1 {
            b[1] = -0.0;
        }
        let b = Tensor::<4>::from_data(TensorData::new(b, [n, c, h, w]), &flex());
        let fused = cpu::add_relu(x.clone(), b.clone());
        assert!(
            fused
                .clone()
                .into_data()
                .iter::<f32>()
                .next()
                .is_some_and(f32::is_nan)
        );
        assert_eq!(
            bits(fused),
            bits(relu(x.clone() + b.clone())),
            "sum + ReLU {at}"
        );
        // An input no one else holds is overwritten in place: the same bits; one still held
        // elsewhere is left as it was.
        let sole = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &flex());
        let before = bits(x.clone());
        assert_eq!(
            bits(cpu::batch_norm_relu(&bn, sole(&x))),
            bits(cpu::batch_norm_relu(&bn, x.clone())),
            "batch norm + ReLU in place {at}"
        );
        assert_eq!(
            bits(cpu::batch_norm(&bn, sole(&x))),
            bits(cpu::batch_norm(&bn, x.clone())),
            "batch norm in place {at}"
        );
        assert_eq!(
            bits(cpu::add_relu(sole(&x), b.clone())),
            bits(relu(x.clone() + b.clone())),
            "sum + ReLU in place {at}"
        );
        assert_eq!(bits(x), before, "a shared input is not written");
    }
}

#[test]
fn a_frozen_layer_under_autodiff_passes_gradients_as_burns_does() {
    let ad = flex().autodiff();
    let [n, c, h, w] = [3, 6, 4, 5];
    let mut ours = layer(c, 7, &ad);
    let mut burns = layer(c, 7, &ad);
    ours.training = Param::from_bool(false);
    burns.training = Param::from_bool(false);
    let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &flex());
    let r = random([n, c, h, w], 8, &ad);
    let grad = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let x = x.clone().autodiff().require_grad();
        let g = (f(x.clone()) * r.clone()).sum().backward();
        x.grad(&g).expect("x grad")
    };
    assert_close(
        grad(&|x| cpu::batch_norm(&ours, x)),
        grad(&|x| burns.forward(x)),
        1e-5,
        "frozen layer x grad",
    );
    // Frozen: the running statistics did not move.
    assert_close(
        ours.running_mean.value(),
        layer(c, 7, &ad).running_mean.value(),
        0.0,
        "frozen running mean",
    );
}

/// The convolution cases: `(n, c_in, c_out, h, w, kernel, stride, padding, bias)`: batch 1, odd
/// sizes, 1x1 planes, stride 1 and 2, padding 0 and 1 (and 3 for a 7x7 kernel), 1x1 and 3x3
/// kernels, 3 to 512 channels; 5 images of 32x32 make the weight gradient's groups of two end
/// with a shorter one.
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);

const CONVS: [ConvCase; 14] = [
    (5, 3, 4, 32, 32, 3, 1, 1, false),
    // The direct convolution's shapes: 3x3, stride 1, padding 1, channels in blocks of 8.
    (2, 16, 32, 8, 8, 3, 1, 1, false),
    (3, 8, 16, 12, 10, 3, 1, 1, true),
    (1, 3, 16, 32, 32, 3, 1, 1, false),
    (2, 16, 32, 9, 7, 3, 2, 1, false),
    (3, 32, 64, 8, 8, 1, 2, 0, false),
    (2, 5, 3, 6, 5, 3, 1, 0, true),
    (2, 512, 512, 4, 4, 3, 1, 1, false),
    (1, 4, 6, 1, 1, 3, 1, 1, true),
    (4, 7, 9, 11, 11, 1, 1, 0, false),
    (2, 3, 8, 15, 13, 7, 2, 3, true),
    (3, 64, 16, 7, 7, 3, 2, 1, false),
    // The strided direct convolution's tiles (AVX-512): rows of 16 outputs, 4x4 blocks.
    (2, 8, 16, 32, 32, 3, 2, 1, false),
    (2, 16, 32, 8, 8, 3, 2, 1, true),
];

fn conv_layer(case: usize, device: &Device) -> burn::nn::conv::Conv2d {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    let (_, ci, co, _, _, k, s, p, bias) = CONVS[case];
    let mut conv = Conv2dConfig::new([ci, co], [k, k])
        .with_stride([s, s])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
        .init(device);
    conv.weight =
        Param::from_tensor(random([co, ci, k, k], 70 + case as u64, device).mul_scalar(0.1));
    conv.bias = conv
        .bias
        .map(|_| Param::from_tensor(random([co], 80 + case as u64, device)));
    conv
}

#[test]
fn convolution_values_and_gradients_match_burns() {
    let ad = flex().autodiff();
    for (case, &(n, ci, _, h, w, ..)) in CONVS.iter().enumerate() {
        let conv = conv_layer(case, &ad);
        let x = random([n, ci, h, w], 90 + case as u64, &ad).require_grad();
        let ours = cpu::conv2d(&conv, x.clone());
        let burns = conv.forward(x.clone());
        assert_eq!(ours.dims(), burns.dims(), "case {case}: shape");
        let r = random(burns.dims(), 100 + case as u64, &ad);
        let what = |t: &str| format!("case {case} {t}");
        assert_close(
            ours.clone().inner(),
            burns.clone().inner(),
            1e-4,
            &what("output"),
        );
        let go = (ours * r.clone()).sum().backward();
        let gb = (burns * r).sum().backward();
        let grad = |g: &_| x.grad(g).expect("x grad");
        assert_close(grad(&go), grad(&gb), 1e-3, &what("input grad"));
        let wgrad = |g: &_| conv.weight.val().grad(g).expect("weight grad");
        assert_close(wgrad(&go), wgrad(&gb), 1e-3, &what("weight grad"));
        if let Some(b) = &conv.bias {
            let bgrad = |g: &_| b.val().grad(g).expect("bias grad");
            assert_close(bgrad(&go), bgrad(&gb), 1e-4, &what("bias grad"));
        }
    }
}

#[test]
fn a_convolution_without_autodiff_matches_burns() {
    for (case, &(n, ci, _, h, w, ..)) in CONVS.iter().enumerate() {
        let conv = conv_layer(case, &flex());
        let x = random([n, ci, h, w], 90 + case as u64, &flex());
        let what = format!("case {case}");
        assert_close(cpu::conv2d(&conv, x.clone()), conv.forward(x), 1e-4, &what);
    }
}

#[test]
fn the_convolution_gives_the_same_bits_on_one_thread_and_on_three() {
    // The matrix products (gemm) split rows and columns, never the sums, between threads; the
    // weight gradient's sums over groups of images have one order; the direct convolution (case
    // 1, and the strided one, case 13) sums each output in one task.
    let run = |threads: usize, case: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let ad = flex().autodiff();
            let conv = conv_layer(case, &ad);
            let (_, ci, _, h, w, ..) = CONVS[case];
            let x = random([16, ci, h, w], 5, &ad).require_grad();
            let y = cpu::conv2d(&conv, x.clone());
            let g = (y.clone() * random(y.dims(), 6, &ad)).sum().backward();
            let bits = |t: Tensor<4>| -> Vec<u32> {
                let v: Vec<f32> = t.into_data().try_to_vec().expect("f32");
                v.iter().map(|f| f.to_bits()).collect()
            };
            [
                bits(y.inner()),
                bits(x.grad(&g).expect("x grad")),
                bits(conv.weight.val().grad(&g).expect("weight grad")),
            ]
        })
    };
    for case in [0, 1, 13] {
        assert_eq!(run(1, case), run(3, case), "case {case}");
    }
}

/// Conv - BN - ReLU - conv - BN - mean-pool - linear on 4x3x8x8 images, trained by plain SGD for
/// `steps` steps with the project's convolutions and batch norms (`ours`) or Burn's; returns each
/// step's loss.
fn short_training(ours: bool, steps: usize) -> Vec<f32> {
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::activation::relu;

    #[derive(burn::module::Module, Debug)]
    struct Net {
        c1: burn::nn::conv::Conv2d,
        b1: BatchNorm,
        c2: burn::nn::conv::Conv2d,
        b2: BatchNorm,
        fc: Linear,
    }
    let ad = flex().autodiff();
    let conv = |i, o| {
        Conv2dConfig::new([i, o], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&ad)
    };
    let mut net = Net {
        c1: conv(3, 6),
        b1: layer(6, 40, &ad),
        c2: conv(6, 6),
        b2: layer(6, 50, &ad),
        fc: LinearConfig::new(6, 3).init(&ad),
    };
    // The same initial weights for both runs.
    let mut r = cleanse_core::rng::Rng::new(9);
    net = net.map(&mut InitFrom(&mut r));
    let norm = |bn: &BatchNorm, x: Tensor<4>| {
        if ours {
            cpu::batch_norm(bn, x)
        } else {
            bn.forward(x)
        }
    };
    let convolve = |c: &burn::nn::conv::Conv2d, x: Tensor<4>| {
        if ours {
            cpu::conv2d(c, x)
        } else {
            c.forward(x)
        }
    };
    let mut opt = SgdConfig::new().init();
    let mut losses = Vec::new();
    for step in 0..steps {
        let x = random([4, 3, 8, 8], 1000 + step as u64, &ad);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &ad);
        let h = relu(norm(&net.b1, convolve(&net.c1, x)));
        let h = norm(&net.b2, convolve(&net.c2, h));
        let logits = net.fc.forward(h.mean_dim(3).mean_dim(2).reshape([4, 6]));
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(logits, y);
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = opt.step(0.05, net, grads);
    }
    losses
}

/// Overwrites every float parameter with seeded values (the same sequence for both runs).
struct InitFrom<'a>(&'a mut cleanse_core::rng::Rng);

impl burn::module::ModuleMapper for InitFrom<'_> {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut *self.0;
        p.map(|t| {
            let shape = t.shape();
            let v: Vec<f32> = (0..shape.num_elements())
                .map(|_| rng.next_f32() * 0.6 - 0.3)
                .collect();
            Tensor::from_data(TensorData::new(v, shape), &t.device()).require_grad()
        })
    }
}

#[test]
fn a_short_seeded_training_gives_burns_loss_curve() {
    let ours = short_training(true, 20);
    let burns = short_training(false, 20);
    for (i, (a, b)) in ours.iter().zip(&burns).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "step {i}: cleanse {a} vs Burn {b} ({ours:?} vs {burns:?})"
        );
    }
}
