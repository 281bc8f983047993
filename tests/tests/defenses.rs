//! The defense family on the shared engine (fine-tuning end to end, stopped and resumed) and the
//! run-directory lifecycle every command shares (no dead ends after a failure or a stop, one live
//! run per directory, the differing settings named on resume).

use cleanse_core::attack::poison::AttackHooks;
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Stamping};
use cleanse_core::data::augment::Augment;
use cleanse_core::data::synthetic::SyntheticConfig;
use cleanse_core::data::{DataSpec, DatasetKind};
use cleanse_core::defend::Defense;
use cleanse_core::defend::cleanse::KdConfig;
use cleanse_core::defend::ft::FtConfig;
use cleanse_core::defend::method::Method;
use cleanse_core::device::{DeviceChoice, Selected, select};
use cleanse_core::engine::Observer;
use cleanse_core::engine::SilentObserver;
use cleanse_core::engine::driver::LoopPlan;
use cleanse_core::engine::run_dir::{RunDir, canonical_as, differences};
use cleanse_core::optim::Schedule;
use cleanse_core::report::{EpochRecord, Report};
use cleanse_core::train::run::train_with;
use cleanse_core::train::{TrainConfig, train};
use std::path::{Path, PathBuf};

fn cpu() -> Selected {
    select(DeviceChoice::Cpu).expect("cpu")
}

fn tiny_train_config() -> TrainConfig {
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 160,
        test_size: 40,
        num_classes: 4,
        side: 16,
        seed: 5,
    };
    let mut tc = TrainConfig::supplement(data);
    tc.width = 4;
    tc.epochs = 3;
    tc.batch_size = 16;
    tc.lr = 0.05;
    tc.schedule = Schedule::cosine(3);
    tc.augment = Augment::NONE;
    tc.holdout = 0.25;
    tc
}

/// A tiny BadNets model trained into `dir`.
fn suspect(dir: &Path) {
    let tc = tiny_train_config();
    let loaded = tc.data.load().expect("data");
    let mut c = AttackConfig::supplement(AttackKind::Badnets, DatasetKind::Synthetic);
    c.stamping = Stamping::AfterAugment;
    c.poison_rate = 0.2;
    let mut hooks = AttackHooks::new(Attack::new(c, &loaded.train).expect("attack"), None, false)
        .expect("hooks");
    train_with(&tc, &mut hooks, dir, false, &cpu(), &mut SilentObserver).expect("suspect");
}

/// Every float parameter of a run's model, in module order.
fn weights(dir: &Path) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.extend(p.val().into_data().iter::<f32>());
        }
    }
    let loaded =
        cleanse_core::engine::run_files::load_run_model(dir, &Device::flex()).expect("model");
    let mut c = Collect(Vec::new());
    loaded.model.visit(&mut c);
    c.0
}

fn read_report(dir: &Path) -> Report {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report");
    Report::from_json("report", &text).expect("parse")
}

/// Stands for a process killed right after epoch `after` was checkpointed.
struct CrashAfter(usize);
impl Observer for CrashAfter {
    fn epoch(&mut self, r: &EpochRecord) {
        assert!(r.epoch < self.0, "simulated crash after epoch {}", r.epoch);
    }
}

fn ft_config(suspect: &Path) -> FtConfig {
    let mut c = FtConfig::paper(suspect.to_path_buf(), false);
    c.training.epochs = 3;
    c.common.batch_size = 8;
    c.common.lr = 0.02;
    c
}

#[test]
fn ft_fine_tunes_the_suspect_on_labelled_holdout_and_resumes_bit_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let sus_report = read_report(&sus);
    let sus_final = sus_report.final_metrics.clone().expect("final");
    let config = ft_config(&sus);
    let defense = Defense::Ft(config.clone());
    assert_eq!(defense.method(), "ft");
    let whole = tmp.path().join("ft");
    let report = defense
        .run(&whole, false, &cpu(), &mut SilentObserver)
        .expect("ft");
    assert_eq!(report.kind, "defense");
    assert_eq!(report.epochs.len(), 3);
    // The authors' cosine horizon, 100 epochs whatever the run's length: three epochs hardly go
    // down; with the horizon at the run's length they anneal towards zero.
    assert_eq!(config.training.cosine_t_max, Some(100));
    for (e, rec) in report.epochs.iter().enumerate() {
        let want = 0.02 * (1.0 + (std::f64::consts::PI * e as f64 / 100.0).cos()) / 2.0;
        assert!(
            (rec.lr - want).abs() < 1e-12,
            "epoch {e}: {} vs {want}",
            rec.lr
        );
    }
    let over_run = LoopPlan::cosine((3, 8, 0.02), Some(3), 0, config.training.augment, "t");
    assert!((over_run.lr_at(2) - 0.005).abs() < 1e-12);
    assert_eq!(
        LoopPlan::cosine((3, 8, 0.02), None, 0, config.training.augment, "t").schedule,
        over_run.schedule
    );
    let record = report.defense.clone().expect("record");
    assert_eq!(Defense::of_record(&record), Ok(defense.clone()));
    // Fine-tuning starts from the suspect itself, measured on the same test images.
    assert_eq!(record.suspect_clean_acc, sus_final.clean_acc);
    assert_eq!(record.suspect_asr, sus_final.asr);
    assert_eq!(record.start_clean_acc, Some(sus_final.clean_acc));
    assert_eq!(record.defender_images, sus_report.data.holdout_size);
    assert!(report.final_metrics.as_ref().and_then(|f| f.asr).is_some());
    // It evaluates like its suspect: the attack and split are saved with it.
    for f in ["attack.json", "split.json", "model.bpk", "model.json"] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    assert_eq!(
        Defense::of_record(&read_report(&whole).defense.expect("typed")),
        Ok(defense.clone())
    );

    // Stopped after its first epoch, then resumed: the same history and the same weights.
    let stopped = tmp.path().join("ft-stopped");
    let (d, s) = (defense.clone(), stopped.clone());
    let crashed = std::thread::spawn(move || {
        let _ = d.run(&s, false, &cpu(), &mut CrashAfter(1));
    })
    .join();
    assert!(crashed.is_err(), "the run was meant to stop");
    assert!(stopped.join("checkpoint/state.json").is_file());
    assert!(!stopped.join("model.bpk").exists());
    let resumed = defense
        .run(&stopped, true, &cpu(), &mut SilentObserver)
        .expect("resume");
    assert_eq!(resumed.epochs.len(), 3);
    for (a, b) in resumed.epochs.iter().zip(&report.epochs) {
        assert_eq!((a.loss, a.clean_acc, a.asr), (b.loss, b.clean_acc, b.asr));
    }
    assert!(
        weights(&stopped) == weights(&whole),
        "the resumed run's weights differ from the uninterrupted run's"
    );

    // A resume with other settings names them.
    let mut other = config.clone();
    other.common.lr = 0.5;
    let e = Defense::Ft(other)
        .run(&stopped, true, &cpu(), &mut SilentObserver)
        .expect_err("different lr")
        .to_string();
    assert!(e.contains("lr: 0.02 -> 0.5"), "{e}");
}

