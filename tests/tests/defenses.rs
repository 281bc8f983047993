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
use cleanse_core::device::{DeviceChoice, Selected, select};
use cleanse_core::engine::run_dir::{RunDir, canonical_as, differences};
use cleanse_core::report::{EpochRecord, Report};
use cleanse_core::train::run::train_with;
use cleanse_core::train::{Observer, Schedule, SilentObserver, TrainConfig, train};
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
    let loaded = cleanse_core::train::run::load_run_model(dir, &Device::flex()).expect("model");
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
    c.epochs = 3;
    c.batch_size = 8;
    c.lr = 0.02;
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
    let record = report.defense.clone().expect("record");
    assert_eq!(record.config, defense);
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
    assert_eq!(read_report(&whole).defense.expect("typed").config, defense);

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
    other.lr = 0.5;
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
    kc.epochs = 1;
    kc.batch_size = 8;
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
    kd.lr = f64::NAN;
    let mut ft = FtConfig::paper(missing, false);
    ft.sgd.momentum = 1.5;
    for (d, name) in [(Defense::Kd(kd), "lr"), (Defense::Ft(ft), "momentum")] {
        let e = d
            .run(&out, false, &cpu(), &mut SilentObserver)
            .expect_err(name)
            .to_string();
        assert!(e.contains(&format!("`{name}`")), "{name}: {e}");
    }
    assert!(!out.exists());
}
