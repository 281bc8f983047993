//! The student of the distillation cleanser: a copy of the teacher in which, per stage, a
//! Bernoulli fraction of every conv and linear weight and bias element is replaced by the element
//! of a freshly initialised model (no rescaling). Batch-norm parameters and statistics are kept.

use crate::model::{Classifier, ModelConfig};
use crate::report::findings::{GroupFraction, Realised};
use crate::rng::Rng;
use crate::{Error, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Parameter groups, in order: the stem conv, the four residual stages, the classifier.
pub const GROUPS: [&str; 6] = ["stem", "stage1", "stage2", "stage3", "stage4", "fc"];

/// The method's adaptive ratios (method spec): stem 0.01, stages 0.01, 0.03, 0.09, 0.27, fc 0.10.
pub const ADAPTIVE_RATIOS: [f64; 6] = [0.01, 0.01, 0.03, 0.09, 0.27, 0.10];

/// `ratios` times `scale`, each capped at 1 (`defend kd --ratio-scale`, the demo's ratio scale):
/// the same per-stage profile, re-initialising more.
pub fn scale_ratios(ratios: [f64; 6], scale: f64) -> Result<[f64; 6]> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::config(
            "ratio-scale",
            format!("expected a positive number, got {scale}"),
        ));
    }
    InitMode::Adaptive { ratios }.validate()?;
    Ok(ratios.map(|r| (r * scale).min(1.0)))
}

/// How the student is initialised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum InitMode {
    /// Per-group ratios (default: [`ADAPTIVE_RATIOS`]).
    Adaptive { ratios: [f64; 6] },
    /// The adaptive ratios' total fraction of conv/linear elements, spread evenly over all layers.
    Uniform { ratios: [f64; 6] },
    /// Only residual stage `stage` (1-4), at the fraction the adaptive ratios re-initialise in
    /// total (capped at 1), so that the ablation changes where, not how much.
    Single { stage: usize, ratios: [f64; 6] },
    /// An exact copy of the teacher (plain distillation).
    None,
    /// A fully random student.
    Fresh,
}

impl InitMode {
    /// Parses `adaptive`, `uniform`, `single:N`, `none`, `fresh`.
    pub fn parse(s: &str, ratios: [f64; 6]) -> Result<InitMode> {
        let bad = || {
            Error::config(
                "init",
                format!("`{s}`: expected adaptive, uniform, single:1..4, none or fresh"),
            )
        };
        Ok(match s {
            "adaptive" => InitMode::Adaptive { ratios },
            "uniform" => InitMode::Uniform { ratios },
            "none" => InitMode::None,
            "fresh" => InitMode::Fresh,
            _ => {
                let n = s.strip_prefix("single:").ok_or_else(bad)?;
                let stage: usize = n.parse().map_err(|_| bad())?;
                if !(1..=4).contains(&stage) {
                    return Err(bad());
                }
                InitMode::Single { stage, ratios }
            }
        })
    }

    /// Checks the ratios (fractions in `[0, 1]`) and the stage of `single:N` (1 to 4).
    pub fn validate(&self) -> Result<()> {
        let ratios = match self {
            InitMode::Adaptive { ratios } | InitMode::Uniform { ratios } => ratios,
            InitMode::Single { stage, ratios } => {
                if !(1..=4).contains(stage) {
                    return Err(Error::config(
                        "init",
                        format!("single:{stage}: the stage must be 1 to 4"),
                    ));
                }
                ratios
            }
            InitMode::None | InitMode::Fresh => return Ok(()),
        };
        if ratios.iter().any(|r| !(0.0..=1.0).contains(r)) {
            return Err(Error::config(
                "ratios",
                format!("expected six fractions in [0, 1] (stem, stage 1-4, fc); got {ratios:?}"),
            ));
        }
        Ok(())
    }

    /// The per-group probabilities for groups of `sizes` elements.
    pub fn probabilities(&self, sizes: &[usize; 6]) -> [f64; 6] {
        let total_of = |r: &[f64; 6]| {
            let n: usize = sizes.iter().sum();
            let hit: f64 = r.iter().zip(sizes).map(|(r, &s)| r * s as f64).sum();
            if n == 0 { 0.0 } else { hit / n as f64 }
        };
        match self {
            InitMode::Adaptive { ratios } => *ratios,
            InitMode::Uniform { ratios } => [total_of(ratios); 6],
            InitMode::Single { stage, ratios } => {
                let n: usize = sizes.iter().sum();
                let hit = total_of(ratios) * n as f64;
                let mut p = [0.0; 6];
                p[*stage] = (hit / sizes[*stage].max(1) as f64).min(1.0);
                p
            }
            InitMode::None => [0.0; 6],
            InitMode::Fresh => [1.0; 6],
        }
    }
}