#[test]
fn a_defense_stopped_before_its_first_epoch_resumes() {
    struct CrashAtStart;
    impl Observer for CrashAtStart {
        fn start(&mut self, _: usize, _: usize, _: usize) {
            panic!("simulated crash before the first epoch");
        }
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let mut kc = KdConfig::paper(sus.clone(), false);
    kc.training.epochs = 1;
    kc.common.batch_size = 8;
    let defense = Defense::Kd(kc);
    let out = tmp.path().join("kd");
    let (d, o) = (defense.clone(), out.clone());
    assert!(
        std::thread::spawn(move || {
            let _ = d.run(&o, false, &cpu(), &mut CrashAtStart);
        })
        .join()
        .is_err()
    );
    assert!(out.join("checkpoint/started.json").is_file());
    let r = defense
        .run(&out, true, &cpu(), &mut SilentObserver)
        .expect("resume before the first epoch");
    assert_eq!(r.epochs.len(), 1);
}

#[test]
fn a_run_that_fails_in_preparation_leaves_its_directory_reusable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    // CIFAR-10 without its directory: fails while loading data, after the run took the folder.
    let mut bad = tiny_train_config();
    bad.data = DataSpec::new(DatasetKind::Cifar10, Some(tmp.path().join("missing")));
    assert!(train(&bad, &out, false, &cpu(), &mut SilentObserver).is_err());
    assert!(!out.exists(), "a failed run left the folder it created");
    // In a folder that existed (empty) before, nothing but the lock file stays.
    std::fs::create_dir_all(&out).expect("mkdir");
    assert!(train(&bad, &out, false, &cpu(), &mut SilentObserver).is_err());
    let left: Vec<_> = std::fs::read_dir(&out)
        .expect("the folder stays")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter().all(|n| n == "run.lock"),
        "a failed preparation left {left:?}"
    );
    // The corrected command runs as a new run in the same folder.
    let mut good = tiny_train_config();
    good.epochs = 1;
    train(&good, &out, false, &cpu(), &mut SilentObserver).expect("corrected run");
    // A divergent run fails in its first epoch and leaves the folder reusable too.
    let diverging = tmp.path().join("diverging");
    let mut huge = tiny_train_config();
    huge.lr = 1e30;
    let e = train(&huge, &diverging, false, &cpu(), &mut SilentObserver)
        .expect_err("diverges")
        .to_string();
    assert!(e.contains("diverged"), "{e}");
    train(&good, &diverging, false, &cpu(), &mut SilentObserver).expect("reused");
}

#[test]
fn one_live_run_per_directory_and_resume_names_what_differs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let config = serde_json::to_value(tiny_train_config()).expect("json");
    let first =
        RunDir::open(&out, config.clone(), canonical_as::<TrainConfig>, 0, false).expect("first");
    let e = RunDir::open(&out, config.clone(), canonical_as::<TrainConfig>, 0, true)
        .err()
        .expect("the directory is in use")
        .to_string();
    assert!(e.contains("another cleanse run"), "{e}");
    drop(first);
    // Dropped without finishing and without a checkpoint: the folder it made is gone again.
    assert!(!out.exists());

    let mut changed = tiny_train_config();
    changed.batch_size = 32;
    changed.width = 8;
    let diff = differences(&config, &serde_json::to_value(&changed).expect("json"));
    assert_eq!(diff, ["batch_size: 16 -> 32", "width: 4 -> 8"]);
    let _started =
        RunDir::open(&out, config.clone(), canonical_as::<TrainConfig>, 0, false).expect("started");
    std::mem::forget(_started); // as if killed: started.json stays, the lock is this process's
    let e = match RunDir::open(
        &out,
        serde_json::to_value(&changed).expect("json"),
        canonical_as::<TrainConfig>,
        0,
        true,
    ) {
        Ok(_) => panic!("the folder is locked"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("another cleanse run"), "{e}");
}

