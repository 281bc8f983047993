//! Training on tiny data: the loss falls on both devices, checkpoints round-trip, and a resumed
//! run ends where an uninterrupted one does.

use burn::module::Module;
use burn::prelude::*;
use cleanse_core::data::augment::Augment;
use cleanse_core::data::synthetic::SyntheticConfig;
use cleanse_core::data::{DataSpec, DatasetKind};
use cleanse_core::device::{self, DeviceChoice};
use cleanse_core::engine::Observer;
use cleanse_core::engine::SilentObserver;
use cleanse_core::optim::Schedule;
use cleanse_core::report::{Report, RunStatus};
use cleanse_core::train::{TrainConfig, train};
use std::path::Path;

fn tiny_config(epochs: usize) -> TrainConfig {
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 96,
        test_size: 40,
        num_classes: 4,
        side: 16,
        seed: 1,
    };
    let mut c = TrainConfig::supplement(data);
    c.width = 4;
    c.epochs = epochs;
    c.batch_size = 16;
    c.lr = 0.05;
    c.schedule = Schedule::cosine(epochs);
    c.holdout = 0.25;
    c.augment = Augment::NONE;
    c.seed = 5;
    c
}

fn weights(dir: &Path) -> Vec<f32> {
    let loaded =
        cleanse_core::engine::run_files::load_run_model(dir, &Device::flex()).expect("load model");
    let mut out = Vec::new();
    struct Collect<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0
                .extend(p.val().into_data().try_to_vec_as::<f32>().expect("f32"));
        }
    }
    loaded.model.visit(&mut Collect(&mut out));
    out
}

/// Records per-batch losses.
struct Losses(Vec<f64>);
impl Observer for Losses {
    fn batch(&mut self, _e: usize, _b: usize, loss: f64, _a: f64, _ips: f64) {
        self.0.push(loss);
    }
}

#[test]
fn cpu_training_lowers_the_loss_and_writes_a_complete_report() {
    let out = tempfile::tempdir().expect("tmp");
    let dir = out.path().join("run");
    let selected = device::select(DeviceChoice::Cpu).expect("cpu");
    let mut obs = Losses(Vec::new());
    let report = train(&tiny_config(6), &dir, false, &selected, &mut obs).expect("train");
    let first = report.epochs.first().expect("epochs").loss;
    let last = report.epochs.last().expect("epochs").loss;
    assert!(last < first * 0.8, "loss did not fall: {first} -> {last}");
    assert_eq!(report.epochs.len(), 6);
    assert_eq!(report.status, RunStatus::Complete);
    assert_eq!(report.data.holdout_size, 24);
    assert_eq!(report.data.train_size, 72);
    let acc = report.final_metrics.as_ref().expect("final").clean_acc;
    assert!((0.0..=1.0).contains(&acc));
    assert!(
        acc > 0.4,
        "4 easy classes should be learnt above chance (0.25): {acc}"
    );
    // The report on disk parses with the versioned reader and equals what was returned.
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report");
    let parsed = Report::from_json("report.json", &text).expect("parse");
    assert_eq!(
        (&parsed.config, &parsed.data, parsed.status),
        (&report.config, &report.data, report.status)
    );
    assert_eq!(parsed.epochs.len(), report.epochs.len());
    for (a, b) in parsed.epochs.iter().zip(&report.epochs) {
        assert_eq!(a.epoch, b.epoch);
        let (x, y) = (
            a.clean_acc.expect("measured"),
            b.clean_acc.expect("measured"),
        );
        assert!((a.loss - b.loss).abs() < 1e-12 && (x - y).abs() < 1e-12);
    }
    assert!(text.contains("\"clean_acc\""));
    // Never silently overwritten: the same settings find it finished, others are refused.
    let e = train(&tiny_config(6), &dir, false, &selected, &mut SilentObserver).unwrap_err();
    assert!(matches!(e, cleanse_core::Error::Complete { .. }), "{e}");
    let err = train(&tiny_config(7), &dir, false, &selected, &mut SilentObserver)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("finished run of another configuration"),
        "{err}"
    );
}

#[test]
fn predictions_agree_with_accuracy_and_per_class_counts() {
    use cleanse_core::engine::eval::{PerClass, accuracy, predictions};
    use cleanse_core::engine::run_files::load_run_model;
    let out = tempfile::tempdir().expect("tmp");
    let dir = out.path().join("run");
    let selected = device::select(DeviceChoice::Cpu).expect("cpu");
    let config = tiny_config(3);
    train(&config, &dir, false, &selected, &mut SilentObserver).expect("train");
    let model = load_run_model(&dir, &selected.device).expect("model").model;
    let test = std::sync::Arc::new(config.data.load().expect("data").test);
    // Batch sizes that do and do not divide the 40 test images give the same predictions.
    let p = predictions(&model, &test, 16, &selected.device);
    assert_eq!(p, predictions(&model, &test, 40, &selected.device));
    assert_eq!(p.len(), test.len());
    let right = p
        .iter()
        .zip(&test.labels)
        .filter(|(p, y)| **p == **y as usize)
        .count();
    let acc = accuracy(&model, &test, 16, &selected.device);
    assert!((acc - right as f64 / test.len() as f64).abs() < 1e-12);

    // Hand-made case: class 2 has no images, class 1 is always predicted as 0.
    let pc = PerClass::new(&[0, 0, 1, 1, 3], &[0, 1, 0, 0, 3], 4);
    assert_eq!(pc.accuracy, vec![Some(0.5), Some(0.0), None, Some(1.0)]);
    assert_eq!(pc.predicted_fraction, vec![0.6, 0.2, 0.0, 0.2]);
}

