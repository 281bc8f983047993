//! Models from PyTorch: the fixtures of `tests/fixtures/torch/make.py` (PyTorch's own logits
//! included) imported in every container and naming, export/import round trips, and broken
//! files.

use burn::prelude::*;
use cleanse_core::interop::files::{ReadOptions, read_state_dict, safetensors_bytes};
use cleanse_core::interop::{ImportOptions, Naming, Values, export, import};
use cleanse_core::model::{Architecture, Classifier, Normalization};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/torch")
        .join(name)
}

fn options() -> ImportOptions {
    ImportOptions {
        architecture: None,
        naming: None,
        width: None,
        num_classes: None,
        normalization: Normalization::cifar10(),
    }
}

/// The fixture script's inputs: `((i * 7919) mod 255) / 255` over the flat index.
fn inputs() -> Tensor<4> {
    let x: Vec<f32> = (0..2 * 3 * 32 * 32u64)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    Tensor::from_data(TensorData::new(x, [2, 3, 32, 32]), &Device::flex())
}

fn logits(model: &Classifier) -> Vec<f32> {
    model
        .forward(inputs())
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32")
}

fn torch_logits(arch: &str) -> Vec<f32> {
    let text = std::fs::read_to_string(fixture(&format!("{arch}.json"))).expect("logits json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["logits"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter())
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn every_fixture_reproduces_pytorchs_logits() {
    let cases = [
        (
            "preact-bb-attack-result.pt",
            Architecture::PreactResnet18,
            Naming::Backdoorbench,
        ),
        (
            "preact-bb-legacy.pt",
            Architecture::PreactResnet18,
            Naming::Backdoorbench,
        ),
        (
            "preact-bb.safetensors",
            Architecture::PreactResnet18,
            Naming::Backdoorbench,
        ),
        ("preact-bcu.pth", Architecture::PreactResnet18, Naming::Bcu),
        ("resnet-bcu-state.pth", Architecture::Resnet18, Naming::Bcu),
        (
            "resnet-bcu-legacy-dataparallel.pt",
            Architecture::Resnet18,
            Naming::Bcu,
        ),
        (
            "resnet-bcu.safetensors",
            Architecture::Resnet18,
            Naming::Bcu,
        ),
        (
            "resnet-bb.pt",
            Architecture::Resnet18,
            Naming::Backdoorbench,
        ),
    ];
    for (file, arch, naming) in cases {
        let path = fixture(file);
        let dict = read_state_dict(&path, &ReadOptions::default()).expect(file);
        let imported = import(&dict, &options(), &path).expect(file);
        assert_eq!(imported.config.architecture, arch, "{file}");
        assert_eq!(imported.naming, naming, "{file}");
        assert_eq!(
            (imported.config.width, imported.config.num_classes),
            (2, 10)
        );
        assert!(
            imported
                .ignored
                .iter()
                .all(|n| n.ends_with("num_batches_tracked"))
        );
        let want = torch_logits(arch.name());
        let got = logits(&imported.model);
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{file}: max |cleanse - PyTorch| = {worst}");
    }
}

/// torchvision's ResNet-18 layout (`bench/torchvision_fixture.py`: width 2, trained a few steps
/// in PyTorch, checked there key for key against torchvision's `resnet18`): detected from its
/// 7x7 stem, PyTorch's logits on 64x64 images, and exported back to the same tensors.
#[test]
fn a_torchvision_resnet18_imports_with_pytorchs_logits_and_exports_back() {
    let path = fixture("resnet18-imagenet-tv.pth");
    let dict = read_state_dict(&path, &ReadOptions::default()).expect("read");
    let opts = ImportOptions {
        normalization: Normalization::imagenet(),
        ..options()
    };
    let imported = import(&dict, &opts, &path).expect("import");
    assert_eq!(imported.config.architecture, Architecture::Resnet18Imagenet);
    assert_eq!(imported.naming, Naming::Bcu);
    assert_eq!(
        (imported.config.width, imported.config.num_classes),
        (2, 10)
    );
    let text = std::fs::read_to_string(fixture("resnet18-imagenet.json")).expect("json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let side = v["side"].as_u64().expect("side") as usize;
    let want: Vec<f32> = v["logits"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter())
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    let x: Vec<f32> = (0..(2 * 3 * side * side) as u64)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let got: Vec<f32> = imported
        .model
        .forward(Tensor::from_data(
            TensorData::new(x, [2, 3, side, side]),
            &Device::flex(),
        ))
        .into_data()
        .try_to_vec()
        .expect("f32");
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "max |cleanse - PyTorch| = {worst} (logits up to {scale})"
    );
    // Exported under torchvision's names: the file's tensors, every one.
    let back = export(&imported.model, Naming::Bcu);
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        dict.keys().collect::<Vec<_>>()
    );
    for (k, t) in &dict {
        if let Values::F32(_) = t.values {
            assert_eq!(back[k], *t, "{k}");
        }
    }
    // The CIFAR ResNet-18 is not taken for it: told so, the 7x7 stem is a shape error.
    let cifar = ImportOptions {
        architecture: Some(Architecture::Resnet18),
        ..opts
    };
    let e = import(&dict, &cifar, &path)
        .expect_err("3x3 stem")
        .to_string();
    assert!(
        e.contains("`conv1.weight` has shape [2, 3, 7, 7]") && e.contains("needs [2, 3, 3, 3]"),
        "{e}"
    );
}

#[test]
fn export_then_import_round_trips_bit_for_bit_through_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = fixture("preact-bb-attack-result.pt");
    let dict = read_state_dict(&path, &ReadOptions::default()).expect("read");
    let original = import(&dict, &options(), &path).expect("import");
    for naming in Naming::ALL {
        let exported = export(&original.model, naming);
        // A strict PyTorch load_state_dict needs the BN counters too.
        assert!(exported.contains_key(&naming.rename("layer1.0.bn1.num_batches_tracked")));
        let file = dir.path().join(format!("{}.safetensors", naming.name()));
        std::fs::write(
            &file,
            safetensors_bytes(&exported, HashMap::new()).expect("bytes"),
        )
        .expect("write");
        let back_dict = read_state_dict(&file, &ReadOptions::default()).expect("read back");
        assert_eq!(back_dict, exported);
        let back = import(&back_dict, &options(), &file).expect("import back");
        assert_eq!(back.naming, naming);
        assert_eq!(export(&back.model, naming), exported);
        assert_eq!(logits(&back.model), logits(&original.model));
    }
    // The file names the same tensors as PyTorch's own state dict of that layout.
    let bb = export(&original.model, Naming::Backdoorbench);
    let mut names: Vec<&String> = bb.keys().collect();
    let mut torch: Vec<&String> = dict.keys().collect();
    names.sort();
    torch.sort();
    assert_eq!(names, torch);
    for (k, v) in &dict {
        if let Values::F32(_) = v.values {
            assert_eq!(bb[k], *v, "{k}");
        }
    }
}

