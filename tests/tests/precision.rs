//! Reduced-precision training (`--precision`) on the wgpu device (lavapipe where there is no
//! GPU): which devices refuse which precision, the f16 convolution and its gradients against
//! f32's, and training steps in f16 (with the loss scaled) against f32's. Lavapipe offers
//! `shader-f16` on some machines and not on others (not on an AMD EPYC without AVX-512, Mesa
//! 22.3): there the f16 tests check the refusal instead and say so.
#![cfg(not(feature = "spirv"))]

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::DType;
use cleanse_core::cpu;
use cleanse_core::device::{self, DeviceChoice, Selected};
use cleanse_core::engine::Trainee;
use cleanse_core::engine::eval::{images_tensor, labels_tensor};
use cleanse_core::model::loss::cross_entropy;
use cleanse_core::model::{Architecture, ModelConfig, Normalization};
use cleanse_core::optim::{Sgd, SgdConfig};
use cleanse_core::precision::{Precision, autocast, conv_dtype};
use cleanse_core::rng::Rng;

fn wgpu() -> Selected {
    device::select(DeviceChoice::Wgpu)
        .expect("no wgpu adapter: install mesa-vulkan-drivers (the README's setup and .ci/run do)")
}

/// The wgpu device in f16, or `None` (said on stderr) where its adapter has no `shader-f16`, after
/// checking that the refusal names the flag and why.
fn wgpu_f16() -> Option<Selected> {
    match wgpu().with_precision(Precision::F16) {
        Ok(selected) => Some(selected),
        Err(e) => {
            let err = e.to_string();
            assert!(
                err.contains("`precision`") && err.contains("no f16 arithmetic"),
                "names the flag and why: {err}"
            );
            eprintln!("this adapter has no shader-f16: f16 refused, not run ({err})");
            None
        }
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

/// The largest difference between `a` and `b`, relative to `b`'s largest magnitude.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
        / scale
}

#[test]
fn devices_refuse_what_they_cannot_compute() {
    let cpu = device::select(DeviceChoice::Cpu).expect("the CPU");
    let err = cpu
        .clone()
        .with_precision(Precision::F16)
        .expect_err("the CPU kernels are f32")
        .to_string();
    assert!(
        err.contains("--precision") && err.contains("CPU"),
        "names the flag and why: {err}"
    );
    assert!(cpu.clone().with_precision(Precision::Bf16).is_err());
    assert_eq!(
        cpu.with_precision(Precision::F32).expect("f32").precision(),
        Precision::F32
    );
    let err = wgpu()
        .with_precision(Precision::Bf16)
        .expect_err("no bf16 arithmetic in WGSL")
        .to_string();
    assert!(err.contains("bf16 arithmetic"), "{err}");
    if let Some(f16) = wgpu_f16() {
        assert_eq!(f16.info.precision, Precision::F16);
        // Recorded in reports; a report from before the field reads as f32.
        let json = serde_json::to_value(&f16.info).expect("serialises");
        assert_eq!(json["precision"], "f16");
        let mut old = json.clone();
        old.as_object_mut().expect("object").remove("precision");
        let back: device::DeviceInfo = serde_json::from_value(old).expect("an older report");
        assert_eq!(back.precision, Precision::F32);
    }
    assert_eq!(
        "bf16".parse::<Precision>().expect("a name"),
        Precision::Bf16
    );
    assert!("fp16".parse::<Precision>().is_err());
}

#[test]
fn autocast_is_scoped_to_its_closure() {
    assert_eq!(conv_dtype(), None);
    let inside = autocast(Precision::F16, || {
        let nested = autocast(Precision::F32, conv_dtype);
        (conv_dtype(), nested)
    });
    assert_eq!(inside, (Some(burn::tensor::FloatDType::F16), None));
    assert_eq!(conv_dtype(), None, "restored");
    let caught = std::panic::catch_unwind(|| autocast(Precision::F16, || panic!("inside")));
    assert!(caught.is_err());
    assert_eq!(conv_dtype(), None, "restored after a panic");
}

/// Forward, input gradient and weight gradient of an f16 convolution against f32's, for the
/// shapes of the model's layers (3x3 stride 1 and 2, the 1x1 shortcut).
#[test]
fn f16_convolution_and_its_gradients_follow_f32() {
    let Some(selected) = wgpu_f16() else {
        return;
    };
    let device = selected.device.autodiff();
    for (cin, cout, k, stride, pad) in [
        (3, 8, 3, 1, 1),
        (8, 16, 3, 2, 1),
        (8, 16, 1, 2, 0),
        (16, 16, 3, 1, 1),
    ] {
        let conv: Conv2d = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .init(&device);
        let shape = [3, cin, 9, 9];
        let x_values = random(shape.iter().product(), 7);
        let run = |precision: Precision| {
            let x = Tensor::<4>::from_data(TensorData::new(x_values.clone(), shape), &device)
                .require_grad();
            let y = autocast(precision, || cpu::conv2d(&conv, x.clone()));
            assert_eq!(y.dtype(), DType::F32, "the output comes back in f32");
            let r = Tensor::<4>::from_data(
                TensorData::new(random(y.shape().num_elements(), 11), y.dims()),
                &device,
            );
            let grads = (y.clone() * r).sum().backward();
            let gx = x.grad(&grads).expect("input gradient");
            let gw = conv.weight.val().grad(&grads).expect("weight gradient");
            assert_eq!(
                gw.dtype(),
                DType::F32,
                "the weight's gradient arrives in f32"
            );
            (values(y.inner()), values(gx), values(gw))
        };
        let (y32, gx32, gw32) = run(Precision::F32);
        let (y16, gx16, gw16) = run(Precision::F16);
        let what = format!("{cin}->{cout} {k}x{k} stride {stride}");
        // f16 keeps 11 significant bits (2^-11 ~ 5e-4 per value); sums of up to 144 products.
        // Measured on lavapipe: 0.8e-3 to 4.3e-3.
        for (name, a, b, tol) in [
            ("forward", &y16, &y32, 1e-2),
            ("input gradient", &gx16, &gx32, 1e-2),
            ("weight gradient", &gw16, &gw32, 1e-2),
        ] {
            let gap = relative_gap(a, b);
            assert!(gap < tol, "{what} {name}: relative gap {gap} >= {tol}");
            assert!(
                gap > 0.0,
                "{what} {name}: f16 gave f32's exact values: not run in f16?"
            );
        }
    }
}

/// Steps of a small ResNet-18 in f16 with the loss scaled against the same steps in f32: the
/// losses stay close, the weights stay f32, the scale is kept in the optimiser's state.
#[test]
fn f16_training_steps_follow_f32() {
    let Some(selected) = wgpu_f16() else {
        return;
    };
    let device = selected.device.clone();
    let ad = device.clone().autodiff();
    let config = ModelConfig {
        architecture: Architecture::Resnet18,
        width: 4,
        num_classes: 10,
        normalization: Normalization::cifar10(),
    };
    let (n, side) = (16, 16);
    let shape = [n, 3, side, side];
    let batches: Vec<(Vec<f32>, Vec<i64>)> = (0..4)
        .map(|i| {
            let mut rng = Rng::new(100 + i);
            (
                (0..n * 3 * side * side).map(|_| rng.next_f32()).collect(),
                (0..n).map(|_| rng.below(10) as i64).collect(),
            )
        })
        .collect();
    let run = |precision: Precision| {
        let mut trainee = Trainee::new(
            config.init_seeded(&ad, 3),
            Sgd::new(SgdConfig::default()),
            &device,
            precision,
        );
        let mut losses = Vec::new();
        for (x, y) in &batches {
            let logits = trainee.forward(images_tensor(x.clone(), shape, &ad));
            let loss = cross_entropy(logits, labels_tensor(y.clone(), &ad));
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = trainee.backward(loss);
            trainee.update(0.05, grads);
        }
        (losses, trainee)
    };
    let (l32, t32) = run(Precision::F32);
    let (l16, t16) = run(Precision::F16);
    assert_eq!(t32.sgd.loss_scale(), None, "f32 scales nothing");
    let scale = t16.sgd.loss_scale().expect("f16 scales the loss");
    // No step overflowed at the initial scale, so every step was applied and the losses
    // (each after the updates before it) follow f32's: measured within 1.2% on lavapipe.
    assert_eq!(
        (scale.skipped, scale.clean_steps),
        (0, batches.len() as u64)
    );
    for (i, (a, b)) in l16.iter().zip(&l32).enumerate() {
        assert!(
            (a - b).abs() < 0.03 * b.abs(),
            "step {i}: f16 loss {a} vs f32 {b}"
        );
    }
    // The scale survives a checkpoint of the optimiser.
    let bytes = t16.sgd.to_bytes();
    let mut again = Sgd::new(SgdConfig::default()).with_loss_scaling();
    again
        .load_bytes(std::path::Path::new("sgd.bin"), &bytes, &device)
        .expect("load");
    assert_eq!(again.loss_scale(), Some(scale));
    assert_eq!(again.to_bytes(), bytes);
}
