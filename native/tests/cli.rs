//! The `cleanse` binary end to end on tiny synthetic data.

use std::path::Path;
use std::process::Command;

fn cleanse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(args)
        .output()
        .expect("run cleanse")
}

fn train_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-train",
        "64",
        "--synthetic-test",
        "32",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

#[test]
fn train_writes_report_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let args = train_args(&out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cleanse(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["schema_version"], 2);
    assert_eq!(report["status"], "complete");
    assert_eq!(report["epochs"].as_array().expect("epochs").len(), 2);
    let acc = report["final"]["clean_acc"].as_f64().expect("clean_acc");
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(report["config"]["width"], 4);
    assert_eq!(report["device"]["backend"], "flex");
    for f in [
        "model.bpk",
        "model.json",
        "split.json",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The same run again finds it finished: nothing to do; other settings are refused by
    // name. Either way the first run's files are left alone.
    let before = std::fs::read(out.join("model.bpk")).expect("model");
    let o = cleanse(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("complete already"), "{err}");
    let mut other = args.clone();
    let at = other.iter().position(|a| *a == "--epochs").expect("epochs") + 1;
    other[at] = "3";
    let o = cleanse(&other);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("finished run of another configuration") && err.contains("epochs: 2 -> 3"),
        "{err}"
    );
    assert_eq!(before, std::fs::read(out.join("model.bpk")).expect("model"));
    // --resume of a finished run is a no-op that reports the same result.
    let mut resume = args.clone();
    resume.push("--resume");
    let o = cleanse(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_flags_and_paths_are_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing_data = |out: Option<&str>| {
        let mut args = vec![
            "train",
            "--dataset",
            "cifar10",
            "--data",
            "/no/such/dir",
            "--device",
            "cpu",
            "--out",
        ];
        args.extend(out);
        cleanse(&args)
    };
    // --out without a value is refused by the parser, naming the flag.
    let o = missing_data(None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
    let out = tmp.path().join("x");
    let o = missing_data(Some(out.to_str().expect("utf8")));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
    let o = cleanse(&[
        "train",
        "--dataset",
        "synthetic",
        "--device",
        "gpu9",
        "--out",
        "y",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("gpu9"));
    let o = cleanse(&[
        "train",
        "--dataset",
        "synthetic",
        "--lr=-1",
        "--device",
        "cpu",
        "--out",
        tmp.path().join("z").to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`lr`") && err.contains("positive"), "{err}");
}

fn attack_args(kind: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = train_args(out);
    args[0] = "attack".into();
    args.insert(1, kind.into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_ok(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cleanse(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn attack_then_eval_reproduces_the_reported_asr() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("blended");
    run_ok(&attack_args(
        "blended",
        &out,
        &["--target", "2", "--poison-rate", "0.2"],
    ));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["kind"], "attack");
    assert_eq!(report["attack"]["kind"], "blended");
    assert_eq!(report["attack"]["target"], 2);
    let asr = report["final"]["asr"].as_f64().expect("asr");
    assert!(
        report["epochs"]
            .as_array()
            .expect("epochs")
            .iter()
            .all(|e| e["asr"].as_f64().is_some())
    );
    let attack: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("attack.json")).expect("attack"))
            .expect("json");
    // 20% of the 58 attacker images (64 minus the 10% held out).
    assert_eq!(attack["poisoned"].as_array().expect("indices").len(), 12);
    let eval_json = tmp.path().join("eval.json");
    let stdout = run_ok(&[
        "eval".into(),
        "--model".into(),
        out.display().to_string(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        eval_json.display().to_string(),
    ]);
    assert!(stdout.contains("asr"), "{stdout}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).expect("eval")).expect("json");
    assert!((e["asr"].as_f64().expect("asr") - asr).abs() < 1e-9);
    assert_eq!(e["attack_kind"], "blended");
    // A clean model evaluated against the saved attack.
    let clean = tmp.path().join("clean");
    let targs = train_args(&clean);
    run_ok(&targs);
    let stdout = run_ok(&[
        "eval".into(),
        "--model".into(),
        clean.display().to_string(),
        "--attack".into(),
        out.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ]);
    assert!(
        stdout.contains("clean_acc") && stdout.contains("asr"),
        "{stdout}"
    );
}

/// Removes every file and folder in `dir` not named in `keep`: what a run stopped at some point
/// would have left.
fn keep_only(dir: &Path, keep: &[&str]) {
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        if keep.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("rm");
        } else {
            std::fs::remove_file(&p).expect("rm");
        }
    }
}

/// LC without `--clean-model` trains its clean model into `<out>/clean-model` as the first step of
/// the attack run; stopped right after that model was made, `--resume` reuses it and goes on with
/// the attack.
#[test]
fn lc_trains_its_own_clean_model_and_resumes_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("lc");
    let args = attack_args("lc", &out, &[]);
    let stdout = run_ok(&args);
    assert!(stdout.contains("asr"), "{stdout}");
    assert!(out.join("clean-model/report.json").is_file());
    assert!(out.join("report.json").is_file());
    let clean_written = std::fs::metadata(out.join("clean-model/model.bpk"))
        .and_then(|m| m.modified())
        .expect("mtime");
    // As if stopped right after the clean model: the run's started.json and clean-model/ are
    // left, nothing else.
    keep_only(&out, &["clean-model", "checkpoint"]);
    keep_only(&out.join("checkpoint"), &["started.json"]);
    // A new run refuses the folder; --resume takes it up.
    let plain: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cleanse(&plain);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let mut resume = args.clone();
    resume.push("--resume".into());
    let args: Vec<&str> = resume.iter().map(String::as_str).collect();
    let o = cleanse(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("using the clean model"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.join("report.json").is_file());
    let reused = std::fs::metadata(out.join("clean-model/model.bpk"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(reused, clean_written, "the clean model was trained again");
    // As if stopped while training the clean model, after its last checkpoint: the clean model's
    // checkpoint and the run's started.json are left. --resume finishes the clean model from its
    // checkpoint, then runs the attack.
    keep_only(&out, &["clean-model", "checkpoint"]);
    keep_only(&out.join("checkpoint"), &["started.json"]);
    keep_only(&out.join("clean-model"), &["checkpoint"]);
    let o = cleanse(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("training a clean model"), "{err}");
    assert!(out.join("clean-model/model.bpk").is_file());
    assert!(out.join("report.json").is_file());
}

#[test]
fn attack_flags_are_checked_and_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let args = attack_args("badnets", &tmp.path().join("a"), &["--target", "12"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cleanse(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`target`") && err.contains("0..9"), "{err}");
    let args = attack_args("sig", &tmp.path().join("b"), &["--all-to-all"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cleanse(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("all-to-all"));
    let o = cleanse(&["eval", "--model", "/no/such/run", "--device", "cpu"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/run"));
}

#[test]
fn triggers_writes_a_gallery_of_all_six_attacks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let png = tmp.path().join("g.png");
    let stdout = run_ok(&[
        "triggers".into(),
        "--dataset".into(),
        "synthetic".into(),
        "--scale".into(),
        "2".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        png.display().to_string(),
    ]);
    for k in ["badnets", "blended", "sig", "lc", "wanet", "iab"] {
        assert!(stdout.contains(k), "{stdout}");
    }
    let img = image::open(&png).expect("png");
    // 7 columns and 2 rows of 32x32 images at scale 2 with 4-pixel gaps.
    assert_eq!(img.width(), 7 * 64 + 8 * 4);
    assert_eq!(img.height(), 2 * 64 + 3 * 4);
}

#[test]
fn presets_set_defaults_that_explicit_flags_override() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("p");
    // train_args passes --width 4 --epochs 2 --batch-size 16 explicitly.
    run_ok(&attack_args(
        "sig",
        &out,
        &["--preset", "subset", "--target", "1"],
    ));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(r["config"]["width"], 4, "explicit --width wins");
    assert_eq!(r["config"]["epochs"], 2, "explicit --epochs wins");
    assert_eq!(r["config"]["batch_size"], 16, "explicit --batch-size wins");
    assert_eq!(r["config"]["lr"], 0.05, "the preset's lr");
    assert_eq!(r["attack"]["stamping"], "after_augment");
    assert_eq!(
        r["attack"]["poison_rate"], 1.0,
        "clean-label: the whole target class"
    );
    let out2 = tmp.path().join("q");
    run_ok(&attack_args(
        "sig",
        &out2,
        &[
            "--target",
            "1",
            "--stamping",
            "after",
            "--poison-rate",
            "0.5",
        ],
    ));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(r["config"]["lr"], 0.1, "faithful: the supplement's lr");
    assert_eq!(r["attack"]["poison_rate"], 0.5);
    assert_eq!(r["attack"]["stamping"], "after_augment");
    let sig_delta = r["attack"]["sig_delta"].as_f64().expect("delta");
    assert!((sig_delta - 20.0 / 255.0).abs() < 1e-6);
}

#[test]
fn faithful_training_control_attacks_use_their_codes_lr() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("w");
    run_ok(&attack_args("wanet", &out, &[]));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(r["config"]["lr"], 0.01);
    assert!(out.join("warp_grid.f32").is_file());
    assert_eq!(
        std::fs::metadata(out.join("warp_grid.f32"))
            .expect("grid")
            .len(),
        32 * 32 * 2 * 4
    );
}

#[test]
fn iab_attack_saves_its_networks_and_eval_reproduces_the_asr() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("iab");
    run_ok(&attack_args(
        "iab",
        &out,
        &[
            "--iab-width",
            "4",
            "--iab-mask-epochs",
            "1",
            "--poison-rate",
            "0.2",
        ],
    ));
    for f in ["iab_generator.bpk", "iab_mask.bpk", "attack.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    let asr = r["final"]["asr"].as_f64().expect("asr");
    let eval_json = tmp.path().join("eval.json");
    run_ok(&[
        "eval".into(),
        "--model".into(),
        out.display().to_string(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        eval_json.display().to_string(),
    ]);
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).expect("eval")).expect("json");
    assert!((e["asr"].as_f64().expect("asr") - asr).abs() < 1e-9);
    assert_eq!(e["attack_kind"], "iab");
}

#[test]
fn defend_kd_cleanses_a_saved_attack_and_checks_its_flags() {
    let tmp = tempfile::tempdir().expect("tmp");
    let teacher = tmp.path().join("teacher");
    run_ok(&attack_args(
        "badnets",
        &teacher,
        &["--stamping", "after", "--poison-rate", "0.3"],
    ));
    let student = tmp.path().join("student");
    let stdout = run_ok(&[
        "defend".into(),
        "kd".into(),
        "--model".into(),
        teacher.display().to_string(),
        "--epochs".into(),
        "2".into(),
        "--batch-size".into(),
        "16".into(),
        "--init".into(),
        "single:4".into(),
        "--ratio-scale".into(),
        "2".into(),
        "--temperature".into(),
        "2,3".into(),
        "--mixup".into(),
        "--weight-decay".into(),
        "0.001".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        student.display().to_string(),
    ]);
    assert!(stdout.contains("kd: clean_acc"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(student.join("report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(r["kind"], "defense");
    assert_eq!(r["config"]["init"]["mode"], "single");
    // --ratio-scale 2 doubles the recorded ratios (stage 4: 0.27 -> 0.54).
    let stage4 = r["config"]["init"]["ratios"][4].as_f64().expect("ratio");
    assert!((stage4 - 0.54).abs() < 1e-12, "{stage4}");
    assert_eq!(r["config"]["temperature"]["from"].as_f64(), Some(2.0));
    assert_eq!(r["config"]["temperature"]["to"].as_f64(), Some(3.0));
    assert_eq!(r["config"]["unlabeled"]["source"], "holdout");
    assert_eq!(r["config"]["mixup"], true);
    assert_eq!(r["config"]["sgd"]["weight_decay"].as_f64(), Some(0.001));
    assert_eq!(r["defense"]["config"]["method"], "kd");
    let groups = r["defense"]["reinit"]["groups"].as_array().expect("groups");
    for g in groups {
        let hit = g["reinitialised"].as_u64().expect("count") > 0;
        assert_eq!(hit, g["group"] == "stage4", "{g}");
    }
    assert!(r["final"]["asr"].as_f64().is_some());
    // FT, with the flags every defense shares.
    let stdout = run_ok(&[
        "defend".into(),
        "ft".into(),
        "--model".into(),
        teacher.display().to_string(),
        "--epochs".into(),
        "1".into(),
        "--batch-size".into(),
        "16".into(),
        "--lr".into(),
        "0.02".into(),
        "--seed".into(),
        "3".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        tmp.path().join("ft").display().to_string(),
    ]);
    assert!(stdout.contains("ft: clean_acc"), "{stdout}");
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("ft/report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(f["config"]["method"], "ft");
    assert_eq!(f["config"]["seed"], 3);
    assert_eq!(f["defense"]["config"]["lr"].as_f64(), Some(0.02));
    // Fine-Pruning and NAD, with their own flags.
    let stdout = run_ok(&[
        "defend".into(),
        "fp".into(),
        "--model".into(),
        teacher.display().to_string(),
        "--epochs".into(),
        "1".into(),
        "--batch-size".into(),
        "16".into(),
        "--acc-drop".into(),
        "0.2".into(),
        "--prune-step".into(),
        "2".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        tmp.path().join("fp").display().to_string(),
    ]);
    assert!(stdout.contains("fp: clean_acc"), "{stdout}");
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("fp/report.json")).expect("report"),
    )
    .expect("json");
    let found = &f["defense"]["findings"];
    assert_eq!(found["method"], "fp");
    assert!(found["steps"][1]["pruned"].as_u64() == Some(2), "{found}");
    assert!(tmp.path().join("fp/pruning.json").is_file());
    let stdout = run_ok(&[
        "defend".into(),
        "nad".into(),
        "--model".into(),
        teacher.display().to_string(),
        "--epochs".into(),
        "1".into(),
        "--teacher-epochs".into(),
        "1".into(),
        "--betas".into(),
        "100,200,300".into(),
        "--p".into(),
        "1".into(),
        "--batch-size".into(),
        "16".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        tmp.path().join("nad").display().to_string(),
    ]);
    assert!(stdout.contains("nad: clean_acc"), "{stdout}");
    assert!(tmp.path().join("nad/fine-tuned/model.bpk").is_file());
    let stdout = run_ok(&[
        "defend".into(),
        "anp".into(),
        "--model".into(),
        teacher.display().to_string(),
        "--iterations".into(),
        "4".into(),
        "--batch-size".into(),
        "16".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        tmp.path().join("anp").display().to_string(),
    ]);
    assert!(stdout.contains("anp: clean_acc"), "{stdout}");
    let stdout = run_ok(&[
        "defend".into(),
        "ibau".into(),
        "--model".into(),
        teacher.display().to_string(),
        "--rounds".into(),
        "1".into(),
        "--k".into(),
        "2".into(),
        "--max-norm".into(),
        "3".into(),
        "--batch-size".into(),
        "32".into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        tmp.path().join("ibau").display().to_string(),
    ]);
    assert!(stdout.contains("ibau: clean_acc"), "{stdout}");
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("ibau/report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(f["defense"]["config"]["method"], "ibau");
    assert_eq!(f["defense"]["config"]["hyper"]["k"], 2);
    assert_eq!(f["defense"]["config"]["max_norm"].as_f64(), Some(3.0));
    assert_eq!(f["defense"]["config"]["lr"].as_f64(), Some(1e-4));
    for (method, flag, value, needle) in [
        ("ibau", "--epochs", "3", "--rounds"),
        ("ibau", "--weight-decay", "0.1", "weight-decay"),
        ("ibau", "--k", "0", "k"),
        ("ibau", "--max-norm", "0", "max-norm"),
        ("ibau", "--outer-fraction", "0", "outer-fraction"),
        ("ibau", "--crop-padding", "0", "without augmentation"),
        ("anp", "--epochs", "3", "--iterations"),
        ("anp", "--weight-decay", "0.1", "weight-decay"),
        ("anp", "--threshold", "2", "threshold"),
        ("nad", "--betas", "1,2", "--betas"),
        ("nad", "--p", "0", "--p:"),
        ("nad", "--teacher-epochs", "0", "teacher-epochs"),
        ("fp", "--acc-drop", "1.5", "acc-drop"),
        ("fp", "--prune-step", "0", "prune-step"),
    ] {
        let o = cleanse(&[
            "defend",
            method,
            "--model",
            teacher.to_str().expect("utf8"),
            flag,
            value,
            "--device",
            "cpu",
            "--out",
            tmp.path().join("bad").to_str().expect("utf8"),
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{method} {flag} {value}: {err}");
    }
    // The supplement's layout: the teacher's row with and without the defenses.
    let table = run_ok(&[
        "summarize".into(),
        "--by-defense".into(),
        tmp.path().display().to_string(),
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("No defense ASR %")
            && lines[0].contains("KD init single:4 2 ep ASR %")
            && lines[0].contains("FT 1 ep ASR %")
            && lines[0].contains("FP 1 ep drop 0.2 step 2 ASR %")
            && lines[0].contains("NAD 1 ep teacher 1 ep beta 100,200,300 p 1 ASR %")
            && lines[0].contains("ANP 4 it ASR %")
            && lines[0].contains("I-BAU 1 rounds K 2 bound 3 ASR %"),
        "{table}"
    );
    assert!(lines[2].starts_with("| BadNets 30% | "), "{table}");
    for (flag, value, needle) in [
        ("--ratios", "0.1,0.2", "--ratios"),
        ("--init", "half", "init"),
        ("--ratio-scale", "0", "ratio-scale"),
        ("--temperature", "4", "--temperature"),
        ("--temperature", "0,4", "temperature"),
        ("--weight-decay", "nan", "weight-decay"),
    ] {
        let o = cleanse(&[
            "defend",
            "kd",
            "--model",
            teacher.to_str().expect("utf8"),
            flag,
            value,
            "--device",
            "cpu",
            "--out",
            tmp.path().join("bad").to_str().expect("utf8"),
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn tsne_maps_clean_and_triggered_features() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("model");
    run_ok(&attack_args("blended", &model, &["--poison-rate", "0.2"]));
    let png = tmp.path().join("maps").join("tsne.png");
    let args: Vec<String> = [
        "tsne",
        "--model",
        model.to_str().expect("utf8"),
        "--per-class",
        "2",
        "--triggered",
        "12",
        "--perplexity",
        "5",
        "--iterations",
        "300",
        "--size",
        "200",
        "--device",
        "cpu",
        "--out",
        png.to_str().expect("utf8"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_ok(&args);
    let img = image::open(&png).expect("a PNG");
    assert_eq!((img.width(), img.height()), (200, 200));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(png.with_extension("json")).expect("json"))
            .expect("valid json");
    let points = j["points"].as_array().expect("points");
    let triggered = points.iter().filter(|p| p["triggered"] == true).count();
    // At most 2 clean images per class (of 32 test images in 10 classes), and 12 triggered
    // non-target images.
    let clean = points.len() - triggered;
    assert!((10..=20).contains(&clean), "{clean} clean points");
    for c in 0..10u64 {
        let n = points
            .iter()
            .filter(|p| p["triggered"] == false && p["label"].as_u64() == Some(c))
            .count();
        assert!(n <= 2, "class {c}: {n} clean points");
    }
    assert_eq!(triggered, 12);
    let target = j["target"].as_u64().expect("target");
    assert!(
        points
            .iter()
            .filter(|p| p["triggered"] == true)
            .all(|p| p["label"].as_u64() != Some(target))
    );
    assert!(
        points
            .iter()
            .all(|p| p["x"].as_f64().is_some_and(f64::is_finite))
    );
    // The same seed gives the same map.
    let again = tmp.path().join("again.png");
    let mut args2 = args.clone();
    *args2.last_mut().expect("out") = again.display().to_string();
    run_ok(&args2);
    let k: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.with_extension("json")).expect("json"))
            .expect("valid json");
    assert_eq!(j["points"], k["points"]);
    // A perplexity too large for the points is refused with the reason.
    let mut bad = args.clone();
    let i = bad.iter().position(|a| a == "--perplexity").expect("flag");
    bad[i + 1] = "40".into();
    *bad.last_mut().expect("out") = tmp.path().join("bad.png").display().to_string();
    let argv: Vec<&str> = bad.iter().map(String::as_str).collect();
    let o = cleanse(&argv);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("perplexity"));
}

#[test]
fn batch_runs_lines_in_order_skips_complete_ones_and_names_failures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let teacher = tmp.path().join("teacher");
    let student = tmp.path().join("student");
    // Both lines set the same thread count: the pool is per process.
    let attack = attack_args(
        "badnets",
        &teacher,
        &["--poison-rate", "0.3", "--threads", "1"],
    )
    .join(" ");
    let kd = format!(
        "defend kd --model {} --epochs 1 --batch-size 16 --device cpu --threads 1 --out {}",
        teacher.display(),
        student.display()
    );
    let file = tmp.path().join("jobs.txt");
    std::fs::write(&file, format!("# two runs\n{attack}\n\n{kd}\n")).expect("write");
    let o = cleanse(&["batch", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("batch: 2 run, 0 complete already, 0 failed"),
        "{err}"
    );
    assert!(student.join("report.json").is_file());
    // A second call skips both.
    let o = cleanse(&["batch", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("batch: 0 run, 2 complete already"), "{err}");
    // A finished run is done only for the settings it ran with: other settings, or `train`
    // where it was an attack, are refused by name and the run is kept as it is.
    let report = std::fs::read(teacher.join("report.json")).expect("report");
    let other_rate = attack_args(
        "badnets",
        &teacher,
        &["--poison-rate", "0.2", "--threads", "1"],
    )
    .join(" ");
    let as_train = format!("{} --threads 1", train_args(&teacher).join(" "));
    std::fs::write(
        &file,
        format!(
            "{other_rate}
{as_train}
{kd}
"
        ),
    )
    .expect("write");
    let o = cleanse(&["batch", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("lines [1, 2] failed"), "{err}");
    assert!(
        err.contains("finished run of another configuration"),
        "{err}"
    );
    assert!(err.contains("attack.poison_rate: 0.3"), "{err}");
    assert!(
        err.contains("batch: 0 run, 1 complete already, 2 failed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(teacher.join("report.json")).expect("report"),
        report
    );
    // The command alone says the same: nothing to do (a success), or the other settings.
    let argv: Vec<String> = kd.split(' ').map(str::to_string).collect();
    let o = cleanse(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("complete already"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A failing line is named, the others still run, and the exit status says so.
    let missing = tmp.path().join("missing");
    let other = tmp.path().join("other");
    let bad = format!(
        "defend kd --model {} --device cpu --out {}\n{}\n",
        missing.display(),
        tmp.path().join("nothing").display(),
        train_args(&other).join(" ")
    );
    std::fs::write(&file, bad).expect("write");
    let o = cleanse(&["batch", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("batch: line 1 FAILED"), "{err}");
    assert!(err.contains("lines [1] failed"), "{err}");
    assert!(other.join("report.json").is_file(), "{err}");
    // A line that does not parse stops the batch before anything runs.
    let never = tmp.path().join("never");
    std::fs::write(
        &file,
        format!("{}\nattack nosuch --out /y\n", train_args(&never).join(" ")),
    )
    .expect("write");
    let o = cleanse(&["batch", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("jobs.txt:2:"), "{err}");
    assert!(!never.exists());
}

#[test]
fn a_protocol_runs_whole_or_in_concurrent_shards_to_the_same_table() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols/tiny.toml");
    let spec = spec.to_str().expect("utf8");
    let whole = tmp.path().join("whole");
    let o = cleanse(&[
        "protocol",
        "run",
        spec,
        "--out",
        whole.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = run_ok(&[
        "protocol".into(),
        "table".into(),
        whole.display().to_string(),
    ]);
    assert!(
        table.contains("| BadNets 10% |") && table.contains("| Mean |"),
        "{table}"
    );
    assert!(
        table.contains("FT 1 ep ACC %") && table.contains("KD 1 ep ASR %"),
        "{table}"
    );
    for f in [
        "tables/tiny.md",
        "tables/tiny.csv",
        "tables/tiny.json",
        "protocols/tiny.json",
    ] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    // Again: everything is complete already.
    let o = cleanse(&[
        "protocol",
        "run",
        spec,
        "--out",
        whole.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("0 run, 12 complete already"),
        "{err}"
    );
    // Two shards at once, in two processes: the same runs, bit for bit.
    let sharded = tmp.path().join("sharded");
    let shards: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|s| {
            Command::new(env!("CARGO_BIN_EXE_cleanse"))
                .args(["protocol", "run", spec, "--out"])
                .arg(&sharded)
                .args(["--shard", s, "--poll-seconds", "1"])
                .output()
        })
        .collect();
    for o in shards {
        let o = o.expect("shard");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("has 6 of them"));
    }
    let sharded_table = run_ok(&[
        "protocol".into(),
        "table".into(),
        sharded.display().to_string(),
    ]);
    assert!(
        sharded_table.contains("sharded/tables/tiny.md"),
        "{sharded_table}"
    );
    let md = |dir: &Path| std::fs::read_to_string(dir.join("tables/tiny.md")).expect("table");
    assert_eq!(md(&sharded), md(&whole));
    // Three runs at a time, each in a process of its own, while a second `protocol run` (one
    // after another) works on the same folder: the same table, every run done once.
    let pooled = tmp.path().join("pooled");
    let both: Vec<_> = [vec!["--jobs", "3"], vec![]]
        .into_iter()
        .map(|extra| {
            Command::new(env!("CARGO_BIN_EXE_cleanse"))
                .args(["protocol", "run", spec, "--out"])
                .arg(&pooled)
                .args(["--poll-seconds", "1"])
                .args(extra)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start")
        })
        .collect();
    let mut errs = Vec::new();
    for c in both {
        let o = c.wait_with_output().expect("protocol run");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        errs.push(err);
    }
    let err = &errs[0];
    assert!(err.contains("started (") && err.contains("logs/"), "{err}");
    let log = pooled.join("logs/badnets/t0-s0/attack.log");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.starts_with("== cleanse attack badnets"), "{log}");
    // Each of the 12 runs was run by one of the two and found complete by the other.
    let ran: usize = errs
        .iter()
        .map(|e| {
            let tail = e.lines().last().unwrap_or("");
            let n = tail.split(": ").nth(2).and_then(|t| t.split(' ').next());
            n.and_then(|n| n.parse::<usize>().ok()).expect(tail)
        })
        .sum();
    assert_eq!(ran, 12, "{errs:?}");
    assert_eq!(md(&pooled), md(&whole));
    // A missing run is missing from its cell, and counted.
    std::fs::remove_file(sharded.join("blended/t1-s0/kd/report.json")).expect("rm");
    let partial = run_ok(&[
        "protocol".into(),
        "table".into(),
        sharded.display().to_string(),
    ]);
    assert!(partial.contains("(1/2)"), "{partial}");
    // A row whose teachers have not finished is labelled from its planned command line.
    for m in ["t0-s0", "t1-s0"] {
        std::fs::remove_file(sharded.join(format!("badnets/{m}/attack/report.json"))).expect("rm");
    }
    let unfinished = run_ok(&[
        "protocol".into(),
        "table".into(),
        sharded.display().to_string(),
    ]);
    assert!(
        unfinished
            .lines()
            .any(|l| l.starts_with("| BadNets 10% | - | - |")),
        "{unfinished}"
    );
    // A run that fails is reported and the others go on; the table shows its cells as missing.
    // (A folder of triggered images that is not there passes the plan's checks and fails when
    // the run reads it.)
    let failing = tmp.path().join("failing.toml");
    let text = std::fs::read_to_string(spec).expect("spec");
    let broken = text.replacen(
        "method = \"ft\"\nflags = { epochs = 1, batch-size = 8 }",
        "method = \"ft\"\nflags = { epochs = 1, batch-size = 8, triggered-data = \"/nonexistent-triggered\" }",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(&failing, broken).expect("write");
    let out = tmp.path().join("failing");
    let o = cleanse(&[
        "protocol",
        "run",
        failing.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("badnets/t0-s0/ft FAILED") && err.contains("4 failed"),
        "{err}"
    );
    // The same with two runs at a time: the failure and the end of its log are printed.
    let pooled_out = tmp.path().join("failing-pooled");
    let o = cleanse(&[
        "protocol",
        "run",
        failing.to_str().expect("utf8"),
        "--out",
        pooled_out.to_str().expect("utf8"),
        "--jobs",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("badnets/t0-s0/ft FAILED (exit status: 1")
            && err.contains("    error: ")
            && err.contains("4 failed"),
        "{err}"
    );
    assert!(pooled_out.join("blended/t1-s0/kd/report.json").is_file());
    assert!(
        out.join("blended/t1-s0/kd/report.json").is_file(),
        "the others ran"
    );
    let t = run_ok(&["protocol".into(), "table".into(), out.display().to_string()]);
    assert!(
        t.lines()
            .any(|l| l.starts_with("| BadNets 10% |") && l.contains("| - | - |")),
        "{t}"
    );
    // No FT run finished: the column still has the label its flags give.
    assert!(t.contains("| FT 1 ep ACC % | FT 1 ep ASR % |"), "{t}");
    // Mistakes in a spec name the file, the line and the key before anything runs.
    let bad = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(spec).expect("spec");
    for (from, to, needle) in [
        ("method = \"kd\"", "method = \"kdd\"", "bad.toml:21:"),
        (
            "epochs = 1, batch-size = 8 }\n\n[[defense]]",
            "epoch = 1 }\n\n[[defense]]",
            "bad.toml:18: `epoch`",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let out = tmp.path().join("never");
        let o = cleanse(&[
            "protocol",
            "run",
            bad.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{needle}: {err}"
        );
        assert!(!out.exists(), "nothing ran");
    }
}

#[test]
fn a_protocol_draws_t_sne_maps_and_redraws_one_stopped_halfway() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = tmp.path().join("maps.toml");
    std::fs::write(
        &spec,
        r#"
[protocol]
dataset = "synthetic"
flags = { device = "cpu", threads = 1 }
[[attack]]
kind = "badnets"
flags = { synthetic-train = 96, synthetic-test = 64, width = 4, epochs = 1, batch-size = 16 }
tsne = true
"#,
    )
    .expect("spec");
    let out = tmp.path().join("out");
    let run = || {
        cleanse(&[
            "protocol",
            "run",
            spec.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ])
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = out.join("badnets/t0-s0/attack-tsne.png");
    let json = png.with_extension("json");
    assert!(png.is_file() && json.is_file());
    // Stopped after the picture, before its JSON: the next run draws it again.
    std::fs::remove_file(&json).expect("rm");
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("--force"), "{err}");
    assert!(json.is_file());
}

#[test]
fn bench_reports_each_warm_up_step_and_refuses_bad_sizes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("bench.json");
    let o = cleanse(&[
        "bench",
        "--width",
        "4",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "3",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let warm = r["warmup_step_seconds"].as_array().expect("warm-up times");
    assert_eq!(warm.len(), 3);
    assert!(warm.iter().all(|s| s.as_f64().unwrap() > 0.0));
    assert_eq!(r["first_step_seconds"], warm[0]);
    assert!(r["train_images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["inference_images_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(r["device"]["backend"], "flex");
    // An existing --json is kept unless --force; a zero batch is refused before any work.
    let again = cleanse(
        &["bench", "--width", "4", "--batch-size", "2", "--steps", "1"]
            .into_iter()
            .chain(["--device", "cpu", "--json", json.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(!again.status.success());
    let zero = cleanse(&["bench", "--batch-size", "0", "--device", "cpu"]);
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--batch-size"));
}
