//! `cleanse bench`: training and inference throughput of a classifier on random images (32x32
//! unless `--image-size` says otherwise).
//! Numbers go into BENCHMARKS.md with the command that produced them.

use crate::{DeviceArgs, ModelArg, PrecisionArgs};
use anyhow::Result;
use clap::Args;
use cleanse_core::engine::Trainee;
use cleanse_core::engine::eval::{images_tensor, labels_tensor};
use cleanse_core::model::loss::cross_entropy;
use cleanse_core::model::{ModelConfig, Normalization, check_width};
use cleanse_core::optim::{Sgd, SgdConfig};
use cleanse_core::output::{check_output, write_output_json};
use cleanse_core::precision::autocast;
use cleanse_core::rng::Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = ModelArg::Resnet18)]
    model: ModelArg,
    #[arg(long, default_value_t = 64)]
    width: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// The side of the random square images (e.g. 224 for `--model resnet18-imagenet`).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Timed training steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed warm-up steps (kernel compilation, autotuning, allocation).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Also write the result as JSON here (a new file).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Replace --json if it exists.
    #[arg(long)]
    force: bool,
}

/// The largest `--batch-size` of the benchmarks: at width 64 a batch of 4096 32x32 images already
/// needs tens of GiB of activations for a training step.
const MAX_BENCH_BATCH: usize = 4096;

