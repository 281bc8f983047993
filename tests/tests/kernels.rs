//! Each WGSL trigger kernel against its plain-tensor twin, on the wgpu device (lavapipe where
//! there is no GPU), and the twins against independent host computations. A SPIR-V build runs
//! `tests/spirv.rs` instead (the WGSL kernels do not run there).
#![cfg(not(feature = "spirv"))]

use burn::prelude::*;
use cleanse_core::attack::warp;
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Trigger};
use cleanse_core::data::DatasetKind;
use cleanse_core::data::synthetic::{SyntheticConfig, generate};
use cleanse_core::device::{self, DeviceChoice};
use cleanse_core::kernels;
use cleanse_core::rng::Rng;

fn wgpu() -> Device {
    device::select(DeviceChoice::Wgpu)
        .expect("no wgpu adapter: install mesa-vulkan-drivers (the README's setup and .ci/run do)")
        .device
}

fn random(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect()
}

fn on(v: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max difference {worst} > {tol}");
}

#[test]
fn device_detection_tells_wgpu_from_cpu() {
    assert!(kernels::runs_wgsl(&wgpu()));
    assert!(kernels::runs_wgsl(&wgpu().autodiff()));
    assert!(!kernels::runs_wgsl(&Device::flex()));
}

#[test]
fn trigger_kernels_match_their_tensor_twins_on_wgpu() {
    // Odd sizes and more elements than one row of workgroups exercise the index folding.
    check_trigger_kernels(
        [37, 3, 32, 32],
        &[
            AttackKind::Badnets,
            AttackKind::Lc,
            AttackKind::Blended,
            AttackKind::Sig,
            AttackKind::Wanet,
        ],
    );
}

/// The triggers of the supplement's Table 1 with a kernel (BadNets' 15x15 patch, SIG, WaNet's
/// grid) at ImageNet-10's 224 pixels.
#[test]
fn trigger_kernels_match_their_tensor_twins_at_224() {
    check_trigger_kernels(
        [3, 3, 224, 224],
        &[AttackKind::Badnets, AttackKind::Sig, AttackKind::Wanet],
    );
}

fn check_trigger_kernels(shape: [usize; 4], kinds: &[AttackKind]) {
    let device = wgpu();
    let x = random(shape.iter().product(), 1, 0.0, 1.0);
    let set = generate(&SyntheticConfig {
        train_size: 20,
        test_size: 1,
        side: shape[2],
        ..Default::default()
    })
    .train;
    for &kind in kinds {
        let attack = Attack::new(AttackConfig::supplement(kind, DatasetKind::Cifar10), &set)
            .expect("attack");
        let t = attack.trigger.expect("trigger");
        let twin = values(t.apply_tensor(on(&x, shape, &Device::flex())));
        let twin_wgpu = values(t.apply_tensor(on(&x, shape, &device)));
        let kernel = values(t.apply_kernel(on(&x, shape, &device)));
        let dispatched = values(t.apply(on(&x, shape, &device)));
        assert_close(&kernel, &twin, 1e-5, kind.name());
        assert_close(&kernel, &twin_wgpu, 1e-5, kind.name());
        assert_eq!(
            kernel,
            dispatched,
            "{}: apply uses the kernel on wgpu",
            kind.name()
        );
        // Autodiff tensors (as in training) get the same values back.
        let ad = values(t.apply(on(&x, shape, &device.clone().autodiff())));
        assert_close(&ad, &kernel, 0.0, kind.name());
    }
}

