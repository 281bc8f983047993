//! Building blocks of the distillation cleanser: the student's layer-wise re-initialisation, the
//! temperature-softened KL loss and its schedule, and label-free defender data.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use cleanse_core::data::augment::Augment;
use cleanse_core::data::synthetic::{SyntheticConfig, generate};
use cleanse_core::defend::cleanse::KdConfig;
use cleanse_core::defend::kd::{PAPER_TEMPERATURE, TemperatureRange, kd_loss, temperature};
use cleanse_core::defend::reinit::{ADAPTIVE_RATIOS, InitMode, student};
use cleanse_core::defend::unlabeled::{UnlabeledImages, make_batch};
use cleanse_core::model::{Architecture, Classifier, ModelConfig, Normalization};
use std::collections::BTreeMap;

fn dev() -> Device {
    Device::flex()
}

fn config(architecture: Architecture) -> ModelConfig {
    ModelConfig {
        architecture,
        width: 16,
        num_classes: 10,
        normalization: Normalization::cifar10(),
    }
}

/// Every float tensor of a model (parameters and batch-norm statistics) by path.
fn tensors(m: &Classifier) -> BTreeMap<String, Vec<f32>> {
    struct V(Vec<String>, BTreeMap<String, Vec<f32>>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.0.push(name.into());
        }
        fn exit_module(&mut self, _name: &str, _c: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().into_data().try_to_vec::<f32>().expect("f32");
            self.1.insert(self.0.join("."), v);
        }
    }
    let mut v = V(Vec::new(), BTreeMap::new());
    m.visit(&mut v);
    v.1
}

fn is_bn(path: &str) -> bool {
    path.split('.').any(|p| p.contains("bn"))
}

#[test]
fn adaptive_student_matches_the_ratios_and_keeps_batch_norm() {
    for arch in [Architecture::Resnet18, Architecture::PreactResnet18] {
        let cfg = config(arch);
        let teacher = cfg.init_seeded(&dev(), 1);
        let mode = InitMode::Adaptive {
            ratios: ADAPTIVE_RATIOS,
        };
        let (s, realised) = student(&teacher, &cfg, &mode, 7, &dev());
        for g in &realised.groups {
            assert!(g.elements > 0, "{}", g.group);
            let sd = (g.requested * (1.0 - g.requested) / g.elements as f64).sqrt();
            assert!(
                (g.fraction - g.requested).abs() <= 5.0 * sd + 1e-12,
                "{:?} {}: {} vs {}",
                arch,
                g.group,
                g.fraction,
                g.requested
            );
        }
        let (t, st) = (tensors(&teacher), tensors(&s));
        let mut bn = 0;
        for (k, v) in &t {
            if is_bn(k) {
                assert_eq!(v, &st[k], "batch norm {k} changed");
                bn += 1;
            }
        }
        assert!(
            bn > 20,
            "BN weights, biases and running statistics were compared"
        );
        // Exactly the drawn elements changed (a fresh value equal to the teacher's is all but
        // impossible), so the realised counts describe the student itself.
        let changed: usize = t
            .iter()
            .filter(|(k, _)| !is_bn(k))
            .map(|(k, v)| v.iter().zip(&st[k]).filter(|(a, b)| a != b).count())
            .sum();
        let drawn: usize = realised.groups.iter().map(|g| g.reinitialised).sum();
        assert!(
            changed <= drawn && changed as f64 >= 0.999 * drawn as f64,
            "{changed} elements changed, {drawn} drawn"
        );
        // About 22% of conv/linear weights overall at width 64 (method spec); the stage sizes
        // scale alike at width 16.
        assert!(
            (0.15..0.30).contains(&realised.total_fraction),
            "{}",
            realised.total_fraction
        );
        // Same seed, same student; another seed, another one.
        let (s2, _) = student(&teacher, &cfg, &mode, 7, &dev());
        assert_eq!(tensors(&s2), st);
        let (s3, _) = student(&teacher, &cfg, &mode, 8, &dev());
        assert_ne!(tensors(&s3), st);
    }
}

