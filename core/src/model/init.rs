//! Seeded initialisation that does not depend on the backend's random generator.
//!
//! Burn draws initial weights from a per-backend generator shared by the whole process, so two
//! models built at once (or on two backends) differ. Here every parameter draws from its own
//! stream `(seed, parameter path)` of [`crate::rng::Rng`]: the same seed gives the same initial
//! model on every device, in any order, in any thread.
//!
//! - conv weights `[out, in, k, k]`: Kaiming normal, fan-out, ReLU gain (method spec);
//! - linear weights `[in, out]` and biases: uniform `±1/sqrt(fan_in)` (PyTorch's default);
//! - batch-norm weight 1 and bias 0 are constants and are left as built.

use crate::rng::{Rng, derive_seed};
use burn::module::{ModuleMapper, Param};
use burn::prelude::*;

/// Draws a standard normal with Box-Muller.
fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn path_seed(seed: u64, path: &str) -> u64 {
    let mut parts = vec![seed];
    parts.extend(path.bytes().map(u64::from));
    derive_seed(&parts)
}

/// Re-initialises conv and linear parameters from `seed`.
pub struct SeededInit {
    seed: u64,
    path: Vec<String>,
    /// Fan-in of the last linear weight seen, for its bias.
    last_fan_in: usize,
}

impl SeededInit {
    /// An initialiser for `seed`.
    pub fn new(seed: u64) -> Self {
        SeededInit {
            seed,
            path: Vec::new(),
            last_fan_in: 0,
        }
    }
}

impl ModuleMapper for SeededInit {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let mut rng = Rng::new(path_seed(self.seed, &path));
        let values: Option<Vec<f32>> = match (D, leaf) {
            (4, "weight") => {
                let fan_out = dims[0] * dims[2] * dims[3];
                let std = (2.0f32 / fan_out as f32).sqrt();
                Some((0..n).map(|_| normal(&mut rng) * std).collect())
            }
            (2, "weight") => {
                self.last_fan_in = dims[0];
                let bound = 1.0 / (dims[0] as f32).sqrt();
                Some(
                    (0..n)
                        .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                        .collect(),
                )
            }
            (1, "bias") if self.last_fan_in > 0 => {
                let bound = 1.0 / (self.last_fan_in as f32).sqrt();
                Some(
                    (0..n)
                        .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                        .collect(),
                )
            }
            _ => None,
        };
        let Some(values) = values else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let mut fresh = Tensor::<D>::from_data(TensorData::new(values, dims), &tensor.device());
        if require_grad {
            fresh = fresh.require_grad();
        }
        Param::from_mapped_value(id, fresh, mapper)
    }
}
