//! Dynamic loss scaling for f16 training, with PyTorch's `GradScaler` rule: the loss is
//! multiplied by the scale before the backward pass so that small gradients survive f16's
//! range; the update divides it out again. A step whose gradients are not finite (the scale
//! overflowed f16) is skipped and the scale halved; after 2,000 finite steps in a row it doubles.
//! It starts at 2^16 and never goes below 1.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// The scale and its history.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// What the loss is multiplied by.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub clean_steps: u64,
    /// Steps skipped for gradients that were not finite, over the whole run.
    pub skipped: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale {
            scale: LossScale::INITIAL,
            clean_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScale {
    /// The first scale (PyTorch's `init_scale`).
    pub const INITIAL: f64 = 65536.0;
    /// Finite steps in a row before the scale doubles (PyTorch's `growth_interval`).
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// The smallest scale.
    pub const MIN: f64 = 1.0;

    /// Records whether a step's gradients were finite; returns whether the step is applied.
    pub fn record(&mut self, finite: bool) -> bool {
        if finite {
            self.clean_steps += 1;
            if self.clean_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(Self::MIN);
            self.clean_steps = 0;
            self.skipped += 1;
        }
        finite
    }

    /// The state as three numbers (scale, clean steps, skipped), for a checkpoint.
    pub fn to_values(self) -> [f32; 3] {
        [
            self.scale as f32,
            self.clean_steps as f32,
            self.skipped as f32,
        ]
    }

    /// Reads what [`LossScale::to_values`] wrote; `None` when the values cannot be a state.
    pub fn from_values(v: &[f32]) -> Option<LossScale> {
        let &[scale, clean, skipped] = v else {
            return None;
        };
        let whole = |x: f32| x.is_finite() && x >= 0.0 && x.fract() == 0.0;
        (scale.is_finite() && scale as f64 >= Self::MIN && whole(clean) && whole(skipped))
            .then_some(LossScale {
                scale: scale as f64,
                clean_steps: clean as u64,
                skipped: skipped as u64,
            })
    }
}

/// Whether every gradient `grads` holds for `module`'s parameters is finite: one sum of
/// absolute values over all of them, read back from the device once.
pub fn gradients_finite<M: Module>(module: &M, grads: &GradientsParams) -> bool {
    struct Sum<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.abs().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = Sum { grads, total: None };
    module.visit(&mut sum);
    match sum.total {
        Some(t) => t.into_scalar::<f32>().is_finite(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScale::default();
        assert!(!s.record(false));
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.record(true));
        }
        assert_eq!(s.scale, 32768.0, "not before the interval");
        s.record(true);
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
        // An overflow in the middle of a streak starts it again.
        for _ in 0..10 {
            s.record(true);
        }
        s.record(false);
        assert_eq!((s.scale, s.clean_steps, s.skipped), (32768.0, 0, 2));
        // Never below 1.
        for _ in 0..40 {
            s.record(false);
        }
        assert_eq!(s.scale, LossScale::MIN);
        let back = LossScale::from_values(&s.to_values()).expect("round trip");
        assert_eq!(back, s);
        assert_eq!(LossScale::from_values(&[0.5, 0.0, 0.0]), None);
        assert_eq!(LossScale::from_values(&[2.0, 1.5, 0.0]), None);
        assert_eq!(LossScale::from_values(&[2.0, 1.0]), None);
    }

    #[test]
    fn finds_a_gradient_that_is_not_finite() {
        use burn::nn::{Linear, LinearConfig};
        let device = Device::flex().autodiff();
        let model: Linear = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::ones([1, 3], &device);
        let grads = GradientsParams::from_grads(model.forward(x.clone()).sum().backward(), &model);
        assert!(gradients_finite(&model, &grads));
        let grads = GradientsParams::from_grads(
            model.forward(x).sum().mul_scalar(f32::INFINITY).backward(),
            &model,
        );
        assert!(!gradients_finite(&model, &grads));
    }
}