#[test]
fn resume_of_a_started_run_with_other_settings_names_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out: PathBuf = tmp.path().join("run");
    let config = tiny_train_config();
    let json = serde_json::to_value(&config).expect("json");
    {
        let run =
            RunDir::open(&out, json.clone(), canonical_as::<TrainConfig>, 0, false).expect("open");
        // A crash: the directory keeps started.json (no cleanup while panicking is simulated
        // by marking the run finished without a report).
        let mut run = run;
        run.finish();
    }
    assert!(out.join("checkpoint/started.json").is_file());
    let mut other = config.clone();
    other.lr = 0.1;
    let e = match RunDir::open(
        &out,
        serde_json::to_value(&other).expect("json"),
        canonical_as::<TrainConfig>,
        0,
        true,
    ) {
        Ok(_) => panic!("different configuration"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("lr: 0.05 -> 0.1"), "{e}");
    // The same settings resume; a new run without --resume is refused.
    assert!(RunDir::open(&out, json.clone(), canonical_as::<TrainConfig>, 0, true).is_ok());
    let e = match RunDir::open(&out, json, canonical_as::<TrainConfig>, 0, false) {
        Ok(_) => panic!("not empty"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not empty") && e.contains("--resume"), "{e}");
}

#[test]
fn optimiser_settings_are_checked_before_anything_runs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    for (name, change) in [
        (
            "momentum",
            (|c: &mut TrainConfig| c.sgd.momentum = -0.5) as fn(&mut TrainConfig),
        ),
        ("momentum", |c| c.sgd.momentum = f64::NAN),
        ("weight-decay", |c| c.sgd.weight_decay = -1e-4),
        ("gamma", |c| {
            c.schedule = Schedule::Multistep {
                milestones: vec![1, 2],
                gamma: -1.0,
            }
        }),
        ("milestones", |c| {
            c.schedule = Schedule::Multistep {
                milestones: vec![2, 1],
                gamma: 0.1,
            }
        }),
        ("lr", |c| c.lr = f64::NAN),
    ] {
        let mut c = tiny_train_config();
        change(&mut c);
        let e = train(&c, &out, false, &cpu(), &mut SilentObserver)
            .expect_err(name)
            .to_string();
        assert!(e.contains(&format!("`{name}`")), "{name}: {e}");
    }
    assert!(!out.exists(), "a refused run created its folder");
    // The defenses check their optimiser the same way, before reading the suspect.
    let missing = tmp.path().join("no-suspect");
    let mut kd = KdConfig::paper(missing.clone(), false);
    kd.common.lr = f64::NAN;
    let mut ft = FtConfig::paper(missing, false);
    ft.training.sgd.momentum = 1.5;
    for (d, name) in [(Defense::Kd(kd), "lr"), (Defense::Ft(ft), "momentum")] {
        let e = d
            .run(&out, false, &cpu(), &mut SilentObserver)
            .expect_err(name)
            .to_string();
        assert!(e.contains(&format!("`{name}`")), "{name}: {e}");
    }
    assert!(!out.exists());
}

/// The test images' float tensor `[n, 3, side, side]` of a seeded pattern.
fn random_images(
    n: usize,
    side: usize,
    seed: u64,
    device: &burn::prelude::Device,
) -> burn::prelude::Tensor<4> {
    use burn::prelude::*;
    let mut rng = cleanse_core::rng::Rng::from_parts(&[seed, 0xF1]);
    let v: Vec<f32> = (0..n * 3 * side * side).map(|_| rng.next_f32()).collect();
    Tensor::from_data(TensorData::new(v, [n, 3, side, side]), device)
}

fn floats<const D: usize>(t: burn::prelude::Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn pruning_a_channel_zeroes_it_in_the_last_stage_output_of_both_architectures() {
    use burn::prelude::*;
    use cleanse_core::defend::fp::mask_last_stage;
    use cleanse_core::model::{Architecture, ModelConfig, Normalization};
    let device = Device::flex();
    for architecture in [Architecture::Resnet18, Architecture::PreactResnet18] {
        let config = ModelConfig {
            architecture,
            width: 2,
            num_classes: 3,
            normalization: Normalization::cifar10(),
        };
        let model = config.init_seeded(&device, 7);
        assert_eq!(model.tail_width(), 16);
        let pruned = [1usize, 5, 14];
        let masked = mask_last_stage(model.clone(), &pruned);
        let x = random_images(3, 16, 1, &device);
        let f = masked.features(x.clone());
        let before = model.features(x);
        let s4 = floats(f.stages[3].clone());
        let s4_before = floats(before.stages[3].clone());
        let plane = 2 * 2; // 16x16 input: the last stage is 2x2
        for n in 0..3 {
            for c in 0..16 {
                let at = |v: &[f32]| v[(n * 16 + c) * plane..(n * 16 + c + 1) * plane].to_vec();
                if pruned.contains(&c) {
                    assert!(
                        at(&s4).iter().all(|v| *v == 0.0),
                        "{architecture:?} channel {c}"
                    );
                } else {
                    assert!(
                        at(&s4).iter().any(|v| *v != 0.0)
                            || at(&s4_before).iter().all(|v| *v <= 0.0)
                    );
                }
            }
        }
        let pen = floats(f.penultimate);
        for n in 0..3 {
            for &c in &pruned {
                assert_eq!(pen[n * 16 + c], 0.0);
            }
        }
        // The stages before the last are untouched.
        assert_eq!(
            floats(f.stages[2].clone()),
            floats(before.stages[2].clone())
        );
        // The tail from the third stage gives the whole network's logits.
        let (_, _, tail_logits) = masked.tail(f.stages[2].clone());
        assert_eq!(floats(tail_logits), floats(f.logits));
    }
}

#[test]
fn fine_pruning_prunes_the_least_active_channels_until_the_defenders_accuracy_drops() {
    use burn::prelude::*;
    use cleanse_core::defend::fp::{FpConfig, mask_last_stage, pruning_order, search};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let device = Device::flex();
    let model = cleanse_core::engine::run_files::load_run_model(&sus, &device)
        .expect("model")
        .model;
    let holdout = Arc::new(cleanse_core::engine::run_files::load_holdout(&sus).expect("holdout"));
    let drop = 0.1;
    let p = search(&model, &holdout, drop, 1, 7, &device);
    // The ranking: each channel's mean pooled activation over the defender's images, computed
    // here in one batch.
    let n = holdout.len();
    let all: Vec<usize> = (0..n).collect();
    let set = holdout.subset(&all);
    let x: Vec<f32> = set
        .pixels
        .iter()
        .map(|&b| b as f32 * (1.0 / 255.0))
        .collect();
    let x = Tensor::<4>::from_data(
        TensorData::new(x, [n, set.channels, set.height, set.width]),
        &device,
    );
    let pen = floats(model.features(x.clone()).penultimate);
    let w = model.tail_width();
    assert_eq!(p.channels, w);
    for c in 0..w {
        let mean = (0..n).map(|i| pen[i * w + c] as f64).sum::<f64>() / n as f64;
        assert!(
            (mean - p.activations[c]).abs() < 1e-4,
            "channel {c}: {mean} vs {}",
            p.activations[c]
        );
    }
    assert_eq!(p.order, pruning_order(&p.activations));
    assert!(
        p.order
            .windows(2)
            .all(|o| p.activations[o[0]] <= p.activations[o[1]])
    );
    assert_eq!(p.pruned_channels(), &p.order[..p.pruned]);
    // Every step's accuracy is the defender's, recomputed through the whole masked network.
    let labels: Vec<i64> = set.labels.iter().map(|&l| l as i64).collect();
    let accuracy = |k: usize| {
        let logits = mask_last_stage(model.clone(), &p.order[..k]).forward(x.clone());
        let pred: Vec<i64> = logits.argmax(1).into_data().iter::<i64>().collect();
        pred.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64 / n as f64
    };
    let base = accuracy(0);
    for s in &p.steps {
        assert!((s.accuracy - accuracy(s.pruned)).abs() < 1e-9, "{s:?}");
    }
    // The stop rule: every kept step holds the accuracy, the next one (if tried) does not.
    for s in p.steps.iter().filter(|s| s.pruned <= p.pruned) {
        assert!(base - s.accuracy < drop * base, "{s:?} kept");
    }
    match p.steps.last() {
        Some(last) if last.pruned > p.pruned => assert!(base - last.accuracy >= drop * base),
        _ => assert_eq!(p.pruned, w - 1, "the search ran to the last channel"),
    }

    // The defense: the pruned channels stay zero through fine-tuning, and it resumes exactly.
    let mut config = FpConfig::paper(sus.clone(), false);
    config.ft = ft_config(&sus);
    let defense = Defense::Fp(config);
    assert_eq!(defense.method(), "fp");
    let whole = tmp.path().join("fp");
    let report = defense
        .run(&whole, false, &cpu(), &mut SilentObserver)
        .expect("fp");
    let record = report.defense.expect("record");
    let Some(cleanse_core::report::Findings::Fp(found)) = record.findings else {
        panic!("the report records the search")
    };
    // The run's search (in batches of 256) is the one above (batches of 7) up to float sums.
    assert_eq!(
        (&found.order, &found.steps, found.pruned),
        (&p.order, &p.steps, p.pruned)
    );
    for (a, b) in found.activations.iter().zip(&p.activations) {
        assert!((a - b).abs() < 1e-5);
    }
    let tuned = cleanse_core::engine::run_files::load_run_model(&whole, &device)
        .expect("model")
        .model;
    let s4 = floats(tuned.features(x.clone()).stages[3].clone());
    let plane = s4.len() / (n * w);
    for i in 0..n {
        for &c in p.pruned_channels() {
            assert!(
                s4[(i * w + c) * plane..(i * w + c + 1) * plane]
                    .iter()
                    .all(|v| *v == 0.0)
            );
        }
    }
    stopped_after_one_epoch_resumes_to(&defense, &tmp.path().join("fp-stopped"), &whole);
}

#[test]
fn nad_attention_maps_match_a_direct_computation() {
    use burn::prelude::*;
    use cleanse_core::defend::nad::{attention_loss, attention_map};
    let device = Device::flex();
    let (n, c, h, w) = (2, 3, 4, 5);
    let mut rng = cleanse_core::rng::Rng::from_parts(&[9]);
    let v: Vec<f32> = (0..n * c * h * w)
        .map(|_| rng.next_f32() * 2.0 - 1.0)
        .collect();
    let u: Vec<f32> = (0..n * c * h * w)
        .map(|_| rng.next_f32() * 2.0 - 1.0)
        .collect();
    let direct = |v: &[f32], p: f64| -> Vec<f64> {
        let mut out = Vec::new();
        for i in 0..n {
            let a: Vec<f64> = (0..h * w)
                .map(|j| {
                    (0..c)
                        .map(|k| (v[(i * c + k) * h * w + j] as f64).abs().powf(p))
                        .sum()
                })
                .collect();
            let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            out.extend(a.iter().map(|x| x / (norm + 1e-6)));
        }
        out
    };
    let t = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [n, c, h, w]), &device);
    for p in [2.0, 1.0, 3.0] {
        let ours = floats(attention_map(t(&v), p));
        let want = direct(&v, p);
        assert_eq!(ours.len(), n * h * w);
        for (a, b) in ours.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "p {p}: {a} vs {b}");
        }
        let loss = floats(attention_loss(t(&v), t(&u), p))[0] as f64;
        let other = direct(&u, p);
        let mse = want
            .iter()
            .zip(&other)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / want.len() as f64;
        assert!((loss - mse).abs() < 1e-6, "p {p}: {loss} vs {mse}");
    }
    // An all-zero map stays finite.
    let zero = floats(attention_map(
        Tensor::<4>::zeros([1, 2, 2, 2], &device),
        2.0,
    ));
    assert!(zero.iter().all(|v| *v == 0.0));
}