#[test]
fn init_modes_none_fresh_uniform_single() {
    let cfg = config(Architecture::Resnet18);
    let teacher = cfg.init_seeded(&dev(), 1);
    let t = tensors(&teacher);
    let (none, r) = student(&teacher, &cfg, &InitMode::None, 3, &dev());
    assert_eq!(tensors(&none), t);
    assert_eq!(r.total_fraction, 0.0);
    let (fresh, r) = student(&teacher, &cfg, &InitMode::Fresh, 3, &dev());
    assert_eq!(r.total_fraction, 1.0);
    let f = tensors(&fresh);
    for (k, v) in &t {
        if k.ends_with("conv1.weight") {
            assert_ne!(v, &f[k], "{k} re-initialised");
        }
        if is_bn(k) {
            assert_eq!(v, &f[k], "{k} kept");
        }
    }
    let (_, adaptive) = student(
        &teacher,
        &cfg,
        &InitMode::Adaptive {
            ratios: ADAPTIVE_RATIOS,
        },
        3,
        &dev(),
    );
    let (_, uniform) = student(
        &teacher,
        &cfg,
        &InitMode::Uniform {
            ratios: ADAPTIVE_RATIOS,
        },
        3,
        &dev(),
    );
    let p = uniform.groups[0].requested;
    assert!(uniform.groups.iter().all(|g| g.requested == p));
    assert!((uniform.total_fraction - adaptive.total_fraction).abs() < 0.01);
    for stage in 1..=4 {
        let (_, single) = student(
            &teacher,
            &cfg,
            &InitMode::parse(&format!("single:{stage}"), ADAPTIVE_RATIOS).expect("mode"),
            3,
            &dev(),
        );
        for g in &single.groups {
            let this = g.group == format!("stage{stage}");
            assert_eq!(g.reinitialised > 0, this, "{} in single:{stage}", g.group);
        }
    }
    for bad in ["single:0", "single:5", "half", "single:x"] {
        let e = InitMode::parse(bad, ADAPTIVE_RATIOS)
            .expect_err(bad)
            .to_string();
        assert!(e.contains("init"), "{e}");
    }
}

#[test]
fn kd_loss_matches_an_independent_reference_and_vanishes_on_equal_logits() {
    let s = [[1.0f32, -0.5, 2.0, 0.0], [0.3, 0.3, -1.0, 4.0]];
    let t = [[0.5f32, 1.5, -2.0, 1.0], [2.0, -1.0, 0.0, 0.5]];
    for temp in [1.0f64, 2.5, 4.0] {
        let mut want = 0.0f64;
        for (sr, tr) in s.iter().zip(&t) {
            let soft = |r: &[f32; 4]| {
                let z: Vec<f64> = r.iter().map(|&v| (v as f64 / temp).exp()).collect();
                let sum: f64 = z.iter().sum();
                z.into_iter().map(|v| v / sum).collect::<Vec<f64>>()
            };
            let (ps, pt) = (soft(sr), soft(tr));
            want += pt
                .iter()
                .zip(&ps)
                .map(|(a, b)| a * (a / b).ln())
                .sum::<f64>();
        }
        want /= 2.0;
        let got: f32 = kd_loss(
            Tensor::<2>::from_floats(s, &dev()),
            Tensor::<2>::from_floats(t, &dev()),
            temp,
        )
        .into_scalar();
        assert!(
            (got as f64 - want).abs() < 1e-5,
            "T={temp}: {got} vs {want}"
        );
        let same: f32 = kd_loss(
            Tensor::<2>::from_floats(t, &dev()),
            Tensor::<2>::from_floats(t, &dev()),
            temp,
        )
        .into_scalar();
        assert!(same.abs() < 1e-6);
    }
}