/// The group of a parameter, from its module path; `None` for batch norm and anything that is
/// not a conv or linear weight or bias.
fn group_of(path: &[String], container: &str) -> Option<usize> {
    let leaf = path.last()?;
    if leaf != "weight" && leaf != "bias" {
        return None;
    }
    if !(container.ends_with("Conv2d") || container.ends_with("Linear")) {
        return None;
    }
    for p in path {
        match p.as_str() {
            "stem_conv" => return Some(0),
            "layer1" => return Some(1),
            "layer2" => return Some(2),
            "layer3" => return Some(3),
            "layer4" => return Some(4),
            "fc" => return Some(5),
            _ => {}
        }
    }
    None
}

/// The conv/linear parameters of a model, flattened, by module path (they stay on the device).
struct Collect {
    path: Vec<String>,
    containers: Vec<String>,
    values: BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let container = self.containers.last().map(String::as_str).unwrap_or("");
        if group_of(&self.path, container).is_some() {
            let v = param.val();
            let n = v.shape().num_elements();
            self.values.insert(self.path.join("."), v.reshape([n]));
        }
    }
}

/// Replaces the drawn elements of each conv/linear parameter by the fresh model's. The Bernoulli
/// draws are made on the host (one stream per parameter); the values never leave the device, so
/// this also works where the device cannot be read synchronously (WebGPU in a browser).
struct Mix<'a> {
    path: Vec<String>,
    containers: Vec<String>,
    fresh: &'a BTreeMap<String, Tensor<1>>,
    probabilities: [f64; 6],
    seed: u64,
    elements: [usize; 6],
    reinitialised: [usize; 6],
}

impl ModuleMapper for Mix<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let container = self.containers.last().map(String::as_str).unwrap_or("");
        let Some(g) = group_of(&self.path, container) else {
            return param;
        };
        let key = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let device = tensor.device();
        let require_grad = tensor.is_require_grad();
        let n: usize = dims.iter().product();
        let p = self.probabilities[g];
        let mut parts = vec![self.seed, 0x5EED_1417];
        parts.extend(key.bytes().map(u64::from));
        let mut rng = Rng::from_parts(&parts);
        let drawn: Vec<bool> = (0..n)
            .map(|_| p >= 1.0 || (p > 0.0 && rng.bernoulli(p)))
            .collect();
        let count = drawn.iter().filter(|&&d| d).count();
        self.reinitialised[g] += count;
        self.elements[g] += n;
        let mut t = match count {
            0 => tensor,
            _ => {
                let fresh: Tensor<D> = self.fresh[&key].clone().reshape(dims);
                let mask = Tensor::<D, Bool>::from_data(TensorData::new(drawn, dims), &device);
                tensor.mask_where(mask, fresh)
            }
        };
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Sizes (conv/linear elements) of the six groups of `model`.
pub fn group_sizes(model: &Classifier) -> [usize; 6] {
    let mut c = Collect {
        path: Vec::new(),
        containers: Vec::new(),
        values: BTreeMap::new(),
    };
    model.visit(&mut c);
    let mut sizes = [0usize; 6];
    for (k, v) in &c.values {
        let path: Vec<String> = k.split('.').map(str::to_string).collect();
        // Every collected parameter belongs to a conv or linear layer.
        if let Some(g) = group_of(&path, "Conv2d") {
            sizes[g] += v.shape().num_elements();
        }
    }
    sizes
}

/// The student for `teacher` (built from `config`): fresh elements drawn from `seed`.
pub fn student(
    teacher: &Classifier,
    config: &ModelConfig,
    mode: &InitMode,
    seed: u64,
    device: &Device,
) -> (Classifier, Realised) {
    let fresh_model = config.init_seeded(device, crate::rng::derive_seed(&[seed, 0xF4E5]));
    let mut c = Collect {
        path: Vec::new(),
        containers: Vec::new(),
        values: BTreeMap::new(),
    };
    fresh_model.visit(&mut c);
    let sizes = group_sizes(teacher);
    let probabilities = mode.probabilities(&sizes);
    let mut mix = Mix {
        path: Vec::new(),
        containers: Vec::new(),
        fresh: &c.values,
        probabilities,
        seed,
        elements: [0; 6],
        reinitialised: [0; 6],
    };
    let student = teacher.clone().map(&mut mix);
    let groups = (0..6)
        .map(|g| GroupFraction {
            group: GROUPS[g].into(),
            elements: mix.elements[g],
            requested: probabilities[g],
            reinitialised: mix.reinitialised[g],
            fraction: mix.reinitialised[g] as f64 / mix.elements[g].max(1) as f64,
        })
        .collect();
    let n: usize = mix.elements.iter().sum();
    let r: usize = mix.reinitialised.iter().sum();
    (
        student,
        Realised {
            groups,
            total_fraction: r as f64 / n.max(1) as f64,
        },
    )
}