#[test]
fn nad_distils_from_a_fine_tuned_teacher_kept_in_the_run_and_resumes_exactly() {
    use cleanse_core::defend::nad::NadConfig;
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let mut config = NadConfig::paper(sus.clone(), false);
    config.ft = ft_config(&sus);
    config.teacher_epochs = 2;
    let defense = Defense::Nad(config.clone());
    assert_eq!(defense.method(), "nad");
    let whole = tmp.path().join("nad");
    let report = defense
        .run(&whole, false, &cpu(), &mut SilentObserver)
        .expect("nad");
    assert_eq!(report.epochs.len(), 3);
    // The teacher is an ordinary fine-tuning run of 2 epochs inside the NAD run.
    let teacher = read_report(&whole.join("fine-tuned"));
    assert_eq!(teacher.epochs.len(), 2);
    assert_eq!(
        Defense::of_record(&teacher.defense.expect("record")),
        Ok(Defense::Ft(config.teacher()))
    );
    // With the attention terms off, NAD is fine-tuning: the same weights as FT.
    let mut plain = config.clone();
    plain.betas = [0.0; 3];
    let no_attention = tmp.path().join("nad-0");
    Defense::Nad(plain)
        .run(&no_attention, false, &cpu(), &mut SilentObserver)
        .expect("nad 0");
    let ft = tmp.path().join("ft");
    Defense::Ft(ft_config(&sus))
        .run(&ft, false, &cpu(), &mut SilentObserver)
        .expect("ft");
    assert!(
        weights(&no_attention) == weights(&ft),
        "NAD without attention is FT"
    );
    assert!(
        weights(&whole) != weights(&ft),
        "the attention terms change training"
    );
    // Stopped in the teacher's fine-tuning, resumed and stopped again after NAD's first epoch,
    // resumed again: the same weights, the finished teacher reused.
    struct CrashAtCall(usize);
    impl Observer for CrashAtCall {
        fn epoch(&mut self, _: &EpochRecord) {
            self.0 -= 1;
            assert!(self.0 > 0, "simulated crash");
        }
    }
    let stopped = tmp.path().join("nad-stopped");
    for (resume, calls) in [(false, 1), (true, 2)] {
        let (d, s) = (defense.clone(), stopped.clone());
        assert!(
            std::thread::spawn(move || {
                let _ = d.run(&s, resume, &cpu(), &mut CrashAtCall(calls));
            })
            .join()
            .is_err()
        );
    }
    assert_eq!(read_report(&stopped).epochs.len(), 1);
    let teacher_report = std::fs::read(stopped.join("fine-tuned/report.json")).expect("teacher");
    defense
        .run(&stopped, true, &cpu(), &mut SilentObserver)
        .expect("resume");
    assert_eq!(
        std::fs::read(stopped.join("fine-tuned/report.json")).expect("teacher"),
        teacher_report,
        "the finished teacher is reused, not trained again"
    );
    assert!(
        weights(&stopped) == weights(&whole),
        "the resumed run differs"
    );
}

/// The six baselines on `ft`'s suspect: FT, and FP, NAD and MCR training as `ft` (NAD's teacher
/// and MCR's endpoint fine-tuned `short` epochs), then `anp` and `ibau`.
fn baselines(
    ft: &FtConfig,
    short: usize,
    anp: cleanse_core::defend::anp::AnpConfig,
    ibau: cleanse_core::defend::ibau::IbauConfig,
) -> Vec<Defense> {
    use cleanse_core::defend::fp::FpConfig;
    use cleanse_core::defend::mcr::McrConfig;
    use cleanse_core::defend::nad::NadConfig;
    let sus = ft.common.suspect.clone();
    vec![
        Defense::Ft(ft.clone()),
        Defense::Fp(FpConfig {
            ft: ft.clone(),
            ..FpConfig::paper(sus.clone(), false)
        }),
        Defense::Nad(NadConfig {
            ft: ft.clone(),
            teacher_epochs: short,
            ..NadConfig::paper(sus.clone(), false)
        }),
        Defense::Mcr(McrConfig {
            ft: ft.clone(),
            endpoint_epochs: short,
            ..McrConfig::paper(sus, false)
        }),
        Defense::Anp(anp),
        Defense::Ibau(ibau),
    ]
}

#[test]
fn the_baselines_lower_the_asr_of_a_tiny_backdoored_model() {
    use cleanse_core::defend::anp::AnpConfig;
    use cleanse_core::defend::ibau::IbauConfig;
    // 32x32 images, as CIFAR's: at 16x16 the last stage's attention map (NAD) is 2x2 and its
    // loss swamps the cross-entropy; there, 3 of 4 generated toys (seeds 3-6) failed a check below,
    // and which ones changed with the order of a convolution's sums. At 32x32 the four toys pass
    // (and 2 of 4 with the column version's weight gradient: a width-4 model on 120 defender
    // images still loses a class now and then).
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 400,
        test_size: 100,
        num_classes: 4,
        side: 32,
        seed: 3,
    };
    let mut tc = TrainConfig::supplement(data.clone());
    tc.width = 4;
    tc.epochs = 10;
    tc.batch_size = 16;
    tc.lr = 0.02;
    tc.schedule = Schedule::cosine(10);
    tc.augment = Augment::NONE;
    tc.holdout = 0.3;
    let loaded = data.load().expect("data");
    let mut c = AttackConfig::supplement(AttackKind::Blended, DatasetKind::Synthetic);
    c.stamping = Stamping::AfterAugment;
    c.poison_rate = 0.3;
    c.blend_alpha = 0.3;
    let mut hooks = AttackHooks::new(Attack::new(c, &loaded.train).expect("attack"), None, false)
        .expect("hooks");
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    let teacher =
        train_with(&tc, &mut hooks, &sus, false, &cpu(), &mut SilentObserver).expect("attack");
    let before = teacher.final_metrics.expect("final");
    let before_asr = before.asr.expect("asr");
    assert!(
        before_asr > 0.8,
        "the tiny model is backdoored: {before_asr}"
    );
    let mut ft = FtConfig::paper(sus.clone(), false);
    ft.training.epochs = 6;
    // Annealed to zero over these six epochs (the authors' 100-epoch horizon would keep this short
    // run at its full rate; the thresholds below were set for the annealed run).
    ft.training.cosine_t_max = Some(6);
    ft.common.batch_size = 16;
    ft.common.lr = 0.05;
    ft.training.augment = Augment::NONE;
    let defenses = baselines(
        &ft,
        3,
        AnpConfig {
            iterations: 100,
            augment: Augment::NONE,
            ..AnpConfig::paper(sus.clone(), false)
        }
        .with_flags(&batches(16, None))
        .expect("ANP's flags"),
        // Unbounded (the method), the universal perturbation on this width-4 model's 16x16 images
        // flips every prediction, and unlearning it costs most of the accuracy (an L2 bound of 10
        // gave 1.0 -> 0.48 in 5 rounds). It is bounded here; the method is otherwise the same.
        IbauConfig {
            rounds: 8,
            max_norm: Some(1.0),
            ..IbauConfig::paper(sus.clone())
        }
        .with_flags(&batches(16, Some(1e-3)))
        .expect("I-BAU's flags"),
    );
    for d in defenses {
        let out = tmp.path().join(d.method());
        let report = d
            .run(&out, false, &cpu(), &mut SilentObserver)
            .expect("defense");
        let after = report.final_metrics.clone().expect("final");
        let asr = after.asr.expect("asr");
        eprintln!(
            "{}: asr {before_asr} -> {asr}, acc {} -> {}",
            d.method(),
            before.clean_acc,
            after.clean_acc
        );
        if let Defense::Anp(_) = d {
            // A 300-channel network cannot lose ANP's fixed share of channels (at 0.2, most of
            // its accuracy goes too); what is checked is that the trained masks rank the
            // backdoor's channels first: along the thresholds the ASR falls below 10% while the
            // accuracy is still above twice chance.
            let curve = report.defense.and_then(|r| r.curve).expect("curve");
            assert!(
                curve
                    .points
                    .iter()
                    .any(|p| p.asr.is_some_and(|a| a < 0.1) && p.clean_acc > 0.5),
                "{curve:?}"
            );
            continue;
        }
        assert!(
            asr < before_asr - 0.3,
            "{}: {before_asr} -> {asr}",
            d.method()
        );
        // NAD's attention terms (weights 500 and 1000) cost this tiny model some accuracy.
        assert!(
            after.clean_acc > before.clean_acc - 0.3,
            "{}: accuracy {} -> {}",
            d.method(),
            before.clean_acc,
            after.clean_acc
        );
    }
}