#[test]
fn sig_kernel_handles_gtsrb_amplitude_and_clipping() {
    let device = wgpu();
    let shape = [4, 3, 32, 32];
    let x = random(4 * 3 * 32 * 32, 2, -0.2, 1.2);
    let t = Trigger::signal(3, 32, 32, 60.0 / 255.0, 6.0);
    let kernel = values(t.apply_kernel(on(&x, shape, &device)));
    let twin = values(t.apply_tensor(on(&x, shape, &Device::flex())));
    assert_close(&kernel, &twin, 1e-5, "sig");
    assert!(kernel.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn grid_sample_kernel_matches_host_reference_with_per_sample_grids_and_padding() {
    let device = wgpu();
    let (n, c, h, w, ho, wo) = (5, 3, 9, 11, 7, 13);
    let x = random(n * c * h * w, 3, 0.0, 1.0);
    let grid = random(n * ho * wo * 2, 4, -1.3, 1.3);
    let got = values(kernels::grid_sample(
        on(&x, [n, c, h, w], &device),
        on(&grid, [n, ho, wo, 2], &device),
    ));
    let twin = values(warp::grid_sample_tensor(
        on(&x, [n, c, h, w], &Device::flex()),
        on(&grid, [n, ho, wo, 2], &Device::flex()),
    ));
    assert_close(&got, &twin, 1e-5, "grid_sample vs twin");
    let per_in = c * h * w;
    let per_out = c * ho * wo;
    for k in 0..n {
        let want = warp::grid_sample_host(
            &x[k * per_in..(k + 1) * per_in],
            c,
            h,
            w,
            &grid[k * ho * wo * 2..(k + 1) * ho * wo * 2],
            ho,
            wo,
        );
        assert_close(
            &got[k * per_out..(k + 1) * per_out],
            &want,
            1e-5,
            "grid_sample vs host",
        );
    }
}

/// The fused distillation-loss kernel: its loss and its gradient with respect to the student's
/// logits against the tensor twin's loss and autodiff gradient, on CPU and on wgpu.
#[test]
fn kd_kl_kernel_matches_the_twin_loss_and_gradient() {
    use cleanse_core::defend::kd::kd_loss;
    let wgpu = wgpu();
    let cpu = Device::flex();
    // 300 rows x 10 classes spans more than one workgroup; 43 classes is GTSRB.
    for (n, k, t) in [(300usize, 10usize, 1.3f64), (7, 43, 4.0)] {
        let s = random(n * k, 11, -6.0, 6.0);
        let tl = random(n * k, 12, -6.0, 6.0);
        let run = |device: &Device, fused: bool| {
            let student = Tensor::<2>::from_data(TensorData::new(s.clone(), [n, k]), device)
                .autodiff()
                .require_grad();
            let teacher =
                Tensor::<2>::from_data(TensorData::new(tl.clone(), [n, k]), device).autodiff();
            let loss = if fused {
                kernels::kd_loss(student.clone(), teacher, t)
            } else {
                kd_loss(student.clone(), teacher, t)
            };
            let value: f32 = loss.clone().into_scalar();
            let grads = loss.backward();
            let g = student
                .grad(&grads)
                .expect("student gradient")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32");
            (value, g)
        };
        let (twin_loss, twin_grad) = run(&cpu, false);
        let (kernel_loss, kernel_grad) = run(&wgpu, true);
        assert!(twin_loss > 0.1, "a nontrivial loss ({twin_loss})");
        assert!(
            (twin_loss - kernel_loss).abs() <= 1e-4 * twin_loss.abs().max(1.0),
            "n={n} k={k}: loss {kernel_loss} vs twin {twin_loss}"
        );
        let scale = twin_grad.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        assert_close(&kernel_grad, &twin_grad, 1e-4 * scale, "kd_kl gradient");
        // The twin on the wgpu device agrees as well (the dispatching entry point).
        let (wgpu_twin, _) = run(&wgpu, false);
        assert!((wgpu_twin - twin_loss).abs() <= 1e-4 * twin_loss.abs().max(1.0));
    }
}

/// IAB's generator trains on wgpu: its upsampling has a backward there, equal to the CPU's.
#[test]
fn iab_upsampling_backward_runs_on_wgpu() {
    use cleanse_core::attack::iab::upsample2x_bilinear;
    let x = random(2 * 3 * 4 * 4, 21, 0.0, 1.0);
    let w = random(2 * 3 * 8 * 8, 22, -1.0, 1.0);
    let grad_on = |device: &Device| {
        let xt = on(&x, [2, 3, 4, 4], device).autodiff().require_grad();
        let wt = on(&w, [2, 3, 8, 8], device).autodiff();
        let grads = (upsample2x_bilinear(xt.clone()) * wt).sum().backward();
        values(xt.grad(&grads).expect("input gradient"))
    };
    let cpu = grad_on(&Device::flex());
    let gpu = grad_on(&wgpu());
    assert!(cpu.iter().any(|v| v.abs() > 0.1));
    assert_close(&gpu, &cpu, 1e-5, "upsampling gradient");
}

/// The cleanser's student, mixed on the device: the same on wgpu as on the CPU.
#[test]
fn the_reinitialised_student_is_the_same_on_wgpu_and_cpu() {
    use cleanse_core::defend::reinit::{ADAPTIVE_RATIOS, InitMode, student};
    use cleanse_core::model::{Architecture, ModelConfig, Normalization};
    let cfg = ModelConfig {
        architecture: Architecture::Resnet18,
        width: 4,
        num_classes: 10,
        normalization: Normalization::cifar10(),
    };
    let mode = InitMode::Adaptive {
        ratios: ADAPTIVE_RATIOS.map(|r| r * 3.0),
    };
    let x = random(2 * 3 * 32 * 32, 5, 0.0, 1.0);
    let mut outs = Vec::new();
    for device in [Device::flex(), wgpu()] {
        let teacher = cfg.init_seeded(&device, 1);
        let (s, realised) = student(&teacher, &cfg, &mode, 7, &device);
        let logits = s.forward(on(&x, [2, 3, 32, 32], &device));
        let v: Vec<f32> = logits.into_data().try_to_vec().expect("f32");
        assert!(v.iter().all(|a| a.is_finite()), "{v:?}");
        outs.push((v, realised.total_fraction));
    }
    assert_eq!(outs[0].1, outs[1].1);
    assert_close(&outs[0].0, &outs[1].0, 1e-3, "student logits");
}
