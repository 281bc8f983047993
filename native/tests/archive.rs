//! The results archive (`cleanse protocol run --archive`, `protocol table` on an archive,
//! `protocol archive`) end to end on a tiny synthetic protocol: a round trip through the archive
//! alone, a defense added later on a restored teacher, damaged and hostile archives, and a run
//! killed while it archives.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn cleanse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(args)
        .output()
        .expect("run cleanse")
}

fn ok(args: &[&str]) -> Output {
    let o = cleanse(args);
    assert!(
        o.status.success(),
        "cleanse {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

const HEADER: &str = r#"
[protocol]
dataset = "synthetic"
models = [{ target = 0, seed = 0 }]
flags = { device = "cpu", threads = 1 }

[[attack]]
kind = "badnets"
flags = { synthetic-train = 96, synthetic-test = 32, width = 4, epochs = 2, batch-size = 16, holdout = 0.25 }

[[attack]]
kind = "wanet"
flags = { synthetic-train = 96, synthetic-test = 32, width = 4, epochs = 2, batch-size = 16, holdout = 0.25 }
"#;

fn defense(method: &str, flags: &str) -> String {
    format!("\n[[defense]]\nmethod = \"{method}\"\nflags = {{ {flags} }}\n")
}

/// A spec named `arch.toml` (the archive's tables are named after it) in `dir`, with `defenses`.
fn spec(dir: &Path, defenses: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut text = HEADER.to_string();
    for (m, f) in defenses {
        text.push_str(&defense(m, f));
    }
    let path = dir.join("arch.toml");
    std::fs::write(&path, text).expect("spec");
    path
}

const FT: (&str, &str) = ("ft", "epochs = 1, batch-size = 8");
const KD: (&str, &str) = ("kd", "epochs = 1, batch-size = 8");
const NAD: (&str, &str) = ("nad", "epochs = 1, teacher-epochs = 1, batch-size = 8");

fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report");
    serde_json::from_str(&text).expect("json")
}

/// The epochs' losses and the final metrics of a run: equal for two runs that trained the same.
fn outcome(dir: &Path) -> (Vec<f64>, serde_json::Value) {
    let r = report(dir);
    let losses = r["epochs"]
        .as_array()
        .expect("epochs")
        .iter()
        .map(|e| e["loss"].as_f64().expect("loss"))
        .collect();
    (losses, r["final"].clone())
}

fn table(dir: &Path) -> String {
    let o = ok(&["protocol", "table", s(dir)]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    // The first line names the folder the table was written to.
    text.lines().skip(1).collect::<Vec<_>>().join("\n")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).expect("copy");
        }
    }
}