/// Checks the sizes and the output file before any work.
fn check_bench(
    batch_size: usize,
    steps: usize,
    json: Option<&std::path::Path>,
    force: bool,
) -> Result<()> {
    if !(1..=MAX_BENCH_BATCH).contains(&batch_size) {
        anyhow::bail!("--batch-size: expected 1 to {MAX_BENCH_BATCH}; got {batch_size}");
    }
    if steps == 0 {
        anyhow::bail!("the number of timed steps must be positive");
    }
    if let Some(p) = json {
        check_output(p, "json", force)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct BenchResult {
    model: String,
    width: usize,
    batch_size: usize,
    image_size: usize,
    steps: usize,
    device: cleanse_core::device::DeviceInfo,
    train_images_per_sec: f64,
    inference_images_per_sec: f64,
    first_step_seconds: f64,
    /// Every untimed step's seconds, the first included (compilation and autotuning show here).
    warmup_step_seconds: Vec<f64>,
}

fn batch(rng: &mut Rng, n: usize, side: usize) -> (Vec<f32>, Vec<i64>) {
    let images = (0..n * 3 * side * side).map(|_| rng.next_f32()).collect();
    let labels = (0..n).map(|_| rng.below(10) as i64).collect();
    (images, labels)
}

pub fn run(a: &BenchArgs) -> Result<()> {
    check_width("width", a.width)?;
    cleanse_core::data::check_side("image-size", a.image_size)?;
    check_bench(a.batch_size, a.steps, a.json.as_deref(), a.force)?;
    let selected = a.precision.select(&a.device)?;
    let device = selected.device.clone();
    let ad = device.clone().autodiff();
    let config = ModelConfig {
        architecture: a.model.into(),
        width: a.width,
        num_classes: 10,
        normalization: Normalization::cifar10(),
    };
    let precision = selected.precision();
    // The training step of every run: forward in the precision, scaled backward, SGD.
    let mut trainee = Trainee::new(
        config.init_seeded(&ad, 0),
        Sgd::new(SgdConfig::default()),
        &device,
        precision,
    );
    // One batch of random data, made before any timing and given to every step (as the PyTorch
    // reference does), so that the rates are of the model's arithmetic alone.
    let side = a.image_size;
    let shape = [a.batch_size, 3, side, side];
    let (x, y) = batch(&mut Rng::new(0), a.batch_size, side);
    let (train_x, train_y) = (images_tensor(x.clone(), shape, &ad), labels_tensor(y, &ad));
    let infer_x = images_tensor(x, shape, &device);
    let mut step = || {
        let logits = trainee.forward(train_x.clone());
        let loss = cross_entropy(logits, train_y.clone());
        let _: f32 = loss.clone().into_scalar();
        let grads = trainee.backward(loss);
        trainee.update(0.01, grads);
    };
    let mut warmup_step_seconds = Vec::new();
    for i in 0..a.warmup.max(1) {
        let t = Instant::now();
        step();
        let _ = device.sync();
        let s = t.elapsed().as_secs_f64();
        errln!("warm-up training step {}: {s:.2}s", i + 1);
        warmup_step_seconds.push(s);
    }
    let first_step_seconds = warmup_step_seconds[0];
    let t = Instant::now();
    for _ in 0..a.steps {
        step();
    }
    let _ = device.sync();
    let train_ips = (a.steps * a.batch_size) as f64 / t.elapsed().as_secs_f64();
    errln!("training: {train_ips:.1} images/s");

    let eval = trainee.valid();
    let infer = || {
        let out = autocast(precision, || eval.forward(infer_x.clone()));
        let _ = out.into_data();
    };
    for _ in 0..a.warmup.max(1) {
        infer();
    }
    let t = Instant::now();
    for _ in 0..a.steps {
        infer();
    }
    let infer_ips = (a.steps * a.batch_size) as f64 / t.elapsed().as_secs_f64();
    errln!("inference: {infer_ips:.1} images/s");
    let result = BenchResult {
        model: config.architecture.name().into(),
        width: a.width,
        batch_size: a.batch_size,
        image_size: side,
        steps: a.steps,
        device: selected.info,
        train_images_per_sec: train_ips,
        inference_images_per_sec: infer_ips,
        first_step_seconds,
        warmup_step_seconds,
    };
    outln!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(p) = &a.json {
        write_output_json(p, &result, "json", a.force)?;
    }
    Ok(())
}

/// `cleanse bench-kernels`: each WGSL kernel (triggers, distillation loss) against its
/// plain-tensor twin on one device.
#[derive(Args, Debug)]
pub struct KernelBenchArgs {
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Timed repetitions per kernel (after one untimed warm-up).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Also write the result as JSON here (a new file).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Replace --json if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Serialize)]
struct KernelRow {
    trigger: &'static str,
    kernel_images_per_sec: Option<f64>,
    twin_images_per_sec: f64,
}

pub fn run_kernels(a: &KernelBenchArgs) -> Result<()> {
    check_bench(a.batch_size, a.reps, a.json.as_deref(), a.force)?;
    use burn::prelude::*;
    use cleanse_core::attack::{Attack, AttackConfig, AttackKind};
    use cleanse_core::data::DatasetKind;
    use cleanse_core::data::synthetic::{SyntheticConfig, generate};
    let selected = a.device.select()?;
    let device = selected.device.clone();
    let on_wgpu = cleanse_core::kernels::runs_wgsl(&device);
    let set = generate(&SyntheticConfig {
        train_size: 10,
        test_size: 1,
        ..Default::default()
    })
    .train;
    let mut rng = Rng::new(1);
    let n = a.batch_size;
    let x: Vec<f32> = (0..n * 3 * 32 * 32).map(|_| rng.next_f32()).collect();
    let input = || Tensor::<4>::from_data(TensorData::new(x.clone(), [n, 3, 32, 32]), &device);
    let time = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| -> f64 {
        // One warm-up (compilation), then timed runs, each read back to wait for the device.
        let _ = f(input()).sum().into_scalar::<f32>();
        let inputs: Vec<Tensor<4>> = (0..a.reps).map(|_| input()).collect();
        for t in &inputs {
            let _ = t.clone().sum().into_scalar::<f32>();
        }
        let t0 = Instant::now();
        for t in inputs {
            let _ = f(t).sum().into_scalar::<f32>();
        }
        (n * a.reps) as f64 / t0.elapsed().as_secs_f64()
    };
    let mut rows = Vec::new();
    for kind in [
        AttackKind::Badnets,
        AttackKind::Blended,
        AttackKind::Sig,
        AttackKind::Wanet,
    ] {
        let attack = Attack::new(AttackConfig::supplement(kind, DatasetKind::Cifar10), &set)?;
        let t = attack.trigger.clone().expect("static trigger");
        let twin = time(&|x| t.apply_tensor(x));
        let kernel = on_wgpu.then(|| time(&|x| t.apply_kernel(x)));
        outln!(
            "{:<8} kernel {:>12} img/s   tensor twin {:>12.0} img/s",
            kind.name(),
            kernel
                .map(|k| format!("{k:.0}"))
                .unwrap_or_else(|| "-".into()),
            twin
        );
        rows.push(KernelRow {
            trigger: kind.name(),
            kernel_images_per_sec: kernel,
            twin_images_per_sec: twin,
        });
    }
    // The distillation loss with its gradient: logits of the cleanser's batch size (launch
    // bound) and of 64 batches (bandwidth bound), 10 classes.
    let mut kd_rows = Vec::new();
    for rows_n in [n, 64 * n] {
        let k = 10;
        let s: Vec<f32> = (0..rows_n * k)
            .map(|_| 8.0 * rng.next_f32() - 4.0)
            .collect();
        let t: Vec<f32> = (0..rows_n * k)
            .map(|_| 8.0 * rng.next_f32() - 4.0)
            .collect();
        let time_kd = |fused: bool| -> f64 {
            let step = || {
                let student =
                    Tensor::<2>::from_data(TensorData::new(s.clone(), [rows_n, k]), &device)
                        .autodiff()
                        .require_grad();
                let teacher =
                    Tensor::<2>::from_data(TensorData::new(t.clone(), [rows_n, k]), &device)
                        .autodiff();
                let loss = if fused {
                    cleanse_core::kernels::kd_loss(student.clone(), teacher, 2.0)
                } else {
                    cleanse_core::defend::kd::kd_loss(student.clone(), teacher, 2.0)
                };
                let grads = loss.backward();
                let g = student.grad(&grads).expect("gradient");
                let _ = g.sum().into_scalar::<f32>();
            };
            step();
            let t0 = Instant::now();
            for _ in 0..a.reps {
                step();
            }
            (rows_n * a.reps) as f64 / t0.elapsed().as_secs_f64()
        };
        let twin = time_kd(false);
        let kernel = on_wgpu.then(|| time_kd(true));
        outln!(
            "kd-kl {rows_n:>6} rows: kernel {:>12} rows/s   tensor twin {:>12.0} rows/s (loss + gradient)",
            kernel
                .map(|k| format!("{k:.0}"))
                .unwrap_or_else(|| "-".into()),
            twin
        );
        kd_rows.push(serde_json::json!({
            "rows": rows_n, "classes": k,
            "kernel_rows_per_sec": kernel, "twin_rows_per_sec": twin,
        }));
    }
    if let Some(p) = &a.json {
        write_output_json(
            p,
            &serde_json::json!({
                "device": selected.info, "batch_size": n, "reps": a.reps, "rows": rows,
                "kd_kl": kd_rows,
            }),
            "json",
            a.force,
        )?;
    }
    Ok(())
}