#[test]
fn evaluating_every_other_epoch_trains_the_same_model_and_keeps_the_last_epochs_metrics() {
    use cleanse_core::defend::anp::AnpConfig;
    use cleanse_core::defend::fp::FpConfig;
    use cleanse_core::defend::ibau::IbauConfig;
    use cleanse_core::defend::mcr::McrConfig;
    use cleanse_core::defend::nad::NadConfig;
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let ft = ft_config(&sus);
    let mut kd = KdConfig::paper(sus.clone(), false);
    kd.training.epochs = 3;
    kd.common.batch_size = 8;
    let mut defenses = baselines(
        &ft,
        2,
        AnpConfig {
            iterations: 3 * cleanse_core::defend::anp::ROUND,
            ..AnpConfig::paper(sus.clone(), false)
        }
        .with_flags(&batches(8, None))
        .expect("ANP's flags"),
        IbauConfig {
            rounds: 3,
            ..IbauConfig::paper(sus.clone())
        }
        .with_flags(&batches(8, None))
        .expect("I-BAU's flags"),
    );
    defenses.push(Defense::Kd(kd));
    for every in defenses {
        let mut sparse = every.clone();
        match &mut sparse {
            Defense::Kd(c) => c.common.eval_every = 2,
            Defense::Ft(c) => c.common.eval_every = 2,
            Defense::Fp(FpConfig { ft, .. })
            | Defense::Nad(NadConfig { ft, .. })
            | Defense::Mcr(McrConfig { ft, .. }) => ft.common.eval_every = 2,
            Defense::Anp(c) => c.common.eval_every = 2,
            Defense::Ibau(c) => c.common.eval_every = 2,
        }
        let m = every.method();
        let (a, b) = (tmp.path().join(m), tmp.path().join(format!("{m}-sparse")));
        let full = every.run(&a, false, &cpu(), &mut SilentObserver).expect(m);
        let part = sparse.run(&b, false, &cpu(), &mut SilentObserver).expect(m);
        assert_eq!(full.epochs.len(), 3, "{m}");
        assert_eq!(part.epochs.len(), 3, "{m}");
        // After three epochs the checkpoint holds the last epoch's files only, for every
        // optimiser (I-BAU's Adam state once kept a file per round).
        let epoch_files: Vec<String> = std::fs::read_dir(a.join("checkpoint"))
            .expect("checkpoint")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| cleanse_core::engine::checkpoint::epoch_prefix(n).is_some())
            .collect();
        assert_eq!(epoch_files.len(), 2, "{m}: {epoch_files:?}");
        assert!(
            epoch_files.iter().all(|n| n.contains("-e3.")),
            "{m}: {epoch_files:?}"
        );
        // Epoch 1 is not measured, 2 (every other) and 3 (the last) are, with the same numbers.
        assert!(full.epochs.iter().all(|e| e.clean_acc.is_some()), "{m}");
        assert_eq!(part.epochs[0].clean_acc, None, "{m}");
        assert_eq!(part.epochs[0].asr, None, "{m}");
        for i in [1, 2] {
            let (x, y) = (&full.epochs[i], &part.epochs[i]);
            assert_eq!(
                (x.loss, x.clean_acc, x.asr),
                (y.loss, y.clean_acc, y.asr),
                "{m} {i}"
            );
        }
        assert_eq!(part.epochs[0].loss, full.epochs[0].loss, "{m}");
        assert_eq!(full.final_metrics, part.final_metrics, "{m}");
        // Weights and running statistics (the files also hold parameter ids, which differ).
        assert!(
            weights(&a) == weights(&b),
            "{m}: evaluating less often changed the trained model"
        );
        // The cadence is part of the run's settings: a resume with another is refused.
        let e = every
            .run(&b, true, &cpu(), &mut SilentObserver)
            .expect_err("another cadence")
            .to_string();
        assert!(e.contains("eval_every"), "{m}: {e}");
    }
}

/// `defense` stopped by a crash after its first epoch in `stopped`, then resumed there, ends
/// with the same weights as its uninterrupted run in `whole`.
fn stopped_after_one_epoch_resumes_to(defense: &Defense, stopped: &Path, whole: &Path) {
    let (d, s) = (defense.clone(), stopped.to_path_buf());
    assert!(
        std::thread::spawn(move || {
            let _ = d.run(&s, false, &cpu(), &mut CrashAfter(1));
        })
        .join()
        .is_err()
    );
    defense
        .run(stopped, true, &cpu(), &mut SilentObserver)
        .expect("resume");
    assert!(
        weights(stopped) == weights(whole),
        "the resumed run differs"
    );
}

/// The weights of a model (running statistics left out) and its running statistics, in module
/// order.
fn weights_and_statistics(model: &cleanse_core::model::Classifier) -> (Vec<f32>, Vec<f32>) {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    struct Split {
        path: Vec<String>,
        weights: Vec<f32>,
        running: Vec<f32>,
    }
    impl ModuleVisitor for Split {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().into_data().iter::<f32>().collect::<Vec<_>>();
            match self.path.last().is_some_and(|n| n.starts_with("running_")) {
                true => self.running.extend(v),
                false => self.weights.extend(v),
            }
        }
    }
    let mut s = Split {
        path: Vec::new(),
        weights: Vec::new(),
        running: Vec::new(),
    };
    model.visit(&mut s);
    (s.weights, s.running)
}

