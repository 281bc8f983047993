//! A PyTorch-style state dict (named tensors in PyTorch's layouts) and the conversion between it
//! and a cleanse [`Classifier`]: import detects the architecture and naming, checks every name
//! and shape, and builds the model; export writes every parameter and buffer under a naming.

use super::naming::{Naming, batches_tracked_of};
use crate::model::{Architecture, Classifier, ModelConfig, Normalization};
use crate::{Error, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The values of a tensor: floats (weights, statistics) or integers (counters).
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One tensor of a state dict, row-major in PyTorch's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

/// Tensors by name.
pub type StateDict = BTreeMap<String, NamedTensor>;

/// What an import may be told instead of detecting it.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub architecture: Option<Architecture>,
    pub naming: Option<Naming>,
    pub width: Option<usize>,
    pub num_classes: Option<usize>,
    /// The input normalisation the model was trained with (cleanse models take `[0,1]` images
    /// and normalise inside).
    pub normalization: Normalization,
}

/// An imported model.
#[derive(Debug)]
pub struct Imported {
    pub config: ModelConfig,
    pub naming: Naming,
    pub model: Classifier,
    /// Tensors of the file that carry nothing cleanse keeps (PyTorch's `num_batches_tracked`).
    pub ignored: Vec<String>,
}

