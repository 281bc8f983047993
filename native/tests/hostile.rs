//! Bad settings and foreign files, tried as a hostile user would: each is refused before any
//! work with one short message naming the flag or file and what was expected, never a panic, and
//! nothing is created or overwritten.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cleanse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(args)
        .output()
        .expect("run cleanse")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A refusal: a failed exit, no panic or backtrace, one short error naming all of `needles`.
fn assert_refused(o: &Output, needles: &[&str], what: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "{what}: accepted\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: panicked\n{err}"
    );
    // The last `error:` line: a GPU driver may print lines of its own first (Wayland's
    // "error: XDG_RUNTIME_DIR is invalid or not set" where that variable is unset).
    let line = err
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no `error:` line\n{err}"));
    assert!(
        line.len() < 400,
        "{what}: {} characters of error\n{line}",
        line.len()
    );
    // An adapter without `shader-f16` (lavapipe on some machines) refuses `--precision f16` at
    // the device, before the method's own refusal: the flag and the value are named either way.
    let needles = match line.contains("offers no `shader-f16`") {
        true => &["precision", "f16", "no f16 arithmetic"][..],
        false => needles,
    };
    for n in needles {
        assert!(line.contains(n), "{what}: `{n}` not in\n{line}");
    }
    line.to_string()
}

/// `command` on tiny synthetic data; `extra` flags replace the defaults of the same name.
fn tiny(command: &[&str], out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let defaults = [
        ("--dataset", "synthetic"),
        ("--synthetic-train", "64"),
        ("--synthetic-test", "32"),
        ("--width", "4"),
        ("--epochs", "1"),
        ("--batch-size", "16"),
        ("--device", "cpu"),
        ("--threads", "1"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push("--out".into());
    v.push(out.display().to_string());
    v
}

fn run(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cleanse(&args)
}

#[test]
fn bad_training_and_attack_settings_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        (&["train"], &["--width", "100000"], &["width", "1..=512"]),
        (&["train"], &["--width", "0"], &["width", "1..=512"]),
        (
            &["train"],
            &["--synthetic-train", "0"],
            &["synthetic-train"],
        ),
        (
            &["train"],
            &["--batch-size", "1"],
            &["batch-size", "at least 2"],
        ),
        (&["train"], &["--synthetic-test", "0"], &["synthetic-test"]),
        (
            &["train"],
            &["--holdout", "0.999"],
            &["holdout", "at least 2"],
        ),
        (&["train"], &["--crop-padding", "100000"], &["crop-padding"]),
        (&["train"], &["--weight-decay=-1"], &["weight-decay"]),
        (&["train"], &["--momentum", "nan"], &["momentum"]),
        (&["train"], &["--gamma=-1"], &["gamma"]),
        (&["train"], &["--milestones", "3,1"], &["milestones"]),
        (&["train"], &["--lr", "nan"], &["lr"]),
        (&["train"], &["--threads", "100000"], &["--threads"]),
        (
            &["train"],
            &["--precision", "f16"],
            &["precision", "CPU backend computes in f32"],
        ),
        (
            &["attack", "iab"],
            &["--device", "wgpu", "--precision", "f16"],
            &["precision", "f16", "bf16"],
        ),
        (
            &["attack", "sig"],
            &["--sig-delta=-20"],
            &["sig-delta", "1/255"],
        ),
        (&["attack", "lc"], &["--lc-eps=-8"], &["lc-eps"]),
        (&["attack", "lc"], &["--lc-steps", "0"], &["lc-steps"]),
        (
            &["attack", "iab"],
            &["--iab-width", "0"],
            &["iab-width", "1..=512"],
        ),
        (&["attack", "wanet"], &["--wanet-s", "nan"], &["wanet-s"]),
        (
            &["attack", "wanet"],
            &["--wanet-k", "40"],
            &["wanet-k", "32x32"],
        ),
        (
            &["attack", "blended"],
            &["--blend-alpha", "nan"],
            &["blend-alpha"],
        ),
        (
            &["attack", "blended"],
            &["--blend-alpha", "0"],
            &["blend-alpha", "(0, 1]"],
        ),
        (
            &["attack", "badnets"],
            &["--width", "100000"],
            &["width", "1..=512"],
        ),
    ];
    for (i, (command, extra, needles)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let what = format!("{command:?} {extra:?}");
        let o = run(&tiny(command, &out, extra));
        assert_refused(&o, needles, &what);
        assert!(!out.exists(), "{what}: left {}", out.display());
    }
}

