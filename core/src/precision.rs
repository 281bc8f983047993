//! The arithmetic precision of training (`--precision`): f32 everywhere, or the convolutions in
//! f16 or bf16 with everything else in f32.
//!
//! Reduced precision here is what PyTorch calls autocast with f32 master weights: the model's
//! parameters, its batch norms, the logits, the loss and the optimiser stay f32; inside a
//! trainee's forward (the engine's `Trainee::autocast`) each convolution casts its input and
//! weight to the reduced type, convolves there and casts its output back. The casts are autodiff
//! operations, so the weight's gradient arrives in f32. f16's narrow range needs the loss scaled
//! (the engine's `LossScale`); bf16 has f32's range and needs none. Which devices can
//! compute in which: [`crate::device::Selected::with_precision`].
//!
//! Where it runs: on GPUs only. The CPU backend's kernels compute in f32 (and a CPU has no
//! faster f16 arithmetic for them to use); WGSL and Vulkan have f16 arithmetic where the adapter
//! offers it (`shader-f16`) but no bf16 arithmetic; CUDA has both.

use crate::{Error, Result};
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// The training arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// Convolutions in f16 (IEEE half), with loss scaling.
    F16,
    /// Convolutions in bfloat16 (f32's exponent, 8-bit mantissa).
    Bf16,
}

impl Precision {
    /// Every member, in the order the command line lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The name the command line and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The float type the convolutions compute in, when it is not f32.
    pub fn reduced(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(FloatDType::F16),
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Whether the loss must be scaled for the gradients to stay in range (f16).
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::config("precision", format!("`{s}`: expected f32, f16 or bf16")))
    }
}

thread_local! {
    static AUTOCAST: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Runs `f` with the convolutions of this thread computing in `precision`'s reduced type (none
/// for f32); the setting before is restored afterwards, also when `f` panics.
pub fn autocast<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<FloatDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(precision.reduced())));
    f()
}

/// The type a convolution on this thread computes in now, when it is not f32 (inside
/// [`autocast`] with f16 or bf16).
pub fn conv_dtype() -> Option<FloatDType> {
    AUTOCAST.with(|a| a.get())
}
