//! The distillation loss of the cleanser: `KL(softmax(t / T) || softmax(s / T))`, batch mean, no
//! `T^2` factor and no label term; and its temperature schedule `T = 1 + 3 (e + 1) / E`.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

/// The method spec's temperature range: `T` rises linearly to 4 from just above 1.
pub const PAPER_TEMPERATURE: TemperatureRange = TemperatureRange { from: 1.0, to: 4.0 };

/// A linear temperature schedule `T = from + (to - from) (e + 1) / E` over 0-based epochs `e`
/// (the method spec's is `from = 1`, `to = 4`); `from == to` keeps `T` constant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemperatureRange {
    pub from: f64,
    pub to: f64,
}

impl Default for TemperatureRange {
    fn default() -> Self {
        PAPER_TEMPERATURE
    }
}

impl TemperatureRange {
    /// Whether this is the method spec's range (configurations leave it out, so that they read
    /// as they did before the range could be changed).
    pub fn is_paper(&self) -> bool {
        *self == PAPER_TEMPERATURE
    }

    /// Why this range cannot be used, if it cannot: both ends must be positive and finite.
    pub fn check(&self) -> Option<String> {
        let ok = |t: f64| t.is_finite() && t > 0.0;
        (!ok(self.from) || !ok(self.to)).then(|| {
            format!(
                "expected two positive temperatures FROM,TO; got {},{}",
                self.from, self.to
            )
        })
    }

    /// The temperature of 0-based epoch `epoch` of `epochs`.
    pub fn at(&self, epoch: usize, epochs: usize) -> f64 {
        self.from + (self.to - self.from) * (epoch + 1) as f64 / epochs.max(1) as f64
    }
}

/// Temperature of 0-based epoch `epoch` of `epochs` (method spec): rises from `1 + 3/E` to 4.
pub fn temperature(epoch: usize, epochs: usize) -> f64 {
    PAPER_TEMPERATURE.at(epoch, epochs)
}

/// `mean_n sum_k p_t (log p_t - log p_s)` with `p = softmax(logits / T)`; the teacher's logits
/// are constants (detach them before calling when they come from an autodiff graph).
pub fn kd_loss(student: Tensor<2>, teacher: Tensor<2>, t: f64) -> Tensor<1> {
    let [n, _] = student.dims();
    let log_ps = log_softmax(student / t, 1);
    let log_pt = log_softmax(teacher.clone() / t, 1);
    let pt = softmax(teacher / t, 1);
    (pt * (log_pt - log_ps)).sum() / n as f64
}

/// [`kd_loss`] by the fused WGSL kernel on wgpu devices ([`crate::kernels::kd_loss`]), by the
/// plain-tensor twin elsewhere.
pub fn distillation_loss(student: Tensor<2>, teacher: Tensor<2>, t: f64) -> Tensor<1> {
    if crate::kernels::runs_wgsl(&student.device()) {
        crate::kernels::kd_loss(student, teacher, t)
    } else {
        kd_loss(student, teacher, t)
    }
}
