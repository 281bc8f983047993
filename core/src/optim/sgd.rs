//! Stochastic gradient descent with momentum and weight decay, with PyTorch's semantics
//! (`torch.optim.SGD`): `g += wd * p; b = mu * b + (1 - dampening) * g` (`b = g` on the first
//! step); `p -= lr * b` (Nesterov: `p -= lr * (g + mu * b)`).
//!
//! The momentum buffers are keyed by parameter path (`net.Resnet18.layer1.0.conv1.weight`), so a
//! checkpoint restores them into a freshly built model in another process, on any device.

use crate::optim::loss_scale::{LossScale, gradients_finite};
use crate::{Error, Result};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// SGD hyper-parameters (supplement: momentum 0.9, weight decay 5e-4, no dampening).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Why the weight decay cannot be used, if it cannot: it must be finite and non-negative.
    pub fn check_weight_decay(&self) -> Option<String> {
        let wd = self.weight_decay;
        (!(wd.is_finite() && wd >= 0.0)).then(|| format!("expected a finite value >= 0, got {wd}"))
    }

    /// Checks every setting, naming the flag: weight decay finite and >= 0, momentum and
    /// dampening in `[0, 1)`.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(reason) = self.check_weight_decay() {
            return Err(crate::Error::config("weight-decay", reason));
        }
        for (name, v) in [("momentum", self.momentum), ("dampening", self.dampening)] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(crate::Error::config(
                    name,
                    format!("expected a value in [0, 1), got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a base learning rate: finite and positive.
pub fn check_lr(lr: f64) -> crate::Result<()> {
    match lr.is_finite() && lr > 0.0 {
        true => Ok(()),
        false => Err(crate::Error::config(
            "lr",
            format!("expected a positive number, got {lr}"),
        )),
    }
}

/// The optimiser: config plus one momentum buffer per parameter path, and the loss scale when
/// the loss is scaled (f16 training).
pub struct Sgd {
    pub config: SgdConfig,
    buffers: BTreeMap<String, Tensor<1>>,
    loss_scale: Option<LossScale>,
}

/// The state file's entry for the loss scale (parameter paths never start with `@`).
const LOSS_SCALE_KEY: &str = "@loss-scale";

struct StepMapper<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    buffers: &'a mut BTreeMap<String, Tensor<1>>,
    config: &'a SgdConfig,
    lr: f64,
    /// What every gradient is multiplied by first (the loss scale's inverse), when not 1.
    unscale: Option<f64>,
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
        let mut grad = grad.to_device(&p.device());
        if let Some(u) = self.unscale {
            grad = grad.mul_scalar(u);
        }
        let c = self.config;
        let mut g = if c.weight_decay != 0.0 {
            grad + p.clone().mul_scalar(c.weight_decay)
        } else {
            grad
        };
        if c.momentum != 0.0 {
            let key = self.path.join(".");
            let shape = g.shape();
            let numel = shape.num_elements();
            let buf = match self.buffers.remove(&key) {
                Some(b) => {
                    b.to_device(&p.device())
                        .reshape(shape.clone())
                        .mul_scalar(c.momentum)
                        + g.clone().mul_scalar(1.0 - c.dampening)
                }
                None => g.clone(),
            };
            self.buffers.insert(key, buf.clone().reshape([numel]));
            g = if c.nesterov {
                g + buf.mul_scalar(c.momentum)
            } else {
                buf
            };
        }
        let updated = p - g.mul_scalar(self.lr);
        let mut t = Tensor::from_inner(updated);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

const MAGIC: &[u8; 8] = b"CLNSSGD1";

impl Sgd {
    /// A fresh optimiser with empty momentum buffers.
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: BTreeMap::new(),
            loss_scale: None,
        }
    }

    /// The same optimiser for a scaled loss: gradients arrive multiplied by
    /// [`Sgd::loss_scale`]; a step divides it out, or is skipped when they are not finite
    /// ([`LossScale`]).
    pub fn with_loss_scaling(mut self) -> Self {
        self.loss_scale = Some(LossScale::default());
        self
    }

    /// The loss scale, when the loss is scaled.
    pub fn loss_scale(&self) -> Option<LossScale> {
        self.loss_scale
    }

    /// Applies one update with learning rate `lr` to every parameter that has a gradient. With
    /// loss scaling, gradients that are not finite leave `module` and the momentum unchanged
    /// and halve the scale.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        let unscale = match &mut self.loss_scale {
            Some(ls) => {
                let scale = ls.scale;
                if !ls.record(gradients_finite(&module, &grads)) {
                    return module;
                }
                Some(1.0 / scale)
            }
            None => None,
        };
        let mut mapper = StepMapper {
            path: Vec::new(),
            grads: &mut grads,
            buffers: &mut self.buffers,
            config: &self.config,
            lr,
            unscale,
        };
        module.map(&mut mapper)
    }

    /// The momentum buffers by parameter path.
    pub fn buffers(&self) -> impl Iterator<Item = (&String, &Tensor<1>)> {
        self.buffers.iter()
    }

    /// Number of momentum buffers held.
    pub fn num_buffers(&self) -> usize {
        self.buffers.len()
    }

    /// Serialises the momentum buffers: magic, count, then per buffer the path and `f32` values;
    /// the loss scale, when there is one, as a buffer of its own (`@loss-scale`).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.loss_scale {
            None => encode_buffers(MAGIC, &self.buffers),
            Some(ls) => {
                let mut all = self.buffers.clone();
                let device = all
                    .values()
                    .next()
                    .map(|t| t.device())
                    .unwrap_or_else(Device::flex);
                all.insert(
                    LOSS_SCALE_KEY.to_string(),
                    Tensor::from_data(TensorData::new(ls.to_values().to_vec(), [3]), &device),
                );
                encode_buffers(MAGIC, &all)
            }
        }
    }

    /// Restores buffers written by [`Sgd::to_bytes`] onto `device`, and the loss scale when this
    /// optimiser scales the loss (a state without one starts at the initial scale).
    pub fn load_bytes(&mut self, path: &Path, bytes: &[u8], device: &Device) -> Result<()> {
        let mut buffers = decode_buffers(MAGIC, "SGD", path, bytes, device)?;
        let stored = buffers.remove(LOSS_SCALE_KEY);
        if let (Some(ls), Some(t)) = (&mut self.loss_scale, stored) {
            let values: Vec<f32> = t.to_data().try_to_vec_as::<f32>().unwrap_or_default();
            *ls = LossScale::from_values(&values).ok_or_else(|| {
                Error::artifact(
                    path,
                    format!("optimizer state: a bad loss scale {values:?}"),
                )
            })?;
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// Serialises named flat tensors: `magic`, count, then per tensor the name and `f32` values.
pub(crate) fn encode_buffers(magic: &[u8; 8], buffers: &BTreeMap<String, Tensor<1>>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(magic);
    out.extend_from_slice(&(buffers.len() as u64).to_le_bytes());
    for (k, v) in buffers {
        let values: Vec<f32> = v.to_data().try_to_vec_as::<f32>().unwrap_or_default();
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(values.len() as u64).to_le_bytes());
        for x in values {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Reads what [`encode_buffers`] wrote, onto `device`; `what` names the optimiser in errors.
pub(crate) fn decode_buffers(
    magic: &[u8; 8],
    what: &str,
    path: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<BTreeMap<String, Tensor<1>>> {
    let bad = |reason: &str| Error::artifact(path, format!("optimizer state: {reason}"));
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let end = pos.checked_add(n).ok_or_else(|| bad("bad length"))?;
        let s = bytes.get(pos..end).ok_or_else(|| bad("truncated"))?;
        pos = end;
        Ok(s)
    };
    if take(8)? != magic {
        return Err(bad(&format!("not a cleanse {what} state file")));
    }
    let read_u64 = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])) as usize;
    let count = read_u64(take(8)?);
    let mut buffers = BTreeMap::new();
    for _ in 0..count {
        let klen = read_u64(take(8)?);
        let key = String::from_utf8(take(klen)?.to_vec()).map_err(|_| bad("bad path"))?;
        let n = read_u64(take(8)?);
        let raw = take(n.checked_mul(4).ok_or_else(|| bad("bad length"))?)?;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        buffers.insert(
            key,
            Tensor::<1>::from_data(TensorData::new(values, [n]), device),
        );
    }
    if pos != bytes.len() {
        return Err(bad("trailing bytes after the last buffer"));
    }
    Ok(buffers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Tiny {
        a: Linear,
    }

    /// With loss scaling, gradients arrive multiplied by the scale: an applied step divides it
    /// out (the same update as unscaled), a step with gradients that are not finite changes
    /// nothing but halves the scale, and the scale survives the state file.
    #[test]
    fn a_scaled_step_is_the_unscaled_one_or_skipped() {
        let device = Device::flex().autodiff();
        let model = Tiny {
            a: LinearConfig::new(2, 1).init(&device),
        };
        let x = Tensor::<2>::ones([1, 2], &device);
        let mut plain = Sgd::new(SgdConfig::default());
        let mut scaled = Sgd::new(SgdConfig::default()).with_loss_scaling();
        let s = scaled.loss_scale().expect("scaled").scale;
        let loss = |m: &Tiny| m.a.forward(x.clone()).sum();
        let g = GradientsParams::from_grads(loss(&model).backward(), &model);
        let a = plain.step(0.1, model.clone(), g);
        let g = GradientsParams::from_grads(loss(&model).mul_scalar(s).backward(), &model);
        let b = scaled.step(0.1, model.clone(), g);
        let w = |m: &Tiny| -> Vec<f32> { m.a.weight.val().to_data().try_to_vec().expect("f32") };
        for (p, q) in w(&a).iter().zip(w(&b)) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
        let g = GradientsParams::from_grads(loss(&b).mul_scalar(f32::INFINITY).backward(), &b);
        let c = scaled.step(0.1, b.clone(), g);
        assert_eq!(w(&c), w(&b), "skipped");
        let ls = scaled.loss_scale().expect("scaled");
        assert_eq!((ls.scale, ls.skipped), (s / 2.0, 1));
        let mut again = Sgd::new(SgdConfig::default()).with_loss_scaling();
        again
            .load_bytes(Path::new("x"), &scaled.to_bytes(), &Device::flex())
            .expect("load");
        assert_eq!(again.loss_scale(), Some(ls));
        assert_eq!(again.num_buffers(), 2, "the scale is not a momentum buffer");
    }

    /// Two steps on `loss = sum(W)` with a hand-computed reference.
    #[test]
    fn matches_pytorch_update_rule() {
        let device = Device::flex().autodiff();
        let model = Tiny {
            a: LinearConfig::new(2, 1).init(&device),
        };
        let w0: Vec<f32> = model.a.weight.val().to_data().try_to_vec().expect("f32");
        let mut sgd = Sgd::new(SgdConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            dampening: 0.0,
            nesterov: false,
        });
        let mut model = model;
        let x = Tensor::<2>::ones([1, 2], &device);
        for _ in 0..2 {
            let loss = model.a.forward(x.clone()).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = sgd.step(0.5, model, grads);
        }
        // dL/dW = 1. Step 1: g = 1 + 0.1 w0; b1 = g; w1 = w0 - 0.5 b1.
        // Step 2: g = 1 + 0.1 w1; b2 = 0.9 b1 + g; w2 = w1 - 0.5 b2.
        let w2: Vec<f32> = model.a.weight.val().to_data().try_to_vec().expect("f32");
        for (w0, w2) in w0.iter().zip(&w2) {
            let b1 = 1.0 + 0.1 * w0;
            let w1 = w0 - 0.5 * b1;
            let b2 = 0.9 * b1 + (1.0 + 0.1 * w1);
            let expect = w1 - 0.5 * b2;
            assert!((w2 - expect).abs() < 1e-5, "{w2} vs {expect}");
        }
        assert_eq!(sgd.num_buffers(), 2, "weight and bias buffers");
        // Round trip of the buffers.
        let bytes = sgd.to_bytes();
        let mut again = Sgd::new(sgd.config.clone());
        again
            .load_bytes(Path::new("x"), &bytes, &Device::flex())
            .expect("load");
        assert_eq!(again.to_bytes(), bytes);
        let err = again
            .load_bytes(
                Path::new("state.bin"),
                &bytes[..bytes.len() - 3],
                &Device::flex(),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("state.bin") && err.to_string().contains("truncated"),
            "{err}"
        );
    }
}