#[test]
fn wrong_tensors_and_bad_files_are_clear_errors() {
    let path = fixture("resnet-bb.pt");
    let dict = read_state_dict(&path, &ReadOptions::default()).expect("read");
    let mut missing = dict.clone();
    missing.remove("layer3.0.shortcut.1.running_var");
    let e = import(&missing, &options(), &path)
        .expect_err("missing")
        .to_string();
    assert!(
        e.contains("resnet-bb.pt") && e.contains("missing `layer3.0.shortcut.1.running_var`"),
        "{e}"
    );
    let mut extra = dict.clone();
    let t = extra["linear.bias"].clone();
    extra.insert("linear2.bias".into(), t);
    let e = import(&extra, &options(), &path)
        .expect_err("extra")
        .to_string();
    assert!(e.contains("unexpected `linear2.bias`"), "{e}");
    let renamed = read_state_dict(
        &path,
        &ReadOptions {
            key: None,
            renames: vec![("linear.".into(), "head.".into())],
        },
    )
    .expect("read");
    let e = import(&renamed, &options(), &path)
        .expect_err("renamed")
        .to_string();
    assert!(
        e.contains("missing `linear.bias`") && e.contains("unexpected `head.bias`"),
        "{e}"
    );
    let back = read_state_dict(
        &path,
        &ReadOptions {
            key: None,
            renames: vec![
                ("linear.".into(), "head.".into()),
                ("head.".into(), "linear.".into()),
            ],
        },
    )
    .expect("read");
    assert_ne!(back, dict, "only the first matching rule applies");
    let mut shaped = dict.clone();
    if let Some(t) = shaped.get_mut("layer2.1.conv1.weight") {
        t.shape = vec![4, 2, 3, 6];
    }
    let e = import(&shaped, &options(), &path)
        .expect_err("shape")
        .to_string();
    assert!(
        e.contains("`layer2.1.conv1.weight` has shape [4, 2, 3, 6]")
            && e.contains("needs [4, 4, 3, 3]"),
        "{e}"
    );
    // A negative running variance (NaN logits for every image) is refused, naming the tensor.
    let mut negative = dict.clone();
    if let Some(t) = negative.get_mut("layer3.0.shortcut.1.running_var")
        && let Values::F32(v) = &mut t.values
    {
        v[1] = -0.5;
    }
    let e = import(&negative, &options(), &path)
        .expect_err("negative variance")
        .to_string();
    assert!(
        e.contains("`layer3.0.shortcut.1.running_var` holds the negative variance -0.5"),
        "{e}"
    );
    // Truncated and foreign files: an error naming the file, never a panic.
    let dir = tempfile::tempdir().expect("tmp");
    let bytes = std::fs::read(&path).expect("fixture");
    for (i, cut) in [10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 40]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("cut{i}.pt"));
        std::fs::write(&p, &bytes[..cut]).expect("write");
        let r = read_state_dict(&p, &ReadOptions::default())
            .and_then(|d| import(&d, &options(), &p).map(|_| ()));
        let e = r
            .err()
            .unwrap_or_else(|| panic!("truncated at {cut} accepted"));
        assert!(e.to_string().contains(&format!("cut{i}.pt")), "{e}");
    }
    let e = read_state_dict(&fixture("resnet18.json"), &ReadOptions::default())
        .expect_err("json is no checkpoint");
    assert!(e.to_string().contains("not a PyTorch checkpoint"), "{e}");
}

/// A valid `torch.save` zip file that the pinned reader (pytorch-reader 0.22.1, zip 9.9) rejects
/// (PyTorch and Python's zipfile read it): a clear error naming the file, not a panic. When the
/// reader learns to open it, this fails: move the file to the logits test above.
#[test]
fn a_checkpoint_the_reader_rejects_is_a_clear_error() {
    let path = fixture("reader-rejects-zip.pth");
    let e = read_state_dict(&path, &ReadOptions::default())
        .expect_err("the pinned reader rejects this file")
        .to_string();
    assert!(
        e.contains("reader-rejects-zip.pth") && e.contains("zip archive"),
        "{e}"
    );
}
