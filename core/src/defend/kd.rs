//! The distillation loss of the cleanser: `KL(softmax(t / T) || softmax(s / T))`, batch mean, no
//! `T^2` factor and no label term; and its temperature schedule `T = 1 + 3 (e + 1) / E`.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Temperature of 0-based epoch `epoch` of `epochs` (method spec): rises from `1 + 3/E` to 4.
pub fn temperature(epoch: usize, epochs: usize) -> f64 {
    1.0 + 3.0 * (epoch + 1) as f64 / epochs.max(1) as f64
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
    if crate::kernels::is_wgpu(&student.device()) {
        crate::kernels::kd_loss(student, teacher, t)
    } else {
        kd_loss(student, teacher, t)
    }
}