#[test]
fn runs_carry_through_the_archive_and_a_new_defense_runs_on_a_restored_teacher() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec1 = spec(&tmp.path().join("s1"), &[FT, KD]);
    let (first, archive) = (tmp.path().join("first"), tmp.path().join("results/arch"));
    let o = ok(&[
        "protocol",
        "run",
        s(&spec1),
        "--out",
        s(&first),
        "--archive",
        s(&archive),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("6 run, 0 complete already"), "{err}");
    assert!(err.contains("badnets/t0-s0/kd: archived into"), "{err}");
    let made = table(&first);
    assert!(
        made.contains("| BadNets 10% |") && made.contains("| Mean |"),
        "{made}"
    );

    // A teacher keeps its weights (as the export format) and trigger; a defense only its report.
    let teacher = archive.join("wanet/t0-s0/attack");
    for f in [
        "manifest.json",
        "model.safetensors",
        "attack.json",
        "warp_grid.f32",
        "report.json",
        "split.json",
        "model.json",
        "checkpoint/started.json",
    ] {
        assert!(teacher.join(f).is_file(), "{f}");
    }
    assert!(!teacher.join("model.bpk").exists());
    let kd = archive.join("badnets/t0-s0/kd");
    assert!(kd.join("report.json").is_file());
    assert!(!kd.join("model.bpk").exists() && !kd.join("model.safetensors").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kd.join("manifest.json")).expect("m"))
            .expect("json");
    assert_eq!(manifest["run"], "badnets/t0-s0/kd");
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["out"], s(&first));
    assert!(
        manifest["arithmetic"][0]
            .as_str()
            .expect("kind")
            .starts_with("cpu ")
    );
    assert!(manifest["commit"].as_str().expect("commit").len() >= 7);
    assert!(manifest["wall_seconds"].as_f64().expect("wall") > 0.0);
    assert_eq!(
        manifest["files"]["report.json"]
            .as_str()
            .expect("hash")
            .len(),
        64
    );
    let words: Vec<&str> = manifest["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|w| w.as_str().expect("word"))
        .collect();
    assert_eq!(&words[..2], ["defend", "kd"]);

    // The table from the archive alone (no weights read), with each run's provenance.
    assert_eq!(table(&archive), made);
    let o = ok(&["protocol", "table", s(&archive), "--provenance"]);
    let prov = String::from_utf8_lossy(&o.stdout);
    assert!(
        prov.contains("| badnets/t0-s0/ft | archived | cpu "),
        "{prov}"
    );

    // `summarize` finds every report of the archive (three levels down).
    let o = ok(&["summarize", s(&archive)]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains("badnets/t0-s0/kd") && listed.contains("wanet/t0-s0/ft"),
        "{listed}"
    );
    // Another output folder, from the archive: nothing runs, the same table.
    let second = tmp.path().join("second");
    let o = ok(&[
        "protocol",
        "run",
        s(&spec1),
        "--out",
        s(&second),
        "--archive",
        s(&archive),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("restored from") && err.contains("6 complete runs"),
        "{err}"
    );
    assert!(err.contains("0 run, 6 complete already"), "{err}");
    assert_eq!(table(&second), made);

    // The dry run says what the archive holds and what remains.
    let spec2 = spec(&tmp.path().join("s2"), &[FT, KD, NAD]);
    let third = tmp.path().join("third");
    let o = ok(&[
        "protocol",
        "run",
        s(&spec2),
        "--out",
        s(&third),
        "--archive",
        s(&archive),
        "--dry-run",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("# badnets/t0-s0/kd: archived: restored, not run"),
        "{out}"
    );
    assert!(out.contains("# badnets/t0-s0/nad: to run"), "{out}");
    assert!(
        out.contains("6 of 8 runs archived complete; 2 remain"),
        "{out}"
    );
    assert!(!third.exists(), "a dry run writes nothing");
    // Only one column (with the teachers it needs).
    let o = ok(&[
        "protocol",
        "run",
        s(&spec2),
        "--out",
        s(&third),
        "--archive",
        s(&archive),
        "--defenses",
        "nad",
        "--dry-run",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("# wanet/t0-s0/attack: archived") && out.contains("/nad: to run"));
    assert!(!out.contains("/kd") && !out.contains("/ft"), "{out}");
    assert!(
        out.contains("2 of 4 runs archived complete; 2 remain"),
        "{out}"
    );
    let o = cleanse(&[
        "protocol",
        "run",
        s(&spec2),
        "--out",
        s(&third),
        "--defenses",
        "x",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("`x` is not a column"),
        "{err}"
    );

    // One more defense: only it runs, on the restored teachers, exactly as on the originals.
    let o = ok(&[
        "protocol",
        "run",
        s(&spec2),
        "--out",
        s(&third),
        "--archive",
        s(&archive),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 run, 6 complete already"), "{err}");
    for attack in ["badnets", "wanet"] {
        let nad = third.join(attack).join("t0-s0/nad");
        let direct = tmp.path().join(format!("direct-{attack}"));
        let teacher = first.join(attack).join("t0-s0/attack");
        ok(&[
            "defend",
            "nad",
            "--model",
            s(&teacher),
            "--epochs",
            "1",
            "--teacher-epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            s(&direct),
        ]);
        assert_eq!(outcome(&nad), outcome(&direct), "{attack}");
        assert!(
            archive
                .join(attack)
                .join("t0-s0/nad/manifest.json")
                .is_file()
        );
    }
    let grown = table(&archive);
    assert!(grown.contains("NAD 1 ep"), "{grown}");

    // The spec edited (FT for two epochs): the finished FT runs are kept and refused by name,
    // in this process and with a pool of processes; the runs of unchanged settings are done.
    let edited = spec(
        &tmp.path().join("s1"),
        &[("ft", "epochs = 2, batch-size = 8"), KD],
    );
    assert_eq!(edited, spec1);
    let before = report(&first.join("badnets/t0-s0/ft"));
    for jobs in ["1", "2"] {
        let o = cleanse(&[
            "protocol",
            "run",
            s(&spec1),
            "--out",
            s(&first),
            "--jobs",
            jobs,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--jobs {jobs}: {err}");
        assert!(err.contains("badnets/t0-s0/ft FAILED"), "{err}");
        assert!(err.contains("epochs: 1 -> 2"), "{err}");
        assert!(err.contains("0 run, 4 complete already, 2 failed"), "{err}");
    }
    assert_eq!(report(&first.join("badnets/t0-s0/ft")), before);
    // Nor are they archived as runs of the edited settings.
    let other = tmp.path().join("results/other");
    let o = cleanse(&[
        "protocol",
        "archive",
        s(&spec1),
        "--out",
        s(&first),
        "--archive",
        s(&other),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("badnets/t0-s0/ft: not archived") && err.contains("epochs: 1 -> 2"),
        "{err}"
    );
    assert!(other.join("badnets/t0-s0/kd/manifest.json").is_file());
    assert!(!other.join("badnets/t0-s0/ft").exists());
}

/// A byte changed, a file missing, a manifest naming a path outside its entry, a symbolic link
/// inside an entry: each is refused with an error naming the file, by `protocol table` and by `protocol run --archive`.
#[test]
fn a_damaged_or_hostile_archive_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec1 = spec(&tmp.path().join("s"), &[FT]);
    let archive = tmp.path().join("good");
    ok(&[
        "protocol",
        "run",
        s(&spec1),
        "--out",
        s(&tmp.path().join("runs")),
        "--archive",
        s(&archive),
    ]);
    let damaged = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
        let a = tmp.path().join(name);
        copy_tree(&archive, &a);
        edit(&a);
        a
    };
    let refused = |a: &Path, name: &str, needles: &[&str]| {
        let o = cleanse(&["protocol", "table", s(a)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "table of {}", a.display());
        for n in needles {
            assert!(err.contains(n), "{n}: {err}");
        }
        let out = tmp.path().join(format!("out-{name}"));
        let o = cleanse(&[
            "protocol",
            "run",
            s(&spec1),
            "--out",
            s(&out),
            "--archive",
            s(a),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "run with {}", a.display());
        for n in needles {
            assert!(err.contains(n), "{n}: {err}");
        }
    };
    let flipped = damaged("flipped", &|a| {
        let f = a.join("badnets/t0-s0/attack/model.safetensors");
        let mut b = std::fs::read(&f).expect("read");
        let i = b.len() - 5;
        b[i] ^= 1;
        std::fs::write(&f, b).expect("write");
    });
    refused(
        &flipped,
        "flipped",
        &[
            "badnets/t0-s0/attack/model.safetensors",
            "SHA-256",
            "differs",
        ],
    );
    let missing = damaged("missing", &|a| {
        std::fs::remove_file(a.join("wanet/t0-s0/ft/report.json")).expect("rm");
    });
    refused(
        &missing,
        "missing",
        &["wanet/t0-s0/ft/report.json", "incomplete"],
    );
    let hostile = damaged("hostile", &|a| {
        let m = a.join("badnets/t0-s0/ft/manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&m).expect("read")).expect("json");
        v["files"]["../../../attack/report.json"] = "00".into();
        std::fs::write(&m, serde_json::to_string(&v).expect("json")).expect("write");
    });
    refused(
        &hostile,
        "hostile",
        &[
            "badnets/t0-s0/ft/manifest.json",
            "outside the archive entry",
        ],
    );
    // The undamaged archive still reads.
    table(&archive);
}

/// Every `.new-*` or `.old-*` folder anywhere under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".new-") || name.starts_with(".old-") {
            found.push(e.path());
        } else if e.path().is_dir() {
            found.extend(leftovers(&e.path()));
        }
    }
    found
}

/// Starts `protocol run --archive` with archiving stalled at `stage` (`CLEANSE_ARCHIVE_STALL`:
/// `publish`, before a new entry is renamed into place; `replace`, with the old entry moved
/// aside) and kills it with SIGKILL once a folder named `prefix...` appears in the archive.
fn kill_while_archiving(spec: &Path, out: &Path, archive: &Path, stage: &str, prefix: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(["protocol", "run"])
        .arg(spec)
        .arg("--out")
        .arg(out)
        .arg("--archive")
        .arg(archive)
        .env("CLEANSE_ARCHIVE_STALL", stage)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let t0 = Instant::now();
    loop {
        if leftovers(archive).iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        }) {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before it archived"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no {prefix} folder appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

#[test]
fn a_run_killed_while_it_archives_leaves_a_valid_archive() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec1 = spec(&tmp.path().join("s1"), &[FT]);
    let (out, archive) = (tmp.path().join("runs"), tmp.path().join("arch"));
    // Killed while its first entry is being written: the archive reads, without it.
    kill_while_archiving(&spec1, &out, &archive, "publish", ".new-");
    let before = table(&archive);
    assert!(leftovers(&archive).is_empty(), "{:?}", leftovers(&archive));
    assert!(before.contains("| BadNets 10% | - |"), "{before}");
    // Continued: every run archived.
    ok(&[
        "protocol",
        "run",
        s(&spec1),
        "--out",
        s(&out),
        "--archive",
        s(&archive),
    ]);
    let whole = table(&archive);
    assert!(!whole.contains(" - |"), "{whole}");
    // Killed while an entry is being replaced (the FT column's command changed): the old entry
    // comes back.
    let spec2 = spec(
        &tmp.path().join("s2"),
        &[("ft", "epochs = 2, batch-size = 8")],
    );
    let other = tmp.path().join("other");
    kill_while_archiving(&spec2, &other, &archive, "replace", ".old-");
    assert_eq!(table(&archive), whole);
    assert!(leftovers(&archive).is_empty(), "{:?}", leftovers(&archive));
}

/// A run stopped part of the way (a machine's session ends) is archived with its checkpoint
/// (`protocol archive --unfinished`), restored into a fresh output folder of the same path, and
/// resumed there to the uninterrupted run's result; its entry then holds the finished run.
#[test]
fn an_unfinished_run_archived_with_its_checkpoint_resumes_elsewhere_to_the_same_result() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("s");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let spec1 = dir.join("arch.toml");
    std::fs::write(
        &spec1,
        r#"
[protocol]
dataset = "synthetic"
models = [{ target = 0, seed = 0 }]
flags = { device = "cpu", threads = 1 }

[[attack]]
kind = "badnets"
flags = { synthetic-train = 600, synthetic-test = 64, width = 8, epochs = 6, batch-size = 16, holdout = 0.25 }
"#,
    )
    .expect("spec");
    // The uninterrupted run.
    let whole = tmp.path().join("whole");
    ok(&[
        "protocol",
        "run",
        s(&spec1),
        "--out",
        s(&whole),
        "--archive",
        s(&tmp.path().join("whole-archive")),
    ]);
    // Stopped after an epoch or more, archived unfinished.
    let (out, archive) = (tmp.path().join("runs"), tmp.path().join("arch"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(["protocol", "run"])
        .arg(&spec1)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let state = out.join("badnets/t0-s0/attack/checkpoint/state.json");
    let t0 = Instant::now();
    while !state.is_file() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished too soon"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let o = ok(&[
        "protocol",
        "archive",
        s(&spec1),
        "--out",
        s(&out),
        "--archive",
        s(&archive),
        "--unfinished",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 runs written"), "{err}");
    let entry = archive.join("badnets/t0-s0/attack");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("manifest.json")).expect("m"))
            .expect("json");
    assert_eq!(manifest["status"], "in_progress");
    let done = manifest["epochs_done"].as_u64().expect("epochs");
    assert!((1..6).contains(&done), "{done}");
    let files: Vec<&String> = manifest["files"]
        .as_object()
        .expect("files")
        .keys()
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("checkpoint/model-e")),
        "{files:?}"
    );
    assert!(
        files.contains(&&"checkpoint/state.json".to_string()),
        "{files:?}"
    );
    // An earlier sitting's time, as a run archived by the process that ran it records it.
    let mut m = manifest.clone();
    m["wall_seconds"] = serde_json::json!(1000.0);
    std::fs::write(
        entry.join("manifest.json"),
        serde_json::to_string_pretty(&m).expect("json"),
    )
    .expect("write");
    // Without --unfinished the unfinished run is not written; the table shows its cell missing.
    assert!(table(&archive).contains("| BadNets 10% | - |"));
    // The next machine: the output folder is gone; the run is restored and resumes.
    std::fs::remove_dir_all(&out).expect("rm");
    let o = ok(&[
        "protocol",
        "run",
        s(&spec1),
        "--out",
        s(&out),
        "--archive",
        s(&archive),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("restored unfinished from the archive"),
        "{err}"
    );
    assert!(err.contains("1 run, 0 complete already"), "{err}");
    let teacher = |d: &Path| d.join("badnets/t0-s0/attack");
    assert_eq!(outcome(&teacher(&out)), outcome(&teacher(&whole)));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("manifest.json")).expect("m"))
            .expect("json");
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["epochs_done"], 6);
    // The resumed run's time adds to the earlier sitting's.
    let wall = manifest["wall_seconds"].as_f64().expect("wall");
    assert!(wall > 1000.0 && wall < 2000.0, "{wall}");
    assert!(entry.join("model.safetensors").is_file());
    assert!(
        !entry.join("checkpoint/state.json").exists(),
        "the checkpoint is replaced"
    );
    // Restored into another output folder, an unfinished run would not resume (its checkpoint
    // records its paths); a complete one is restored anywhere.
    assert_eq!(table(&archive), table(&whole));
}