#[test]
fn mcr_curve_ends_are_the_endpoints_and_bn_reestimation_changes_only_statistics() {
    use burn::prelude::*;
    use cleanse_core::defend::mcr::{Ends, bezier, curve_point};
    use cleanse_core::engine::bn_update::reestimate_batch_norm;
    use cleanse_core::model::{Architecture, ModelConfig, Network, Normalization};
    use std::sync::Arc;
    let device = Device::flex();
    for architecture in [Architecture::Resnet18, Architecture::PreactResnet18] {
        let config = ModelConfig {
            architecture,
            width: 2,
            num_classes: 3,
            normalization: Normalization::cifar10(),
        };
        let (theta0, theta2, bend) = (
            config.init_seeded(&device, 1),
            config.init_seeded(&device, 2),
            config.init_seeded(&device, 3),
        );
        let ends = Ends::new(&theta0, &theta2);
        let w = |m: &cleanse_core::model::Classifier| weights_and_statistics(m).0;
        assert_eq!(w(&curve_point(&bend, &ends, 0.0, false).0), w(&theta0));
        assert_eq!(w(&curve_point(&bend, &ends, 1.0, false).0), w(&theta2));
        let (mid, squares) = curve_point(&bend, &ends, 0.5, false);
        let [a, b, c] = bezier(0.5);
        let want: Vec<f32> = w(&theta0)
            .iter()
            .zip(w(&bend))
            .zip(w(&theta2))
            .map(|((x, y), z)| (a * *x as f64 + b * y as f64 + c * z as f64) as f32)
            .collect();
        for (g, e) in w(&mid).iter().zip(&want) {
            assert!((g - e).abs() < 1e-6);
        }
        let sq: f64 = want.iter().map(|v| (*v as f64).powi(2)).sum();
        let got = floats(squares)[0] as f64;
        assert!((got - sq).abs() < 1e-3 * sq, "{got} vs {sq}");
    }
    // Re-estimation: the weights stay, the statistics become the data's (here: the stem BN's
    // running mean is the mean of the stem convolution's output over the images).
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let model = cleanse_core::engine::run_files::load_run_model(&sus, &device)
        .expect("model")
        .model;
    let holdout = Arc::new(cleanse_core::engine::run_files::load_holdout(&sus).expect("holdout"));
    assert_eq!(holdout.len() % 8, 0);
    let re = reestimate_batch_norm(&model, &holdout, 8, &device);
    let (w0, r0) = weights_and_statistics(&model);
    let (w1, r1) = weights_and_statistics(&re);
    assert_eq!(w0, w1, "re-estimation changes no weight");
    assert_ne!(r0, r1, "re-estimation changes the statistics");
    assert_eq!(
        weights_and_statistics(&model).1,
        r0,
        "the original keeps its statistics"
    );
    let n = holdout.len();
    let x: Vec<f32> = holdout
        .pixels
        .iter()
        .map(|&b| b as f32 * (1.0 / 255.0))
        .collect();
    let x = Tensor::<4>::from_data(TensorData::new(x, [n, 3, 16, 16]), &device);
    let (Network::Resnet18(orig), Network::Resnet18(new)) = (&model.net, &re.net) else {
        panic!("resnet")
    };
    let stem = orig.stem_conv.forward(model.normalization.apply(x));
    let [_, c, h, wd] = stem.dims();
    let mean = floats(stem.swap_dims(0, 1).reshape([c, n * h * wd]).mean_dim(1));
    let got = floats(new.stem_bn.running_mean.value());
    for (g, e) in got.iter().zip(&mean) {
        assert!((g - e).abs() < 1e-4, "{g} vs {e}");
    }
}

#[test]
fn mcr_trains_the_bend_reports_its_curve_and_resumes_exactly() {
    use cleanse_core::defend::mcr::McrConfig;
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let mut config = McrConfig::paper(sus.clone(), false);
    config.ft = ft_config(&sus);
    config.endpoint_epochs = 2;
    let defense = Defense::Mcr(config.clone());
    assert_eq!(defense.method(), "mcr");
    let whole = tmp.path().join("mcr");
    let report = defense
        .run(&whole, false, &cpu(), &mut SilentObserver)
        .expect("mcr");
    assert_eq!(report.epochs.len(), 3);
    let endpoint = read_report(&whole.join("fine-tuned"));
    assert_eq!(
        Defense::of_record(&endpoint.defense.expect("record")),
        Ok(Defense::Ft(config.endpoint()))
    );
    let record = report.defense.expect("record");
    let curve = record.curve.expect("the curve");
    assert_eq!(curve.parameter, "t");
    let at: Vec<f64> = curve.points.iter().map(|p| p.at).collect();
    assert_eq!(at.len(), 11);
    assert_eq!((at[0], at[3], at[10]), (0.0, 0.3, 1.0));
    // The result is the curve's point at t = 0.3, measured the same way.
    let last = report.final_metrics.expect("final");
    assert_eq!(last.clean_acc, curve.points[3].clean_acc);
    assert_eq!(last.asr, curve.points[3].asr);
    let stopped = tmp.path().join("mcr-stopped");
    struct CrashAtCall(usize);
    impl Observer for CrashAtCall {
        fn epoch(&mut self, _: &EpochRecord) {
            self.0 -= 1;
            assert!(self.0 > 0, "simulated crash");
        }
    }
    let (d, s) = (defense.clone(), stopped.clone());
    assert!(
        std::thread::spawn(move || {
            let _ = d.run(&s, false, &cpu(), &mut CrashAtCall(3));
        })
        .join()
        .is_err()
    );
    defense
        .run(&stopped, true, &cpu(), &mut SilentObserver)
        .expect("resume");
    assert!(
        weights(&stopped) == weights(&whole),
        "the resumed run differs"
    );
}