#[test]
fn resumed_run_ends_where_an_uninterrupted_run_does() {
    let out = tempfile::tempdir().expect("tmp");
    let selected = device::select(DeviceChoice::Cpu).expect("cpu");
    let straight = out.path().join("straight");
    let full = train(
        &tiny_config(3),
        &straight,
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect("straight");

    // Simulate a run killed after epoch 1: train 3 epochs' config but stop after the first by
    // copying the checkpoint state of a run of the same config at epoch 1.
    let killed = out.path().join("killed");
    struct StopAfter(usize);
    impl Observer for StopAfter {
        fn epoch(&mut self, r: &cleanse_core::report::EpochRecord) {
            if r.epoch == self.0 {
                // A real kill: the process dies right after the checkpoint of this epoch.
                panic!("simulated kill after epoch {}", r.epoch);
            }
        }
    }
    let cfg = tiny_config(3);
    let sel = selected.clone();
    let k = killed.clone();
    let crashed = std::thread::spawn(move || {
        let _ = train(&cfg, &k, false, &sel, &mut StopAfter(1));
    })
    .join();
    assert!(crashed.is_err(), "the simulated kill should have panicked");
    assert!(
        !killed.join("model.bpk").exists(),
        "a killed run has no final model"
    );

    let resumed = train(
        &tiny_config(3),
        &killed,
        true,
        &selected,
        &mut SilentObserver,
    )
    .expect("resume");
    assert_eq!(resumed.epochs.len(), 3);
    let (a, b) = (weights(&straight), weights(&killed));
    assert_eq!(a.len(), b.len());
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "resumed weights differ by {max_diff}");
    let (ea, eb) = (&full.epochs[2], &resumed.epochs[2]);
    assert!(
        (ea.loss - eb.loss).abs() < 1e-4,
        "{} vs {}",
        ea.loss,
        eb.loss
    );
    let (x, y) = (
        ea.clean_acc.expect("measured"),
        eb.clean_acc.expect("measured"),
    );
    assert!((x - y).abs() < 1e-9);

    // Resuming with other settings is refused (here the run finished: as another
    // configuration's finished run).
    let mut other = tiny_config(3);
    other.lr = 0.2;
    let err = train(&other, &killed, true, &selected, &mut SilentObserver)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another configuration") && err.contains("lr: 0.05 -> 0.2"),
        "{err}"
    );
    // Resuming where there is no checkpoint is refused.
    let err = train(
        &tiny_config(3),
        &out.path().join("none"),
        true,
        &selected,
        &mut SilentObserver,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no checkpoint"), "{err}");
}

#[test]
fn checkpoint_round_trip_preserves_outputs() {
    let out = tempfile::tempdir().expect("tmp");
    let dir = out.path().join("run");
    let selected = device::select(DeviceChoice::Cpu).expect("cpu");
    train(&tiny_config(2), &dir, false, &selected, &mut SilentObserver).expect("train");
    let device = Device::flex();
    let a = cleanse_core::engine::run_files::load_run_model(&dir, &device).expect("load");
    let ckpt =
        cleanse_core::engine::checkpoint::load_state(&dir.join("checkpoint")).expect("state");
    assert_eq!(ckpt.epochs_done, 2);
    // The first epoch's files were removed once the second's state was written.
    let mut files: Vec<String> = std::fs::read_dir(dir.join("checkpoint"))
        .expect("checkpoint dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("model-e") || n.starts_with("sgd-e"))
        .collect();
    files.sort();
    assert_eq!(files, ["model-e2.bpk", "sgd-e2.bin"]);
    let b = cleanse_core::engine::checkpoint::load_model(
        a.config.init(&device),
        &dir.join("checkpoint").join(&ckpt.model_file),
    )
    .expect("load checkpoint model")
    .valid();
    let x = Tensor::<4>::random([3, 3, 16, 16], burn::tensor::Distribution::Default, &device);
    let (ya, yb) = (a.model.forward(x.clone()), b.forward(x));
    let d: f32 = (ya - yb).abs().max().into_scalar();
    assert!(d < 1e-5, "{d}");
    // A file that is not a model gives an error naming it.
    let bogus = out.path().join("bogus.bpk");
    std::fs::write(&bogus, b"not a model").expect("write");
    let err = cleanse_core::engine::checkpoint::load_model(a.config.init(&device), &bogus)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("bogus.bpk"), "{err}");
}

/// wgpu runs for real (on lavapipe where there is no GPU): a few steps lower the loss.
#[test]
fn wgpu_training_lowers_the_loss() {
    let selected = device::select(DeviceChoice::Wgpu)
        .expect("no wgpu adapter: install mesa-vulkan-drivers (the README's setup and .ci/run do)");
    let out = tempfile::tempdir().expect("tmp");
    let mut cfg = tiny_config(3);
    cfg.lr = 0.05;
    let mut obs = Losses(Vec::new());
    let report =
        train(&cfg, &out.path().join("wgpu"), false, &selected, &mut obs).expect("train on wgpu");
    let first = report.epochs.first().expect("e").loss;
    let last = report.epochs.last().expect("e").loss;
    assert!(last < first, "loss did not fall on wgpu: {first} -> {last}");
    assert_eq!(report.device.backend, cleanse_core::device::Backend::Wgpu);
    assert!(report.device.adapter.is_some());
}
