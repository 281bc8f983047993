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
    assert_eq!(report["schema_version"], 1);
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
    // A second run into the same directory fails and leaves the first run's files alone.
    let before = std::fs::read(out.join("model.bpk")).expect("model");
    let o = cleanse(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not empty") && err.contains("--resume"),
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
