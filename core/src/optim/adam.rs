//! Adam with PyTorch's semantics (`torch.optim.Adam`, no weight decay, no amsgrad):
//! `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//! p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
//!
//! Moments are keyed by parameter path, like [`super::sgd::Sgd`]'s buffers, so they survive a
//! checkpoint into a freshly built module.

use super::sgd::{decode_buffers, encode_buffers};
use crate::Result;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Adam hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The optimiser: config, step count and two moments per parameter path.
pub struct Adam {
    pub config: AdamConfig,
    step: u64,
    moments: BTreeMap<String, Tensor<1>>,
}

struct StepMapper<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    moments: &'a mut BTreeMap<String, Tensor<1>>,
    config: &'a AdamConfig,
    lr: f64,
    step: u64,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner();
        let device = p.device();
        let g = grad.to_device(&device);
        let shape = g.shape();
        let numel = shape.num_elements();
        let c = self.config;
        let key = self.path.join(".");
        let (mk, vk) = (format!("m:{key}"), format!("v:{key}"));
        let prev = |k: &str, m: &mut BTreeMap<String, Tensor<1>>| {
            m.remove(k)
                .map(|t| t.to_device(&device).reshape(shape.clone()))
                .unwrap_or_else(|| g.zeros_like())
        };
        let m = prev(&mk, self.moments) * c.beta1 + g.clone() * (1.0 - c.beta1);
        let v = prev(&vk, self.moments) * c.beta2 + g.clone() * g.clone() * (1.0 - c.beta2);
        self.moments.insert(mk, m.clone().reshape([numel]));
        self.moments.insert(vk, v.clone().reshape([numel]));
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let update = (m / bc1) / ((v / bc2).sqrt() + c.eps);
        let mut out = Tensor::from_inner(p - update * self.lr);
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

const MAGIC: &[u8; 8] = b"CLNSADM1";
const STEP_KEY: &str = "step";

impl Adam {
    pub fn new(config: AdamConfig) -> Self {
        Adam {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// The moments by key (`m:PATH`, `v:PATH`).
    pub fn moments(&self) -> impl Iterator<Item = (&String, &Tensor<1>)> {
        self.moments.iter()
    }

    /// One update with learning rate `lr` of every parameter of `module` that has a gradient.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        self.step += 1;
        let mut mapper = StepMapper {
            path: Vec::new(),
            grads: &mut grads,
            moments: &mut self.moments,
            config: &self.config,
            lr,
            step: self.step,
        };
        module.map(&mut mapper)
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Serialises the step count and the moments.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut all = self.moments.clone();
        let device = all
            .values()
            .next()
            .map(|t| t.device())
            .unwrap_or_else(Device::flex);
        // The count is stored exactly as two 32-bit halves.
        let halves = [(self.step >> 32) as u32, self.step as u32];
        let v: Vec<f32> = halves.iter().map(|&h| f32::from_bits(h)).collect();
        all.insert(
            STEP_KEY.into(),
            Tensor::from_data(TensorData::new(v, [2]), &device),
        );
        encode_buffers(MAGIC, &all)
    }

    /// Restores what [`Adam::to_bytes`] wrote.
    pub fn load_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()> {
        let mut all = decode_buffers(MAGIC, "Adam", path, bytes, device)?;
        let step = all.remove(STEP_KEY).ok_or_else(|| {
            crate::Error::artifact(path, "optimizer state: Adam step count missing")
        })?;
        let h: Vec<f32> = step.into_data().try_to_vec_as::<f32>().unwrap_or_default();
        if h.len() != 2 {
            return Err(crate::Error::artifact(
                path,
                "optimizer state: bad Adam step count",
            ));
        }
        self.step = ((h[0].to_bits() as u64) << 32) | h[1].to_bits() as u64;
        self.moments = all;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Tiny {
        a: Linear,
    }

    /// Two steps on `loss = sum(W * W)` against the update rule computed by hand.
    #[test]
    fn matches_pytorch_update_rule_and_round_trips() {
        let device = Device::flex().autodiff();
        let mut model = Tiny {
            a: LinearConfig::new(2, 1).init(&device),
        };
        let w0: Vec<f32> = model.a.weight.val().to_data().try_to_vec().expect("f32");
        let cfg = AdamConfig {
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
        };
        let mut adam = Adam::new(cfg.clone());
        for _ in 0..2 {
            let w = model.a.weight.val();
            let loss = (w.clone() * w).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = adam.step(0.01, model, grads);
        }
        let w2: Vec<f32> = model.a.weight.val().to_data().try_to_vec().expect("f32");
        for (&w0, &w2) in w0.iter().zip(&w2) {
            let (mut w, mut m, mut v) = (w0 as f64, 0.0f64, 0.0f64);
            for t in 1..=2 {
                let g = 2.0 * w;
                m = 0.5 * m + 0.5 * g;
                v = 0.9 * v + 0.1 * g * g;
                let mh = m / (1.0 - 0.5f64.powi(t));
                let vh = v / (1.0 - 0.9f64.powi(t));
                w -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
            assert!((w2 as f64 - w).abs() < 1e-5, "{w2} vs {w}");
        }
        let bytes = adam.to_bytes();
        let mut again = Adam::new(cfg);
        again
            .load_bytes(Path::new("adam.bin"), &bytes, &Device::flex())
            .expect("load");
        assert_eq!(again.steps(), 2);
        assert_eq!(again.to_bytes(), bytes);
    }
}