#[test]
fn anp_masks_stay_in_the_unit_interval_and_pruning_zeroes_exactly_the_channels_under_the_threshold()
{
    use burn::prelude::*;
    use cleanse_core::defend::anp::{AnpConfig, prune, summarize};
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let device = Device::flex();
    let model = cleanse_core::engine::run_files::load_run_model(&sus, &device)
        .expect("model")
        .model;
    // Pruning: a channel's BN weight is zero exactly when its mask is at most the threshold.
    let mut m = model.clone();
    let shapes: Vec<usize> = m
        .batch_norms_mut()
        .into_iter()
        .map(|(_, bn)| bn.gamma.shape().dims::<1>()[0])
        .collect();
    let mut rng = cleanse_core::rng::Rng::from_parts(&[4]);
    let masks: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&c| (0..c).map(|_| rng.next_f32()).collect())
        .collect();
    let pruned = prune(&model, &masks, 0.3);
    let gammas = |m: &cleanse_core::model::Classifier| -> Vec<Vec<f32>> {
        let mut m = m.clone();
        m.batch_norms_mut()
            .into_iter()
            .map(|(_, bn)| floats(bn.gamma.val()))
            .collect()
    };
    let (before, after) = (gammas(&model), gammas(&pruned));
    let mut zeroed = 0;
    for ((b, a), mask) in before.iter().zip(&after).zip(&masks) {
        for c in 0..mask.len() {
            match mask[c] <= 0.3 {
                true => {
                    assert_eq!(a[c], 0.0);
                    zeroed += 1;
                }
                false => assert_eq!(a[c], b[c]),
            }
        }
    }
    assert!(zeroed > 0);
    let stages: Vec<usize> = {
        let mut m = model.clone();
        m.batch_norms_mut().into_iter().map(|(s, _)| s).collect()
    };
    let summary = summarize(&masks, &stages, 0.3);
    assert_eq!(summary.pruned_per_stage.iter().sum::<usize>(), zeroed);
    assert_eq!(summary.histogram.iter().sum::<usize>(), summary.channels);

    // A run of two rounds (100 + 20 mask updates): masks in [0, 1], the report's summary and
    // curve, and a resume after the first round that ends where the whole run does.
    let mut config = AnpConfig::paper(sus.clone(), false);
    assert_eq!(config.rounds(), (100, 20));
    config.iterations = 120;
    config.common.batch_size = 8;
    assert_eq!(config.rounds(), (100, 2));
    let defense = Defense::Anp(config.clone());
    assert_eq!(defense.method(), "anp");
    let whole = tmp.path().join("anp");
    let report = defense
        .run(&whole, false, &cpu(), &mut SilentObserver)
        .expect("anp");
    assert_eq!(report.epochs.len(), 2);
    let record = report.defense.expect("record");
    // The defender's distinct images, not the rounds' repetitions of them (100 batches of 8).
    let sus_report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sus.join("report.json")).expect("suspect report"),
    )
    .expect("json");
    assert_eq!(
        record.defender_images as u64,
        sus_report["data"]["holdout_size"]
            .as_u64()
            .expect("holdout size")
    );
    let Some(cleanse_core::report::Findings::Anp(found)) = record.findings else {
        panic!("the report records the masks")
    };
    assert_eq!(found.channels, shapes.iter().sum::<usize>());
    let curve = record.curve.expect("curve");
    assert_eq!(curve.parameter, "threshold");
    assert_eq!(curve.points.len(), 18);
    let at_threshold = curve
        .points
        .iter()
        .find(|p| (p.at - 0.2).abs() < 1e-12)
        .expect("0.2 on the curve");
    let last = report.final_metrics.expect("final");
    assert_eq!(
        (last.clean_acc, last.asr),
        (at_threshold.clean_acc, at_threshold.asr)
    );
    // The trained masks (the checkpoint's module) lie in [0, 1] and moved from 1.
    let masks_of = |dir: &Path| -> Vec<f32> {
        let state: cleanse_core::engine::checkpoint::CheckpointState =
            cleanse_core::io::read_json(&dir.join("checkpoint/state.json")).expect("state");
        cleanse_core::engine::checkpoint::load_model(
            cleanse_core::defend::anp::BnMasks::ones(&model, &device),
            &dir.join("checkpoint").join(&state.model_file),
        )
        .expect("masks")
        .values()
        .into_iter()
        .flatten()
        .collect()
    };
    let values = masks_of(&whole);
    assert!(
        values.iter().all(|v| (0.0..=1.0).contains(v)),
        "masks leave [0, 1]"
    );
    assert!(values.iter().any(|v| *v < 1.0), "the masks trained");
    assert!(
        values.iter().filter(|v| **v <= 0.2).count()
            == found.pruned_per_stage.iter().sum::<usize>()
    );
    let stopped = tmp.path().join("anp-stopped");
    stopped_after_one_epoch_resumes_to(&defense, &stopped, &whole);
    assert_eq!(masks_of(&stopped), values, "the resumed masks differ");
}

#[test]
fn ibau_hypergradient_matches_a_finite_difference_of_the_outer_loss_at_the_inner_optimum() {
    use burn::prelude::*;
    use cleanse_core::defend::ibau::{HyperSettings, hypergradient};
    use cleanse_core::model::loss::cross_entropy;
    use cleanse_core::model::{Architecture, Classifier, ModelConfig, Network, Normalization};
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let config = ModelConfig {
        architecture: Architecture::Resnet18,
        width: 2,
        num_classes: 3,
        normalization: Normalization::cifar10(),
    };
    let model = config
        .init_seeded(&device, 5)
        .train()
        .with_batch_norm_training(false);
    let x = random_images(4, 16, 2, &device).autodiff();
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &ad);
    // The perturbation lives in the normalised input space: pixels move by w * std.
    let std = Tensor::<1>::from_floats(Normalization::cifar10().std, &ad).reshape([1, 3, 1, 1]);
    // A strongly convex inner problem (L2 weight 1, step 0.05), so that its optimum exists and the
    // fixed-point series converges, with the perturbation large enough to move the outer loss.
    let settings = HyperSettings {
        k: 200,
        inner_lr: 0.05,
        inner_reg: 1.0,
    };
    let optimum = |m: &Classifier| -> Tensor<4> {
        let fixed = m.clone().no_grad();
        let mut w = Tensor::<4>::zeros([1, 3, 16, 16], &device);
        for _ in 0..1000 {
            let wl = w.clone().autodiff().require_grad();
            let loss = cross_entropy(
                fixed.forward(x.clone() + wl.clone() * std.clone()),
                y.clone(),
            )
            .neg()
                + wl.clone().powf_scalar(2.0).sum() * settings.inner_reg;
            let g = wl.grad(&loss.backward()).expect("grad");
            w = w - g * settings.inner_lr;
        }
        w
    };
    let outer = |m: &Classifier| -> f64 {
        let w = optimum(m).autodiff();
        cross_entropy(
            m.clone().no_grad().forward(x.clone() + w * std.clone()),
            y.clone(),
        )
        .into_scalar::<f32>() as f64
    };
    let w = optimum(&model);
    let (grads, _, _) = hypergradient(&model, &x, &y, &w, &settings, None);
    let Network::Resnet18(r) = &model.net else {
        panic!("resnet")
    };
    let fc_id = r.fc.weight.id;
    let g: Vec<f32> = floats(grads.get::<2>(fc_id).expect("fc gradient"));
    // A direction in the classifier's weights.
    let mut rng = cleanse_core::rng::Rng::from_parts(&[11]);
    let u: Vec<f32> = (0..g.len()).map(|_| rng.next_f32() - 0.5).collect();
    let un = u.iter().map(|v| v * v).sum::<f32>().sqrt();
    let u: Vec<f32> = u.iter().map(|v| v / un).collect();
    let along = |h: f32| -> Classifier {
        let mut m = model.clone();
        let Network::Resnet18(r) = &mut m.net else {
            panic!("resnet")
        };
        let dims = r.fc.weight.val().dims();
        let du = Tensor::<2>::from_data(
            TensorData::new(u.iter().map(|v| v * h).collect::<Vec<f32>>(), dims),
            &ad,
        );
        r.fc.weight = r.fc.weight.clone().map(|t| t + du);
        m
    };
    let h = 1e-2;
    let fd = (outer(&along(h)) - outer(&along(-h))) / (2.0 * h as f64);
    let analytic: f64 = g
        .iter()
        .zip(&u)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum();
    let tolerance = 0.05 * fd.abs() + 1e-4;
    assert!(
        (analytic - fd).abs() < tolerance,
        "hypergradient . u = {analytic}, finite difference = {fd}"
    );
    // The outer loss's own gradient (the perturbation held fixed) is not the answer: the
    // implicit term is what makes the two agree.
    let w = w.autodiff();
    let at = |m: &Classifier| {
        cross_entropy(
            m.clone()
                .no_grad()
                .forward(x.clone() + w.clone() * std.clone()),
            y.clone(),
        )
        .into_scalar::<f32>() as f64
    };
    let partial = (at(&along(h)) - at(&along(-h))) / (2.0 * h as f64);
    eprintln!("hypergradient . u = {analytic}, finite difference = {fd}, partial = {partial}");
    eprintln!("hypergradient . u = {analytic}, finite difference = {fd}, partial = {partial}");
    assert!(
        (partial - fd).abs() > tolerance,
        "partial {partial} vs total {fd}: the test cannot tell the implicit term"
    );
}

