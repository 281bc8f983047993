//! The hand-written WGSL kernels of cleanse (trigger stamping, blending, warping, the
//! distillation loss), exposed as source constants. Each kernel lands with its plain-tensor twin
//! in `cleanse-core` and a naga validation test here.

/// Names of the kernels this crate ships.
pub const KERNELS: &[&str] = &[];
