//! The SPIR-V build (`cargo test --release -p cleanse-tests --features spirv --test spirv`): on a
//! GPU whose Vulkan driver takes SPIR-V the wgpu runtime compiles SPIR-V, the project's WGSL
//! kernels give way to their tensor twins, and the results match the CPU's: triggers, the
//! distillation loss and its gradient, a training step of the model.
//!
//! Software Vulkan is skipped with a message: this machine's lavapipe (Mesa 22.3.6) reports what
//! CubeCL's SPIR-V needs and then crashes (SIGSEGV inside `libvulkan_lvp.so`, creating the first
//! compute pipeline), so these tests run where a GPU is: the test binary is carried to a lent GPU
//! machine by `bench/gpu_check.sh`.
#![cfg(feature = "spirv")]

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use cleanse_core::attack::{Attack, AttackConfig, AttackKind};
use cleanse_core::data::DatasetKind;
use cleanse_core::data::synthetic::{SyntheticConfig, generate};
use cleanse_core::device::{self, DeviceChoice};
use cleanse_core::kernels;
use cleanse_core::model::loss::cross_entropy;
use cleanse_core::model::{Architecture, Classifier, ModelConfig, Normalization};
use cleanse_core::optim::{Sgd, SgdConfig};
use cleanse_core::rng::Rng;

/// The wgpu device when its adapter is a GPU; `None` (with a message) on software Vulkan.
fn gpu() -> Option<Device> {
    let selected = device::select(DeviceChoice::Wgpu).expect("no wgpu adapter");
    let adapter = selected.info.adapter.clone().expect("a wgpu adapter");
    // The runtime compiles SPIR-V here too (lavapipe reports what CubeCL's SPIR-V needs), so the
    // WGSL kernels must not run: starting the runtime creates no pipeline yet.
    assert!(
        !kernels::runs_wgsl(&selected.device),
        "{} fell back to WGSL: the test needs a Vulkan driver that takes CubeCL's SPIR-V",
        adapter.name
    );
    if !adapter.is_hardware() {
        eprintln!(
            "skipped: {} is software Vulkan, whose SPIR-V pipelines crash here (see the module docs)",
            adapter.name
        );
        return None;
    }
    Some(selected.device)
}

fn random(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect()
}

fn on<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn the_runtime_compiles_spirv_and_the_wgsl_kernels_give_way() {
    assert!(!kernels::runs_wgsl(&Device::flex()));
    let Some(device) = gpu() else { return };
    // Every trigger through `apply` (the kernel where it runs, else the twin): the CPU's values.
    let shape = [5, 3, 32, 32];
    let x = random(shape.iter().product(), 1, 0.0, 1.0);
    let set = generate(&SyntheticConfig {
        train_size: 20,
        test_size: 1,
        ..Default::default()
    })
    .train;
    for kind in [
        AttackKind::Badnets,
        AttackKind::Lc,
        AttackKind::Blended,
        AttackKind::Sig,
        AttackKind::Wanet,
    ] {
        let attack = Attack::new(AttackConfig::supplement(kind, DatasetKind::Cifar10), &set)
            .expect("attack");
        let t = attack.trigger.expect("trigger");
        let cpu = values(t.apply(on(&x, shape, &Device::flex())));
        let gpu = values(t.apply(on(&x, shape, &device)));
        let d = worst(&gpu, &cpu);
        assert!(d <= 1e-5, "{}: {d}", kind.name());
    }
    // The distillation loss and its gradient.
    let (n, k) = (16, 10);
    let s = random(n * k, 2, -3.0, 3.0);
    let t = random(n * k, 3, -3.0, 3.0);
    let run = |device: &Device| {
        let st = on(&s, [n, k], device).autodiff().require_grad();
        let loss = cleanse_core::defend::kd::distillation_loss(
            st.clone(),
            on(&t, [n, k], device).autodiff(),
            2.0,
        );
        let v: f32 = loss.clone().into_scalar();
        let g = values(st.grad(&loss.backward()).expect("gradient"));
        (v, g)
    };
    let (cpu_loss, cpu_grad) = run(&Device::flex());
    let (gpu_loss, gpu_grad) = run(&device);
    assert!((cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0));
    assert!(worst(&gpu_grad, &cpu_grad) <= 1e-5);
}

/// One SGD step of the CIFAR ResNet-18 (width 4) on the SPIR-V runtime against the CPU: logits,
/// loss and the weights after the step, within float tolerance.
#[test]
fn a_training_step_on_spirv_matches_the_cpu() {
    let Some(device) = gpu() else { return };
    let config = ModelConfig {
        architecture: Architecture::Resnet18,
        width: 4,
        num_classes: 10,
        normalization: Normalization::cifar10(),
    };
    let x = random(8 * 3 * 32 * 32, 4, 0.0, 1.0);
    let y: Vec<i64> = (0..8).map(|i| i % 10).collect();
    let step = |device: &Device| -> (Vec<f32>, f32, Vec<f32>) {
        let ad = device.clone().autodiff();
        let model: Classifier = config.init_seeded(&ad, 0);
        let logits = model.forward(on(&x, [8, 3, 32, 32], &ad));
        let labels = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [8]), &ad);
        let loss = cross_entropy(logits.clone(), labels);
        let l: f32 = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut sgd = Sgd::new(SgdConfig::default());
        let model = sgd.step(0.1, model, grads);
        let cleanse_core::model::Network::Resnet18(r) = &model.valid().net else {
            panic!("resnet")
        };
        let w = values(r.layer2[0].conv1.weight.val());
        (values(logits), l, w)
    };
    let (cpu_logits, cpu_loss, cpu_w) = step(&Device::flex());
    let (gpu_logits, gpu_loss, gpu_w) = step(&device);
    assert!(worst(&gpu_logits, &cpu_logits) <= 1e-3, "logits");
    assert!(
        (gpu_loss - cpu_loss).abs() <= 1e-4,
        "{gpu_loss} vs {cpu_loss}"
    );
    assert!(worst(&gpu_w, &cpu_w) <= 1e-4, "weights after the step");
}