/// The outer mask: on every image it is the method's hypergradient; on none the perturbation
/// leaves the outer loss, its gradient with respect to the perturbation is zero, and the
/// hypergradient is the clean loss's plain gradient.
#[test]
fn ibau_outer_mask_selects_the_perturbed_images() {
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use cleanse_core::defend::ibau::{HyperSettings, hypergradient};
    use cleanse_core::model::loss::cross_entropy;
    use cleanse_core::model::{Architecture, ModelConfig, Network, Normalization};
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let config = ModelConfig {
        architecture: Architecture::Resnet18,
        width: 2,
        num_classes: 3,
        normalization: Normalization::cifar10(),
    };
    let model = config
        .init_seeded(&device, 7)
        .train()
        .with_batch_norm_training(false);
    let x = random_images(4, 16, 3, &device).autodiff();
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &ad);
    let w = Tensor::<4>::ones([1, 3, 16, 16], &device) * 0.3;
    let settings = HyperSettings::default();
    let fc = |g: &GradientsParams| -> Vec<f32> {
        let Network::Resnet18(r) = &model.net else {
            panic!("resnet")
        };
        floats(g.get::<2>(r.fc.weight.id).expect("fc gradient"))
    };
    let ones = Tensor::<4>::ones([4, 1, 1, 1], &ad);
    let zeros = Tensor::<4>::zeros([4, 1, 1, 1], &ad);
    let (all, _, _) = hypergradient(&model, &x, &y, &w, &settings, None);
    let (masked_all, _, _) = hypergradient(&model, &x, &y, &w, &settings, Some(&ones));
    assert_eq!(fc(&all), fc(&masked_all));
    let (none, _, _) = hypergradient(&model, &x, &y, &w, &settings, Some(&zeros));
    let clean = GradientsParams::from_grads(
        cross_entropy(model.forward(x.clone()), y.clone()).backward(),
        &model,
    );
    assert_eq!(fc(&none), fc(&clean));
    assert_ne!(fc(&all), fc(&clean));
}

#[test]
fn ibau_unlearns_in_rounds_and_resumes_exactly() {
    use cleanse_core::defend::ibau::IbauConfig;
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    suspect(&sus);
    let config = IbauConfig {
        rounds: 2,
        ..IbauConfig::paper(sus.clone())
    }
    .with_flags(&batches(8, Some(1e-3)))
    .expect("I-BAU's flags");
    let defense = Defense::Ibau(config);
    assert_eq!(defense.method(), "ibau");
    let whole = tmp.path().join("ibau");
    let report = defense
        .run(&whole, false, &cpu(), &mut SilentObserver)
        .expect("ibau");
    assert_eq!(report.epochs.len(), 2);
    assert!(weights(&whole) != weights(&sus), "the model changed");
    stopped_after_one_epoch_resumes_to(&defense, &tmp.path().join("ibau-stopped"), &whole);
}

/// The supplement's GTSRB protocol: the defender's data is a per-class slice of the test set, the
/// rest of the test set evaluates, and nothing is held out of the training set.
#[test]
fn the_defenders_data_can_be_a_per_class_slice_of_the_test_set() {
    let mut tc = tiny_train_config();
    tc.holdout = 0.0;
    tc.data.defender_per_class = Some(3);
    let full = {
        let mut d = tc.data.clone();
        d.defender_per_class = None;
        d.load().expect("data")
    };
    let data = tc.data.load().expect("data");
    let classes = full.test.num_classes;
    let defender = data.defender.clone().expect("the slice");
    assert_eq!(defender.class_counts(), vec![3; classes]);
    assert_eq!(data.test.len() + defender.len(), full.test.len());
    assert_eq!(data.train.len(), full.train.len());
    // Disjoint: no defender image is among the evaluation images.
    for i in 0..defender.len() {
        assert!((0..data.test.len()).all(|j| data.test.image(j) != defender.image(i)));
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    let report = train(&tc, &sus, false, &cpu(), &mut SilentObserver).expect("train");
    assert_eq!(report.data.holdout_size, defender.len());
    assert_eq!(report.data.test_size, data.test.len());
    let held = cleanse_core::engine::run_files::load_holdout(&sus).expect("holdout");
    assert_eq!(held.pixels, defender.pixels);
    // A defense trains on the slice and is evaluated on the rest.
    let mut ft = FtConfig::paper(sus.clone(), false);
    ft.training.epochs = 1;
    ft.common.batch_size = 8;
    let r = Defense::Ft(ft)
        .run(&tmp.path().join("ft"), false, &cpu(), &mut SilentObserver)
        .expect("ft");
    let rec = r.defense.expect("record");
    assert_eq!(rec.defender_images, defender.len());
    assert_eq!(r.data.test_size, data.test.len());
    // Two defender sets at once is an error naming the setting.
    tc.holdout = 0.1;
    let e = train(
        &tc,
        &tmp.path().join("both"),
        false,
        &cpu(),
        &mut SilentObserver,
    )
    .expect_err("holdout and slice")
    .to_string();
    assert!(e.contains("holdout"), "{e}");
}

/// The authors' GTSRB split: a fraction of every test class is the defender's, recorded in the
/// run's split file; the rest of the test set evaluates. Both kinds at once, and fractions out of
/// (0, 1), are errors naming the setting.
#[test]
fn the_defenders_data_can_be_a_fraction_of_every_test_class() {
    let mut tc = tiny_train_config();
    tc.holdout = 0.0;
    tc.data.defender_fraction = Some(0.4);
    let full = {
        let mut d = tc.data.clone();
        d.defender_fraction = None;
        d.load().expect("data")
    };
    let data = tc.data.load().expect("data");
    let defender = data.defender.clone().expect("the fraction");
    let expected: Vec<usize> = full
        .test
        .class_counts()
        .iter()
        .map(|&n| (0.4 * n as f64).round() as usize)
        .collect();
    assert_eq!(defender.class_counts(), expected);
    assert_eq!(data.test.len() + defender.len(), full.test.len());
    let tmp = tempfile::tempdir().expect("tmp");
    let sus = tmp.path().join("suspect");
    let report = train(&tc, &sus, false, &cpu(), &mut SilentObserver).expect("train");
    assert_eq!(report.data.holdout_size, defender.len());
    assert_eq!(report.data.test_size, data.test.len());
    let split: cleanse_core::data::split::SplitFile =
        cleanse_core::io::read_json(&sus.join("split.json")).expect("split.json");
    assert_eq!(split.data.defender_fraction, Some(0.4));
    let held = cleanse_core::engine::run_files::load_holdout(&sus).expect("holdout");
    assert_eq!(held.pixels, defender.pixels);
    for (f, n, needle) in [
        (Some(0.0), None, "strictly between 0 and 1"),
        (Some(1.0), None, "strictly between 0 and 1"),
        (Some(0.4), Some(3), "not both"),
    ] {
        let mut d = tc.data.clone();
        d.defender_fraction = f;
        d.defender_per_class = n;
        let e = d.load().expect_err(needle).to_string();
        assert!(e.contains("defender-fraction") && e.contains(needle), "{e}");
    }
}

/// Flags setting a defense's batch size (and learning rate), as the command line sets them.
fn batches(batch_size: usize, lr: Option<f64>) -> cleanse_core::defend::settings::SharedFlags {
    cleanse_core::defend::settings::SharedFlags {
        batch_size: Some(batch_size),
        lr,
        ..Default::default()
    }
}