#[test]
fn temperature_anneals_from_just_above_one_to_four() {
    assert!((temperature(0, 100) - 1.03).abs() < 1e-12);
    assert!((temperature(49, 100) - 2.5).abs() < 1e-12);
    assert!((temperature(99, 100) - 4.0).abs() < 1e-12);
    assert!((temperature(0, 1) - 4.0).abs() < 1e-12);
    let ts: Vec<f64> = (0..30).map(|e| temperature(e, 30)).collect();
    assert!(ts.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn other_temperature_ranges_follow_the_same_linear_schedule() {
    for e in 0..100 {
        assert_eq!(PAPER_TEMPERATURE.at(e, 100), temperature(e, 100));
    }
    let constant = TemperatureRange { from: 2.0, to: 2.0 };
    assert!((0..10).all(|e| constant.at(e, 10) == 2.0));
    let falling = TemperatureRange { from: 4.0, to: 1.0 };
    assert!((falling.at(0, 10) - 3.7).abs() < 1e-12);
    assert!((falling.at(9, 10) - 1.0).abs() < 1e-12);
    // A configuration saved before the range existed (a run to resume) reads back with the
    // method spec's range, and the method's own configuration is written exactly as before (resume
    // compares the written JSON).
    let config = KdConfig::paper("teacher".into(), true);
    let written = serde_json::to_value(&config).unwrap();
    assert!(written.get("temperature").is_none(), "{written}");
    let read: KdConfig = serde_json::from_value(written).unwrap();
    assert_eq!(read.temperature, PAPER_TEMPERATURE);
    assert_eq!(read, config);
    let other = KdConfig {
        temperature: constant,
        ..config
    };
    let written = serde_json::to_value(&other).unwrap();
    assert_eq!(written["temperature"]["from"], 2.0);
    assert_eq!(serde_json::from_value::<KdConfig>(written).unwrap(), other);
    assert!(TemperatureRange { from: 0.0, to: 4.0 }.check().is_some());
    assert!(
        TemperatureRange {
            from: 1.0,
            to: f64::NAN
        }
        .check()
        .is_some()
    );
    assert!(PAPER_TEMPERATURE.check().is_none());
}

#[test]
fn cleanse_rejects_an_unusable_weight_decay_before_reading_anything() {
    use cleanse_core::defend::Defense;
    use cleanse_core::engine::SilentObserver;
    let selected =
        cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu).expect("cpu");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = KdConfig::paper(tmp.path().join("no-teacher"), true);
    assert!(config.training.sgd.check_weight_decay().is_none());
    for wd in [-1e-4, f64::NAN, f64::INFINITY] {
        config.training.sgd.weight_decay = wd;
        let err = Defense::Kd(config.clone())
            .run(
                &tmp.path().join("out"),
                false,
                &selected,
                &mut SilentObserver,
            )
            .expect_err("bad weight decay");
        assert!(err.to_string().contains("weight-decay"), "{err}");
    }
    config.training.sgd.weight_decay = 0.0;
    assert!(config.training.sgd.check_weight_decay().is_none());
}

#[test]
fn unlabeled_images_keep_pixels_and_batch_deterministically() {
    let set = generate(&SyntheticConfig {
        train_size: 20,
        test_size: 1,
        ..Default::default()
    })
    .train;
    let u = UnlabeledImages::from_set(set.clone());
    assert_eq!(u.len(), 20);
    assert_eq!(u.image(7), set.image(7));
    let a = make_batch(&u, &[3, 7, 11], &Augment::standard(true), 5, 2);
    let b = make_batch(&u, &[3, 7, 11], &Augment::standard(true), 5, 2);
    assert_eq!(a.images, b.images);
    assert_eq!(a.shape, [3, 3, 32, 32]);
    let plain = make_batch(&u, &[7], &Augment::NONE, 0, 0);
    let want: Vec<f32> = set.image(7).iter().map(|&v| v as f32 / 255.0).collect();
    assert_eq!(plain.images.len(), want.len());
    assert!(
        plain
            .images
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );
}

#[test]
fn unlabeled_limit_takes_a_seeded_subset_and_rejects_impossible_sizes() {
    use cleanse_core::data::{DataSpec, DatasetKind};
    use cleanse_core::defend::cleanse::{KdConfig, UnlabeledSource, unlabeled_images};
    let mut spec = DataSpec::new(DatasetKind::Synthetic, None);
    spec.synthetic = SyntheticConfig {
        train_size: 30,
        test_size: 2,
        ..Default::default()
    };
    let full = spec.load().expect("data").train;
    let mut c = KdConfig::paper("unused".into(), false);
    c.unlabeled = UnlabeledSource::Data { spec };
    assert_eq!(unlabeled_images(&c).expect("all").len(), 30);
    let pick = |c: &KdConfig| -> Vec<Vec<u8>> {
        let u = unlabeled_images(c).expect("subset");
        (0..u.len()).map(|i| u.image(i).to_vec()).collect()
    };
    c.unlabeled_limit = Some(12);
    let a = pick(&c);
    assert_eq!(a.len(), 12);
    assert_eq!(a, pick(&c), "the same seed picks the same images");
    // Every picked image is a distinct image of the full set.
    let mut found: Vec<usize> = a
        .iter()
        .map(|img| {
            (0..full.len())
                .find(|&i| full.image(i) == img.as_slice())
                .expect("picked image comes from the set")
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    assert_eq!(found.len(), 12);
    c.common.seed = 1;
    assert_ne!(a, pick(&c), "another seed picks other images");
    for bad in [0, 31] {
        c.unlabeled_limit = Some(bad);
        let e = unlabeled_images(&c).expect_err("rejected").to_string();
        assert!(e.contains("unlabeled-limit") && e.contains("30"), "{e}");
    }
}

#[test]
fn a_short_cleanse_lowers_the_asr_of_a_tiny_backdoored_model() {
    use cleanse_core::attack::poison::AttackHooks;
    use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Stamping};
    use cleanse_core::data::{DataSpec, DatasetKind};
    use cleanse_core::defend::Defense;
    use cleanse_core::defend::cleanse::KdConfig;
    use cleanse_core::engine::SilentObserver;
    use cleanse_core::optim::Schedule;
    use cleanse_core::train::TrainConfig;
    use cleanse_core::train::run::train_with;
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 400,
        test_size: 100,
        num_classes: 4,
        side: 16,
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
    let selected =
        cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu).expect("cpu");
    let tmp = tempfile::tempdir().expect("tmp");
    let teacher_dir = tmp.path().join("teacher");
    let teacher = train_with(
        &tc,
        &mut hooks,
        &teacher_dir,
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect("attack");
    let teacher_asr = teacher
        .final_metrics
        .as_ref()
        .and_then(|f| f.asr)
        .expect("asr");
    let teacher_acc = teacher
        .final_metrics
        .as_ref()
        .map(|f| f.clean_acc)
        .expect("acc");
    let mut kc = KdConfig::paper(teacher_dir.clone(), false);
    kc.training.epochs = 6;
    kc.common.batch_size = 16;
    kc.common.lr = 0.05;
    kc.training.augment = Augment::NONE;
    let run = |c: &KdConfig, dir: &str| {
        Defense::Kd(c.clone())
            .run(&tmp.path().join(dir), false, &selected, &mut SilentObserver)
            .expect(dir)
    };
    let report = run(&kc, "student");
    let student_asr = report
        .final_metrics
        .as_ref()
        .and_then(|f| f.asr)
        .expect("asr");
    assert_eq!(report.kind, "defense");
    assert!(
        teacher_asr > 0.8,
        "the tiny teacher is backdoored: {teacher_asr}"
    );
    assert!(
        student_asr < teacher_asr - 0.3,
        "{teacher_asr} -> {student_asr}"
    );
    let student_acc = report
        .final_metrics
        .as_ref()
        .map(|f| f.clean_acc)
        .expect("acc");
    assert!(
        student_acc > teacher_acc - 0.2,
        "{teacher_acc} -> {student_acc}"
    );
    // The report says what the initialisation did, and the student evaluates like any run.
    let defense = report.defense.as_ref().expect("defense info");
    assert_eq!(defense.config["method"], "kd");
    assert_eq!(defense.reinit.as_ref().expect("reinit").groups.len(), 6);
    assert!(tmp.path().join("student/attack.json").is_file());
    assert!(tmp.path().join("student/model.bpk").is_file());
    // With mixup the student trains on other images (its loss differs from the first epoch on),
    // the report's config says so, and the backdoor is still lowered.
    let mixed = KdConfig {
        mixup: true,
        ..kc.clone()
    };
    let rm = run(&mixed, "mixup");
    assert_eq!(rm.config["mixup"], true);
    assert!(report.config.get("mixup").is_none());
    assert_ne!(rm.epochs[0].loss, report.epochs[0].loss);
    let mixup_asr = rm.final_metrics.as_ref().and_then(|f| f.asr).expect("asr");
    assert!(
        mixup_asr < teacher_asr - 0.3,
        "mixup: {teacher_asr} -> {mixup_asr}"
    );
    // The student before distillation: an exact copy measures like its teacher, and with no
    // epochs the re-initialised student is the model.
    let init_acc = defense.start_clean_acc.expect("init acc");
    assert!((0.0..=1.0).contains(&init_acc));
    let mut copy = kc.clone();
    copy.training.epochs = 0;
    copy.init = InitMode::None;
    let r0 = run(&copy, "copy");
    let f0 = r0.final_metrics.as_ref().expect("final");
    assert!(r0.epochs.is_empty());
    assert!(
        (f0.clean_acc - teacher_acc).abs() < 1e-9,
        "{f0:?} vs {teacher_acc}"
    );
    assert_eq!(f0.asr, Some(teacher_asr));
    let fresh = KdConfig {
        init: InitMode::Fresh,
        ..copy
    };
    let r1 = run(&fresh, "fresh0");
    let f1 = r1.final_metrics.as_ref().expect("final");
    let d1 = r1.defense.as_ref().expect("defense");
    assert_eq!(d1.start_clean_acc, Some(f1.clean_acc));
    assert!(
        f1.clean_acc < teacher_acc - 0.2,
        "a random student has not learned the task: {f1:?}, teacher {teacher_acc}"
    );
    assert!(tmp.path().join("fresh0/model.bpk").is_file());
}