/// A tiny trained run to evaluate.
fn trained(root: &Path) -> PathBuf {
    let out = root.join("run");
    let o = run(&tiny(&["train"], &out, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn eval(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--device".into(),
        "cpu".into(),
        "--threads".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args)
}

#[test]
fn eval_never_overwrites_run_files_nor_existing_files_without_force() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run_dir = trained(tmp.path());
    let report = run_dir.join("report.json");
    let before = std::fs::read(&report).expect("report");
    for target in [
        report.clone(),
        run_dir.join("model.json"),
        run_dir.join("checkpoint").join("eval.json"),
    ] {
        let t = target.display().to_string();
        let o = eval(&run_dir, &["--out", &t, "--force"]);
        assert_refused(&o, &["refusing", "run directory"], &t);
    }
    assert_eq!(std::fs::read(&report).expect("report"), before);

    let existing = tmp.path().join("result.json");
    std::fs::write(&existing, b"mine").expect("write");
    let e = existing.display().to_string();
    let o = eval(&run_dir, &["--out", &e]);
    assert_refused(&o, &["exists", "--force"], "existing --out");
    assert_eq!(std::fs::read(&existing).expect("read"), b"mine");
    let o = eval(&run_dir, &["--out", &e, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&existing).expect("read")).expect("json");
    assert!(v["clean_acc"].is_number(), "{v}");
    // Beside the run's own files, a new name is fine.
    let beside = run_dir.join("eval.json").display().to_string();
    let o = eval(&run_dir, &["--out", &beside]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in ["model.json", "model.bpk", "split.json", "report.json"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

fn set_width(dir: &Path, width: u64) {
    let p = dir.join("model.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
    v["width"] = width.into();
    std::fs::write(&p, serde_json::to_vec(&v).expect("json")).expect("write");
}

#[test]
fn foreign_model_files_give_one_readable_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run_dir = trained(tmp.path());

    let wide = tmp.path().join("wide");
    copy_run(&run_dir, &wide);
    set_width(&wide, 8);
    let line = assert_refused(
        &eval(&wide, &[]),
        &[
            "model.bpk",
            "stem_conv.weight",
            "[8, 3, 3, 3]",
            "[4, 3, 3, 3]",
        ],
        "width 8 in model.json, width-4 weights",
    );
    assert!(
        line.contains("more"),
        "the other mismatches are counted: {line}"
    );

    let huge = tmp.path().join("huge");
    copy_run(&run_dir, &huge);
    set_width(&huge, 100_000);
    assert_refused(
        &eval(&huge, &[]),
        &["model.json", "1..=512"],
        "width 100000 in model.json",
    );

    let missing = tmp.path().join("no-such-run");
    assert_refused(
        &eval(&missing, &[]),
        &["no-such-run", "model.json: missing"],
        "missing model dir",
    );

    // An OS error is printed once, not once more as its own "cause".
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let under_file = file.join("run");
    let line = assert_refused(
        &run(&tiny(&["train"], &under_file, &[])),
        &["a-file", "Not a directory"],
        "--out under a file",
    );
    assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
}

#[test]
fn bad_defense_settings_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = trained(tmp.path());
    let m = model.display().to_string();
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("kd", &["--lr", "nan"], &["lr"]),
        ("kd", &["--ratios", "2,0,0,0,0,0"], &["ratios", "[0, 1]"]),
        ("kd", &["--temperature", "4,nan"], &["temperature"]),
        ("kd", &["--weight-decay=-1"], &["weight-decay"]),
        ("kd", &["--crop-padding", "100000"], &["crop-padding"]),
        ("ft", &["--lr=-1"], &["lr"]),
        ("ft", &["--crop-padding", "5000"], &["crop-padding"]),
        (
            "kd",
            &["--precision", "bf16"],
            &["precision", "CPU backend"],
        ),
        (
            "anp",
            &["--device", "wgpu", "--precision", "f16"],
            &["precision", "ANP computes in f32"],
        ),
        (
            "ibau",
            &["--device", "wgpu", "--precision", "f16"],
            &["precision", "I-BAU computes in f32"],
        ),
    ];
    for (i, (method, extra, needles)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("defended{i}"));
        let mut args: Vec<String> = ["defend", method, "--model", &m]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !extra.contains(&"--device") {
            args.extend(["--device".to_string(), "cpu".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--out".to_string(), out.display().to_string()]);
        let what = format!("defend {method} {extra:?}");
        assert_refused(&run(&args), needles, &what);
        assert!(!out.exists(), "{what}: left {}", out.display());
    }
}

/// `protocol` given hostile folders, damaged reports and careless flags: dry-run lines a shell
/// reads back as the same words, a damaged or impossible report named instead of counted as
/// unfinished, a second spec of the same name refused instead of replacing the first's table,
/// a zero poll interval refused.
#[test]
fn protocol_commands_quote_name_and_refuse() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols/tiny.toml");
    let spec = spec.to_str().expect("utf8");
    let odd = tmp.path().join("out $(touch PWNED) 'q'");
    let o = cleanse(&[
        "protocol",
        "run",
        spec,
        "--out",
        odd.to_str().expect("utf8"),
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = String::from_utf8_lossy(&o.stdout).into_owned();
    let first = lines.lines().next().expect("a line");
    // The shell reads the printed line back as the planned words (echoing, not running them).
    let echoed = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "printf '%s\\n' {}",
            first.trim_start_matches("cleanse ")
        ))
        .current_dir(tmp.path())
        .output()
        .expect("bash");
    let words: Vec<String> = String::from_utf8_lossy(&echoed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let out_at = words.iter().position(|w| w == "--out").expect("--out");
    assert_eq!(
        words[out_at + 1],
        odd.join("badnets/t0-s0/attack").display().to_string(),
        "{first}"
    );
    assert!(!tmp.path().join("PWNED").exists());

    let o = cleanse(&["protocol", "run", spec, "--out", "x", "--poll-seconds", "0"]);
    assert_refused(&o, &["--poll-seconds"], "poll 0");
    // Settings a run would refuse are refused when the plan is checked, before anything runs:
    // a target the data set does not have, a negative learning rate (read as a value, not a flag).
    let text = std::fs::read_to_string(spec).expect("spec");
    for (from, to, needles) in [
        (
            "target = 1,",
            "target = 99,",
            ["bad.toml:", "--target: class 99"],
        ),
        (
            "epochs = 1, batch-size = 8 }",
            "epochs = 1, lr = -1 }",
            ["bad.toml:", "--lr"],
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let o = cleanse(&[
            "protocol",
            "run",
            bad.to_str().expect("utf8"),
            "--out",
            tmp.path().join("never").to_str().expect("utf8"),
            "--dry-run",
        ]);
        assert_refused(&o, &needles, to);
        assert!(!tmp.path().join("never").exists());
    }

    let out = tmp.path().join("runs");
    let o = cleanse(&[
        "protocol",
        "run",
        spec,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A second spec named tiny.toml into the same folder.
    let other = tmp.path().join("tiny.toml");
    std::fs::copy(spec, &other).expect("copy");
    let o = cleanse(&[
        "protocol",
        "run",
        other.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_refused(
        &o,
        &["of the same name already ran into this folder"],
        "same name",
    );
    // An impossible metric, then a truncated report: named, not counted as unfinished.
    let report = out.join("badnets/t0-s0/ft/report.json");
    let text = std::fs::read_to_string(&report).expect("report");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["final"]["clean_acc"] = 7.5.into();
    std::fs::write(&report, serde_json::to_string(&v).expect("json")).expect("write");
    let table = |_: ()| cleanse(&["protocol", "table", out.to_str().expect("utf8")]);
    assert_refused(
        &table(()),
        &["badnets/t0-s0/ft/report.json", "clean_acc is 7.5"],
        "7.5",
    );
    std::fs::write(&report, &text[..text.len() / 2]).expect("truncate");
    assert_refused(&table(()), &["badnets/t0-s0/ft/report.json"], "truncated");
}

/// Standard output and error closed by their reader (`cleanse train ... 2>&1 | head -1`): the run
/// goes on to its end, as complete as with a reader, instead of panicking.
#[test]
fn a_closed_pipe_does_not_stop_a_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let args = tiny(&["train"], &out, &["--epochs", "3"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    // The reader goes away at once.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let report = std::fs::read_to_string(out.join("report.json")).expect("report");
    assert!(report.contains("\"status\": \"complete\""), "{report}");
}

/// A class GTSRB lacks is one error about the class, with no remark about frequent classes
/// before it.
#[test]
fn a_gtsrb_target_it_lacks_is_the_one_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("gtsrb");
    std::fs::create_dir_all(&data).expect("mkdir");
    // Record files: one 32x32 image of every class in each split.
    let records: Vec<u8> = (0..43u8)
        .flat_map(|c| std::iter::once(c).chain(std::iter::repeat_n(c * 5, 3072)))
        .collect();
    std::fs::write(data.join("train.bin"), &records).expect("train");
    std::fs::write(data.join("test.bin"), &records).expect("test");
    let out = tmp.path().join("run");
    let data = data.display().to_string();
    let o = run(&tiny(
        &["attack", "badnets"],
        &out,
        &["--dataset", "gtsrb", "--data", &data, "--target", "43"],
    ));
    let err = assert_refused(&o, &["target", "class 43 does not exist", "0..42"], "43");
    let all = stderr(&o);
    assert!(!all.contains("warning"), "{all}");
    assert!(!out.exists(), "{err}");
}

/// A run that needs more memory than the process can get is refused with the setting to lower,
/// before it trains, instead of aborting on an allocation (a batch far beyond the machine; an
/// address-space limit too small for a normal run).
#[test]
fn a_run_beyond_the_memory_it_can_get_is_refused_not_aborted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("huge");
    // Batches of 20,000 images at width 512: a terabyte of activations.
    let o = run(&tiny(
        &["train"],
        &out,
        &[
            "--synthetic-train",
            "20000",
            "--batch-size",
            "20000",
            "--width",
            "512",
        ],
    ));
    assert_refused(
        &o,
        &[
            "memory",
            "a training batch of",
            "lower --batch-size or --width",
        ],
        "huge",
    );
    assert!(!out.exists());
    // Width 16, batch 128 needs about 200 MB beyond the program (which maps about 150 MB of
    // address space): under `ulimit -v` 250 MB it is refused by name, not aborted.
    let out = tmp.path().join("limited");
    let args = tiny(
        &["train"],
        &out,
        &[
            "--synthetic-train",
            "256",
            "--width",
            "16",
            "--batch-size",
            "128",
        ],
    );
    let line = format!(
        "ulimit -v 250000 && exec {} {}",
        env!("CARGO_BIN_EXE_cleanse"),
        args.join(" ")
    );
    let o = Command::new("bash")
        .args(["-c", &line])
        .output()
        .expect("bash");
    assert_refused(&o, &["memory", "ulimit -v", "lower --batch-size"], "ulimit");
    assert!(!out.exists());
    // An image folder read at a size whose bytes the process cannot hold (300 images at
    // 1024x1024 are 900 MB): refused before decoding, naming the folder and the flag.
    let data = tmp.path().join("folder");
    for (split, n) in [("train", 150), ("val", 1)] {
        for class in ["a", "b"] {
            let dir = data.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for i in 0..n {
                image::RgbImage::from_pixel(4, 4, image::Rgb([i as u8, 7, 9]))
                    .save(dir.join(format!("{i}.png")))
                    .expect("png");
            }
        }
    }
    let out = tmp.path().join("large");
    let line = format!(
        "ulimit -v 600000 && exec {} train --dataset folder --data {} --image-size 1024 \
         --width 4 --epochs 1 --device cpu --threads 1 --out {}",
        env!("CARGO_BIN_EXE_cleanse"),
        data.display(),
        out.display()
    );
    let o = Command::new("bash")
        .args(["-c", &line])
        .output()
        .expect("bash");
    let err = assert_refused(
        &o,
        &["image-size", "300 images at 1024x1024", "ulimit -v"],
        "large",
    );
    assert!(
        err.contains(&data.join("train").display().to_string()),
        "{err}"
    );
    assert!(!out.exists());
}
