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

/// `defend ft` for one epoch (batch 16, CPU) on run `run` into `out`, with `extra` flags.
fn ft_args(run: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let (run, out) = (run.display().to_string(), out.display().to_string());
    ["defend", "ft", "--model", &run]
        .into_iter()
        .chain(extra.iter().copied())
        .chain([
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--out",
            &out,
        ])
        .map(str::to_string)
        .collect()
}

fn words(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// One epoch of FT on run `run` into `out`: a defense accepts it like any run, and its report
/// measures an ASR.
fn defend_ft(run: &Path, out: &Path) {
    ok(&words(&ft_args(run, out, &[])));
    let report = std::fs::read_to_string(out.join("report.json")).expect("report");
    assert!(report.contains("\"asr\""), "{report}");
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
    defend_ft(&run, &ft);

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

/// The number after `key ` in a line of `cleanse eval`'s output.
fn metric(out: &str, key: &str) -> f64 {
    out.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn triggered_images_measure_what_the_trigger_does() {
    use burn::prelude::Device;
    use cleanse_core::attack::Attack;
    use cleanse_core::attack::poison::{asr_set, stamp_images};
    use cleanse_core::data::{DataSpec, DatasetKind};

    let tmp = tempfile::tempdir().expect("tmp");
    let s = |p: &Path| p.display().to_string();
    // A small BadNets model (target 2) on the default synthetic data, which import also reads.
    let attacked = tmp.path().join("attacked");
    ok(&[
        "attack",
        "badnets",
        "--dataset",
        "synthetic",
        "--width",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--poison-rate",
        "0.3",
        "--target",
        "2",
        "--crop-padding",
        "0",
        "--no-flip",
        "--holdout",
        "0.1",
        "--device",
        "cpu",
        "--out",
        &s(&attacked),
    ]);
    // Its trigger stamped on the test set's non-target images, written as PNGs into the folder
    // of the label the attack wants.
    let test = DataSpec::new(DatasetKind::Synthetic, None)
        .load()
        .expect("synthetic")
        .test;
    let attack = Attack::load(&attacked).expect("attack");
    let mut set = asr_set(&attack, &test);
    let all: Vec<usize> = (0..set.len()).collect();
    let trigger = attack.trigger.clone().expect("static trigger");
    stamp_images(&mut set, &all, &trigger, &Device::flex());
    let dir = tmp.path().join("triggered");
    let (h, w) = (set.height, set.width);
    for i in 0..set.len() {
        let px = &set.pixels[i * 3 * h * w..(i + 1) * 3 * h * w];
        let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let p = y as usize * w + x as usize;
            image::Rgb([px[p], px[h * w + p], px[2 * h * w + p]])
        });
        let class = dir.join(set.labels[i].to_string());
        std::fs::create_dir_all(&class).expect("mkdir");
        img.save(class.join(format!("{i:04}.png"))).expect("png");
    }

    let own = ok(&["eval", "--model", &s(&attacked), "--device", "cpu"]);
    // Not a constant classifier: the comparison below means something.
    let predicted = own
        .lines()
        .find(|l| l.starts_with("predicted as class"))
        .expect("predicted line");
    let used = predicted
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .count();
    assert!(used >= 2, "{own}");
    let by_trigger = metric(&own, "asr");
    let by_images = metric(
        &ok(&[
            "eval",
            "--model",
            &s(&attacked),
            "--triggered-data",
            &s(&dir),
            "--device",
            "cpu",
        ]),
        "asr",
    );
    assert_eq!(by_trigger, by_images);

    // Exported, imported with the folder: eval and a defense measure on it, and pass it on.
    let file = tmp.path().join("attacked.safetensors");
    ok(&["export", "--model", &s(&attacked), "--to", &s(&file)]);
    let run = tmp.path().join("imported");
    ok(&[
        "import",
        "--from",
        &s(&file),
        "--dataset",
        "synthetic",
        "--triggered-data",
        &s(&dir),
        "--out",
        &s(&run),
    ]);
    assert!(run.join("triggered.json").is_file() && !run.join("attack.json").exists());
    let eval = ok(&["eval", "--model", &s(&run), "--device", "cpu"]);
    assert_eq!(metric(&eval, "asr"), by_trigger);
    assert_eq!(metric(&eval, "clean_acc"), metric(&own, "clean_acc"));
    let ft = tmp.path().join("ft");
    defend_ft(&run, &ft);
    assert!(ft.join("triggered.json").is_file());
    let eval = ok(&["eval", "--model", &s(&ft), "--device", "cpu"]);
    assert!(eval.contains("asr"), "{eval}");

    // Any defense measures against a folder or a spec given on its command line, and keeps it.
    let suspect_asr = |out: &Path| -> f64 {
        let text = std::fs::read_to_string(out.join("report.json")).expect("report");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["defense"]["suspect_asr"].as_f64().expect("suspect_asr")
    };
    let by_folder = tmp.path().join("ft-folder");
    ok(&words(&ft_args(
        &attacked,
        &by_folder,
        &["--triggered-data", &s(&dir)],
    )));
    assert!(by_folder.join("triggered.json").is_file());
    assert!((suspect_asr(&by_folder) - by_trigger).abs() < 5e-5); // eval prints 4 decimals
    let by_spec = tmp.path().join("ft-spec");
    ok(&words(&ft_args(
        &run,
        &by_spec,
        &["--attack-spec", "badnets:target=2"],
    )));
    assert!(by_spec.join("attack.json").is_file() && !by_spec.join("triggered.json").exists());
    assert!((suspect_asr(&by_spec) - by_trigger).abs() < 5e-5); // eval prints 4 decimals
    // Resuming with another ASR source is refused.
    let o = cleanse(&words(&ft_args(&run, &by_spec, &["--resume"])));
    assert!(!o.status.success(), "resumed with another ASR source");

    // A folder not named by a class index is an error naming it.
    std::fs::create_dir_all(dir.join("cat")).expect("mkdir");
    let o = cleanse(&[
        "eval",
        "--model",
        &s(&run),
        "--triggered-data",
        &s(&dir),
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cat") && e.contains("class index"), "{e}");
}