/// cleanse's name of a parameter at Burn module path `path` (`net.<Variant>.` dropped, BN's
/// `gamma`/`beta` called `weight`/`bias` as in PyTorch).
fn canonical(path: &[String]) -> String {
    let inner = path.get(2..).unwrap_or(&[]);
    let mut parts: Vec<&str> = inner.iter().map(String::as_str).collect();
    if let Some(leaf) = parts.last_mut() {
        *leaf = match *leaf {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    parts.join(".")
}

/// Every float tensor of `model` by cleanse name, in PyTorch's layout (a linear weight is
/// `[out, in]`; Burn keeps `[in, out]`): name, shape and, with `values`, the values in that
/// layout (else none: the tensors are not read).
fn torch_params(model: &Classifier, values: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    struct Collect {
        path: Vec<String>,
        values: bool,
        out: Vec<(String, Vec<usize>, Vec<f32>)>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let dims = param.lazy_shape().to_vec();
            let values = match self.values {
                true => param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default(),
                false => Vec::new(),
            };
            let (dims, values) = match dims.as_slice() {
                [i, o] if self.values => (vec![*o, *i], transpose(&values, *i, *o)),
                [i, o] => (vec![*o, *i], values),
                _ => (dims, values),
            };
            self.out.push((canonical(&self.path), dims, values));
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        values,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// The `[cols, rows]` transpose of a row-major `[rows, cols]` matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

/// A list of names for a message: the first few, then how many more.
fn some(names: &BTreeSet<String>) -> String {
    let shown: Vec<&String> = names.iter().take(4).collect();
    let more = names.len().saturating_sub(shown.len());
    let mut s = shown
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// How well a state dict's names fit one architecture under one naming.
struct Fit {
    architecture: Architecture,
    naming: Naming,
    matched: usize,
    missing: BTreeSet<String>,
    unexpected: BTreeSet<String>,
}

fn is_counter(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// cleanse's names of `architecture`'s parameters (they do not depend on width or classes).
fn names_of(architecture: Architecture) -> Vec<String> {
    let probe = ModelConfig {
        architecture,
        width: 1,
        num_classes: 2,
        normalization: Normalization::identity(),
    };
    torch_params(&probe.init(&Device::flex()), false)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect()
}

fn fit(dict: &StateDict, architecture: Architecture, canonical: &[String], naming: Naming) -> Fit {
    let names: BTreeSet<String> = canonical.iter().map(|n| naming.rename(n)).collect();
    let present: BTreeSet<String> = dict.keys().filter(|k| !is_counter(k)).cloned().collect();
    Fit {
        architecture,
        naming,
        matched: names.intersection(&present).count(),
        missing: names.difference(&present).cloned().collect(),
        unexpected: present.difference(&names).cloned().collect(),
    }
}

/// Builds a cleanse model from `dict` (read from `source`, which errors name).
///
/// The architecture and naming are the ones whose names the file holds exactly (or those given);
/// width and classes come from the stem convolution's and classifier's shapes unless given, and
/// every tensor's shape is then checked against the model they describe.
pub fn import(dict: &StateDict, options: &ImportOptions, source: &Path) -> Result<Imported> {
    let archs: Vec<Architecture> = match options.architecture {
        Some(a) => vec![a],
        None => Architecture::ALL.to_vec(),
    };
    let namings: Vec<Naming> = match options.naming {
        Some(n) => vec![n],
        None => Naming::ALL.to_vec(),
    };
    let fits: Vec<Fit> = archs
        .iter()
        .flat_map(|&a| {
            let canonical = names_of(a);
            namings
                .iter()
                .map(|&n| fit(dict, a, &canonical, n))
                .collect::<Vec<_>>()
        })
        .collect();
    // The two ResNet-18s share their names: the stem convolution's kernel tells them apart.
    let exact = |f: &&Fit| f.missing.is_empty() && f.unexpected.is_empty();
    let stem_kernel = |f: &Fit| {
        dict.get(&f.naming.rename("stem_conv.weight"))
            .and_then(|t| t.shape.get(3).copied())
    };
    let Some(best) = fits
        .iter()
        .filter(exact)
        .find(|f| stem_kernel(f) == Some(f.architecture.stem_kernel()))
        .or_else(|| fits.iter().find(exact))
        // Most names found, then fewest names off; the first such fit on a tie.
        .or_else(|| {
            fits.iter().rev().max_by_key(|f| {
                let off = f.missing.len() + f.unexpected.len();
                (f.matched, std::cmp::Reverse(off))
            })
        })
    else {
        return Err(Error::artifact(source, "no architecture to try"));
    };
    if !(best.missing.is_empty() && best.unexpected.is_empty()) {
        let mut parts = Vec::new();
        if !best.missing.is_empty() {
            parts.push(format!("missing {}", some(&best.missing)));
        }
        if !best.unexpected.is_empty() {
            parts.push(format!("unexpected {}", some(&best.unexpected)));
        }
        return Err(Error::artifact(
            source,
            format!(
                "its tensors do not name a {} with {} names (the closest fit, {} of {} names \
                 found): {}; give --arch, --names or --rename FROM=TO (see docs/cli.md, \"Import \
                 your own model\")",
                best.architecture.name(),
                best.naming.name(),
                best.matched,
                best.matched + best.missing.len(),
                parts.join("; ")
            ),
        ));
    }
    let (architecture, naming) = (best.architecture, best.naming);
    let dim0 = |canonical: &str| -> Option<usize> {
        dict.get(&naming.rename(canonical))
            .and_then(|t| t.shape.first().copied())
    };
    let width = options.width.or_else(|| dim0("stem_conv.weight"));
    let num_classes = options.num_classes.or_else(|| dim0("fc.weight"));
    let (Some(width), Some(num_classes)) = (width, num_classes) else {
        return Err(Error::artifact(
            source,
            "the stem convolution or the classifier weight has no dimensions; give --width and \
             --classes",
        ));
    };
    let config = ModelConfig {
        architecture,
        width,
        num_classes,
        normalization: options.normalization.clone(),
    };
    config
        .validate()
        .map_err(|e| Error::artifact(source, format!("the model it describes: {e}")))?;
    let template = config.init(&Device::flex());
    let mut values: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (canonical, shape, _) in torch_params(&template, false) {
        let name = naming.rename(&canonical);
        let t = dict
            .get(&name)
            .ok_or_else(|| Error::artifact(source, format!("tensor `{name}` is missing")))?;
        if t.shape != shape {
            return Err(Error::artifact(
                source,
                format!(
                    "tensor `{name}` has shape {} in the file, but a {} of width {width} with \
                     {num_classes} classes needs {}",
                    shape_str(&t.shape),
                    architecture.name(),
                    shape_str(&shape)
                ),
            ));
        }
        let Values::F32(v) = &t.values else {
            return Err(Error::artifact(
                source,
                format!("tensor `{name}` holds integers; a float tensor was expected"),
            ));
        };
        if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::artifact(
                source,
                format!("tensor `{name}` holds a non-finite value at element {bad}"),
            ));
        }
        // A variance below zero makes batch norm's square root NaN: every logit, every class.
        if canonical.ends_with("running_var")
            && let Some(bad) = v.iter().position(|x| *x < 0.0)
        {
            return Err(Error::artifact(
                source,
                format!(
                    "tensor `{name}` holds the negative variance {} at element {bad}",
                    v[bad]
                ),
            ));
        }
        let v = match shape.as_slice() {
            // PyTorch's linear weight is [out, in]; Burn's is [in, out].
            [o, i] => transpose(v, *o, *i),
            _ => v.clone(),
        };
        values.insert(canonical, v);
    }
    let ignored = dict.keys().filter(|k| is_counter(k)).cloned().collect();
    let model = load_values(template, &values);
    Ok(Imported {
        config,
        naming,
        model,
        ignored,
    })
}

/// `model` with every float tensor replaced by `values[cleanse name]` (already in Burn's
/// layout and checked to hold the right number of elements).
fn load_values(model: Classifier, values: &BTreeMap<String, Vec<f32>>) -> Classifier {
    struct Load<'a> {
        path: Vec<String>,
        values: &'a BTreeMap<String, Vec<f32>>,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let Some(v) = self.values.get(&canonical(&self.path)) else {
                return Param::from_mapped_value(id, tensor, mapper);
            };
            let require_grad = tensor.is_require_grad();
            let mut fresh =
                Tensor::<D>::from_data(TensorData::new(v.clone(), tensor.dims()), &tensor.device());
            if require_grad {
                fresh = fresh.require_grad();
            }
            Param::from_mapped_value(id, fresh, mapper)
        }
    }
    model.map(&mut Load {
        path: Vec::new(),
        values,
    })
}

/// Every parameter and buffer of `model` under `naming`, in PyTorch's layouts, with PyTorch's
/// `num_batches_tracked` counter (0) beside each batch norm so that a strict `load_state_dict`
/// accepts it.
pub fn export(model: &Classifier, naming: Naming) -> StateDict {
    let mut dict = StateDict::new();
    for (canonical, shape, values) in torch_params(model, true) {
        if let Some(counter) = batches_tracked_of(&canonical) {
            dict.insert(
                naming.rename(&counter),
                NamedTensor {
                    shape: vec![],
                    values: Values::I64(vec![0]),
                },
            );
        }
        dict.insert(
            naming.rename(&canonical),
            NamedTensor {
                shape,
                values: Values::F32(values),
            },
        );
    }
    dict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ImportOptions {
        ImportOptions {
            architecture: None,
            naming: None,
            width: None,
            num_classes: None,
            normalization: Normalization::cifar10(),
        }
    }

    fn logits(model: &Classifier) -> Vec<f32> {
        let device = Device::flex();
        let x: Vec<f32> = (0..2 * 3 * 32 * 32)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        model
            .forward(Tensor::from_data(
                TensorData::new(x, [2, 3, 32, 32]),
                &device,
            ))
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32")
    }

    #[test]
    fn export_then_import_is_the_same_model_under_every_naming() {
        for architecture in Architecture::ALL {
            let config = ModelConfig {
                architecture,
                width: 4,
                num_classes: 7,
                normalization: Normalization::cifar10(),
            };
            let model = config.init_seeded(&Device::flex(), 5);
            for naming in Naming::ALL {
                let dict = export(&model, naming);
                let back = import(&dict, &options(), Path::new("x.safetensors")).expect("import");
                assert_eq!(back.config, config);
                assert_eq!(back.naming, naming, "{architecture:?}");
                assert_eq!(torch_params(&back.model, true), torch_params(&model, true));
                assert_eq!(logits(&back.model), logits(&model));
                assert!(!back.ignored.is_empty());
            }
        }
    }

    #[test]
    fn a_wrong_name_or_shape_is_named() {
        let config = ModelConfig {
            architecture: Architecture::PreactResnet18,
            width: 4,
            num_classes: 10,
            normalization: Normalization::cifar10(),
        };
        let model = config.init_seeded(&Device::flex(), 1);
        let src = Path::new("m.pt");
        let mut dict = export(&model, Naming::Backdoorbench);
        let t = dict.remove("layer2.1.conv2.weight").expect("present");
        let e = import(&dict, &options(), src)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing `layer2.1.conv2.weight`"), "{e}");
        assert!(
            e.contains("preact-resnet18 with backdoorbench names"),
            "{e}"
        );
        dict.insert("layer2.1.conv2.wieght".into(), t.clone());
        let e = import(&dict, &options(), src)
            .expect_err("renamed")
            .to_string();
        assert!(e.contains("unexpected `layer2.1.conv2.wieght`"), "{e}");
        dict.remove("layer2.1.conv2.wieght");
        dict.insert(
            "layer2.1.conv2.weight".into(),
            NamedTensor {
                shape: vec![8, 8, 1, 9],
                values: t.values.clone(),
            },
        );
        let e = import(&dict, &options(), src)
            .expect_err("shape")
            .to_string();
        assert!(
            e.contains("`layer2.1.conv2.weight` has shape [8, 8, 1, 9]")
                && e.contains("needs [8, 8, 3, 3]"),
            "{e}"
        );
        dict.insert("layer2.1.conv2.weight".into(), t);
        let mut wide = options();
        wide.width = Some(8);
        let e = import(&dict, &wide, src).expect_err("width").to_string();
        assert!(e.contains("`conv1.weight` has shape [4, 3, 3, 3]"), "{e}");
        let mut resnet = options();
        resnet.architecture = Some(Architecture::Resnet18);
        let e = import(&dict, &resnet, src).expect_err("arch").to_string();
        assert!(e.contains("do not name a resnet18"), "{e}");
        assert!(import(&dict, &options(), src).is_ok());
    }
}
