//! `cleanse import` / `export` end to end: a PyTorch fixture (tests/fixtures/torch) imported on
//! synthetic data with a trigger from settings, evaluated, defended, exported and read back.

use cleanse_core::interop::Values;
use cleanse_core::interop::files::{ReadOptions, read_state_dict};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cleanse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(args)
        .output()
        .expect("run cleanse")
}

fn ok(args: &[&str]) -> String {
    let o = cleanse(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{args:?}\nstdout: {out}\nstderr: {err}");
    out.into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/torch")
        .join(name)
}

#[test]
fn import_eval_defend_export() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("imported");
    let from = fixture("preact-bb-attack-result.pt");
    let s = |p: &Path| p.display().to_string();
    let out = ok(&[
        "import",
        "--from",
        &s(&from),
        "--dataset",
        "synthetic",
        "--attack-spec",
        "badnets:target=2",
        "--out",
        &s(&run),
    ]);
    assert!(
        out.contains("imported preact-resnet18 (backdoorbench names, width 2, 10 classes"),
        "{out}"
    );
    for f in [
        "model.json",
        "model.bpk",
        "split.json",
        "import.json",
        "attack.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let eval = ok(&["eval", "--model", &s(&run), "--device", "cpu"]);
    assert!(eval.contains("clean_acc") && eval.contains("asr"), "{eval}");
    let spec = ok(&[
        "eval",
        "--model",
        &s(&run),
        "--attack-spec",
        "blended:alpha=0.3",
        "--device",
        "cpu",
    ]);
    assert!(spec.contains("asr"), "{spec}");

    // The same directory again: refused, the first import untouched.
    let before = std::fs::read(run.join("model.bpk")).expect("model");
    let o = cleanse(&[
        "import",
        "--from",
        &s(&from),
        "--dataset",
        "synthetic",
        "--out",
        &s(&run),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert_eq!(std::fs::read(run.join("model.bpk")).expect("model"), before);

    // A defense accepts it like any run, and measures the saved trigger.
    let ft = tmp.path().join("ft");
    ok(&[
        "defend",
        "ft",
        "--model",
        &s(&run),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        &s(&ft),
    ]);
    let report = std::fs::read_to_string(ft.join("report.json")).expect("report");
    assert!(report.contains("\"asr\""), "{report}");

    // Export with BackdoorBench's names: the fixture's tensors, bit for bit.
    let file = tmp.path().join("out.safetensors");
    ok(&["export", "--model", &s(&run), "--to", &s(&file)]);
    let original = read_state_dict(&from, &ReadOptions::default()).expect("fixture");
    let exported = read_state_dict(&file, &ReadOptions::default()).expect("export");
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>()
    );
    for (k, v) in &original {
        if let Values::F32(_) = v.values {
            assert_eq!(exported[k], *v, "{k}");
        }
    }
    // Never over an existing file without --force, never over a run's own file.
    let o = cleanse(&["export", "--model", &s(&run), "--to", &s(&file)]);
    assert!(!o.status.success());
    let o = cleanse(&[
        "export",
        "--model",
        &s(&run),
        "--to",
        &s(&run.join("model.bpk")),
        "--force",
    ]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(run.join("model.bpk")).expect("model"), before);
    // The exported file imports again as the same model, and so does the defended one.
    let again = tmp.path().join("again");
    ok(&[
        "import",
        "--from",
        &s(&file),
        "--dataset",
        "synthetic",
        "--out",
        &s(&again),
    ]);
    let file2 = tmp.path().join("again.safetensors");
    ok(&["export", "--model", &s(&again), "--to", &s(&file2)]);
    assert_eq!(
        read_state_dict(&file2, &ReadOptions::default()).expect("again"),
        exported
    );
    let ft_file = tmp.path().join("ft.safetensors");
    ok(&[
        "export",
        "--model",
        &s(&ft),
        "--to",
        &s(&ft_file),
        "--names",
        "bcu",
    ]);
    ok(&[
        "import",
        "--from",
        &s(&ft_file),
        "--dataset",
        "synthetic",
        "--out",
        &s(&tmp.path().join("ft-again")),
    ]);
}

#[test]
fn import_errors_name_the_problem() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = |p: &Path| p.display().to_string();
    let from = fixture("resnet-bcu.safetensors");
    let err = |args: &[&str]| {
        let o = cleanse(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let out = s(&tmp.path().join("x"));
    let e = err(&[
        "import",
        "--from",
        &s(&from),
        "--dataset",
        "synthetic",
        "--arch",
        "preact-resnet18",
        "--out",
        &out,
    ]);
    assert!(
        e.contains("resnet-bcu.safetensors") && e.contains("do not name a preact-resnet18"),
        "{e}"
    );
    let e = err(&[
        "import",
        "--from",
        &s(&from),
        "--dataset",
        "synthetic",
        "--classes",
        "43",
        "--out",
        &out,
    ]);
    assert!(
        e.contains("`fc.weight` has shape [10, 16]") && e.contains("needs [43, 16]"),
        "{e}"
    );
    let e = err(&[
        "import",
        "--from",
        &s(&from),
        "--dataset",
        "synthetic",
        "--attack-spec",
        "badnets:target=12",
        "--out",
        &out,
    ]);
    assert!(e.contains("target"), "{e}");
    let e = err(&[
        "import",
        "--from",
        &s(&from),
        "--dataset",
        "synthetic",
        "--rename",
        "=x",
        "--out",
        &out,
    ]);
    assert!(e.contains("FROM=TO"), "{e}");
    let e = err(&[
        "import",
        "--from",
        &s(&tmp.path().join("missing.pt")),
        "--dataset",
        "synthetic",
        "--out",
        &out,
    ]);
    assert!(e.contains("missing.pt"), "{e}");
    assert!(
        !tmp.path().join("x").exists(),
        "a failed import leaves nothing"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
