//! Golden values: tiny seeded runs of every kind of loop (clean training, one attack of each
//! kind — dirty-label stamped before and after augmentation, clean-label, LC with its own clean
//! model, WaNet, IAB — and the cleanser, plain and with its options) must end with exactly the
//! metrics and weights recorded here, bit for bit on the CPU backend.
//!
//! How the expected values were produced: this test was run on the commit that introduced it
//! (before the training loops moved onto one engine) and its printed table pasted into
//! `EXPECTED`. A change of any number means a change of behaviour; one made on purpose must
//! say why in its commit and update the table.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cleanse(args: &[String]) {
    let o = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(args)
        .output()
        .expect("run cleanse");
    assert!(
        o.status.success(),
        "cleanse {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// FNV-1a over the bits of every float parameter of the run's model, in module order.
fn weights_checksum(dir: &Path) -> u64 {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    struct Hash(u64);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            for v in p.val().into_data().iter::<f32>() {
                for b in v.to_bits().to_le_bytes() {
                    self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
    let loaded =
        cleanse_core::train::run::load_run_model(dir, &Device::flex()).expect("load model");
    let mut h = Hash(0xcbf2_9ce4_8422_2325);
    loaded.model.visit(&mut h);
    h.0
}

/// `name clean_acc asr last_loss checksum`, as the table below holds it.
fn summary(name: &str, dir: &Path) -> String {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(r["status"], "complete", "{name}");
    let last = r["epochs"].as_array().and_then(|e| e.last()).cloned();
    format!(
        "{name} {:?} {:?} {:?} {:016x}",
        r["final"]["clean_acc"].as_f64().expect("clean_acc"),
        r["final"]["asr"].as_f64(),
        last.and_then(|e| e["loss"].as_f64()),
        weights_checksum(dir)
    )
}

const DATA: &str = "--dataset synthetic --synthetic-train 240 --synthetic-test 60 --width 4 \
                    --epochs 4 --batch-size 16 --lr 0.05 --holdout 0.25 --device cpu --threads 2";

const EXPECTED: &[&str] = &[
    "train 0.5833333333333334 None Some(1.0420223553975423) fddc819eedaad67c",
    "badnets 0.5166666666666667 Some(0.3888888888888889) Some(1.5239635308583577) db17762828cf871b",
    "blended-after 0.4 Some(0.4074074074074074) Some(1.527178782886929) 2f6afe989aaac9da",
    "sig 0.45 Some(0.0) Some(1.4354515552520752) 8a18da0e9446e1e0",
    "lc 0.55 Some(0.0) Some(1.2164226770401) cf6cc79da380e9f2",
    "wanet 0.55 Some(0.14814814814814814) Some(1.3832521385616727) b958aed58e810ee1",
    "iab 0.3 Some(0.16666666666666666) Some(2.7303361733754477) 517989145bf712be",
    "kd 0.4166666666666667 Some(0.4444444444444444) Some(0.04329045088961721) de42183cccf6893a",
    "kd-options 0.35 Some(0.3888888888888889) Some(0.3663966817160447) 3668352f2f601069",
    "kd-iab 0.3 Some(0.3148148148148148) Some(0.13236930146813392) 57cc3cf53d08e6bb",
];

#[test]
fn tiny_runs_end_with_the_recorded_metrics_and_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = |n: &str| -> PathBuf { tmp.path().join(n) };
    let d = |n: &str| dir(n).display().to_string();
    let runs: Vec<(&str, String)> = vec![
        ("train", format!("train {DATA} --out {}", d("train"))),
        (
            "badnets",
            format!(
                "attack badnets {DATA} --poison-rate 0.2 --out {}",
                d("badnets")
            ),
        ),
        (
            "blended-after",
            format!(
                "attack blended {DATA} --stamping after --target 1 --out {}",
                d("blended-after")
            ),
        ),
        ("sig", format!("attack sig {DATA} --out {}", d("sig"))),
        (
            "lc",
            format!("attack lc {DATA} --lc-steps 2 --out {}", d("lc")),
        ),
        ("wanet", format!("attack wanet {DATA} --out {}", d("wanet"))),
        (
            "iab",
            format!(
                "attack iab {DATA} --iab-width 4 --iab-mask-epochs 2 --out {}",
                d("iab")
            ),
        ),
        (
            "kd",
            format!(
                "defend kd --model {} --epochs 2 --batch-size 8 --device cpu --threads 2 --out {}",
                d("badnets"),
                d("kd")
            ),
        ),
        (
            "kd-options",
            format!(
                "defend kd --model {} --epochs 2 --batch-size 8 --init single:3 --mixup \
                 --temperature 2,3 --unlabeled-limit 12 --device cpu --threads 2 --out {}",
                d("blended-after"),
                d("kd-options")
            ),
        ),
        (
            "kd-iab",
            format!(
                "defend kd --model {} --epochs 1 --batch-size 8 --ratio-scale 2 --device cpu \
                 --threads 2 --out {}",
                d("iab"),
                d("kd-iab")
            ),
        ),
    ];
    let mut got = Vec::new();
    for (name, line) in &runs {
        cleanse(&words(line));
        got.push(summary(name, &dir(name)));
    }
    let table = got.join("\n");
    eprintln!("golden values:\n{table}");
    assert_eq!(
        got,
        EXPECTED.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "golden values changed; got:\n{table}"
    );
}
