//! The supplement's Table 1 protocol (`protocols/imagenet10.toml`) end to end on a generated
//! ten-class image folder at 224 pixels: the spec as shipped, with only its data path and its
//! sizes (epochs, width, batches, iterations) made tiny.

use std::path::Path;
use std::process::Command;

/// Writes `train/<class>/*.png` (13 per class) and `val/<class>/*.png` (2 per class) at 240x200
/// (not square: the reader must resize both sides to 224).
fn folder(root: &Path) {
    for class in 0..10u32 {
        for (split, n) in [("train", 13u32), ("val", 2)] {
            let dir = root.join(split).join(format!("n0{class}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for i in 0..n {
                let img = image::RgbImage::from_fn(240, 200, |x, y| {
                    let v = |k: u32| ((x * (k + class) + y * (3 + i) + 17 * k * class) % 256) as u8;
                    image::Rgb([v(1), v(2), v(5)])
                });
                img.save(dir.join(format!("{i}.png"))).expect("png");
            }
        }
    }
}

/// Adds `extra` to a run's flags.
fn tiny(table: &mut toml::Table, extra: &[(&str, toml::Value)]) {
    let flags = table
        .entry("flags")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("flags table");
    for (k, v) in extra {
        flags.insert((*k).to_string(), v.clone());
    }
}

#[test]
fn the_imagenet10_protocol_runs_every_cell_at_224_pixels() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("imagenet10");
    folder(&data);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols/imagenet10.toml");
    let mut spec: toml::Table = std::fs::read_to_string(&shipped)
        .expect("spec")
        .parse()
        .expect("toml");
    let protocol = spec["protocol"].as_table_mut().expect("[protocol]");
    protocol.insert("data".into(), data.display().to_string().into());
    protocol.insert(
        "flags".into(),
        toml::Value::Table(
            [
                ("device".to_string(), "cpu".into()),
                ("threads".to_string(), 1.into()),
            ]
            .into_iter()
            .collect(),
        ),
    );
    let int = |v: i64| toml::Value::Integer(v);
    for a in spec["attack"].as_array_mut().expect("attacks") {
        let t = a.as_table_mut().expect("attack");
        let flags = t["flags"].as_table().expect("flags");
        // The shipped spec's model, size and split stay as they are.
        assert_eq!(flags["model"].as_str(), Some("resnet18-imagenet"));
        assert_eq!(flags["image-size"].as_integer(), Some(224));
        assert_eq!(flags["holdout-per-class"].as_integer(), Some(300));
        let kind = t["kind"].as_str().expect("kind").to_string();
        let mut extra = vec![
            ("holdout-per-class", int(3)),
            ("width", int(2)),
            ("epochs", int(1)),
            ("batch-size", int(25)),
        ];
        if kind == "iab" {
            extra.extend([("iab-width", int(2)), ("iab-mask-epochs", int(1))]);
        }
        tiny(t, &extra);
    }
    for d in spec["defense"].as_array_mut().expect("defenses") {
        let t = d.as_table_mut().expect("defense");
        let method = t["method"].as_str().expect("method").to_string();
        let extra = match method.as_str() {
            "anp" => vec![("iterations", int(2)), ("batch-size", int(10))],
            "ibau" => vec![("rounds", int(1)), ("batch-size", int(10))],
            "mcr" => vec![
                ("epochs", int(1)),
                ("endpoint-epochs", int(1)),
                ("batch-size", int(10)),
            ],
            "nad" => vec![
                ("epochs", int(1)),
                ("teacher-epochs", int(1)),
                ("batch-size", int(10)),
            ],
            _ => vec![("epochs", int(1)), ("batch-size", int(10))],
        };
        tiny(t, &extra);
    }
    let spec_path = tmp.path().join("imagenet10.toml");
    std::fs::write(&spec_path, toml::to_string(&spec).expect("toml")).expect("write");
    let out = tmp.path().join("runs");
    let o = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(["protocol", "run"])
        .arg(&spec_path)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // 4 attacks and 28 defenses, all complete.
    let o = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(["protocol", "table"])
        .arg(&out)
        .output()
        .expect("table");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for row in ["BadNets", "IAB", "SIG", "WaNet"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("no {row} row in\n{table}"));
        assert!(!line.contains(" - "), "a cell missing: {line}");
    }
    // Every model is the ImageNet ResNet-18 on 224-pixel images with the paper's kind of split:
    // 3 of every class's 13 held out for the defender (the spec's 300, scaled down).
    for kind in ["badnets", "iab", "sig", "wanet"] {
        let run = out.join(kind).join("t0-s0");
        let read = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).expect("json")).expect("json")
        };
        let model = read(&run.join("attack/model.json"));
        assert_eq!(model["architecture"], "resnet18-imagenet", "{kind}");
        let split = read(&run.join("attack/split.json"));
        assert_eq!(split["data"]["image_size"], 224, "{kind}");
        assert_eq!(
            split["split"]["held_out"].as_array().expect("held").len(),
            30,
            "{kind}"
        );
        let kd = read(&run.join("kd/model.json"));
        assert_eq!(kd["architecture"], "resnet18-imagenet", "{kind}");
    }
    let attack: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("sig/t0-s0/attack/attack.json")).expect("attack"),
    )
    .expect("json");
    assert_eq!(attack["config"]["sig_frequency"], 10.0, "{attack}");
    let badnets: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("badnets/t0-s0/attack/attack.json")).expect("attack"),
    )
    .expect("json");
    let mask = badnets["trigger"]["mask"]
        .as_array()
        .expect("a patch's mask");
    assert_eq!(mask.iter().filter(|m| m.as_u64() == Some(1)).count(), 225);
}
