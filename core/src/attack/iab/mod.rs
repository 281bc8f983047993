//! Input-Aware Dynamic attack (IAB): a generator makes a per-image pattern and a mask network a
//! per-image mask; `x' = x + (G(x) - x) * M(x)`.
//!
//! The networks follow the reference code: an encoder of three steps of two 3x3 conv blocks
//! (conv + BN(momentum 0.05) + ReLU) and a 2x2 max-pool, with widths `c, 2c, 4c`; a middle block;
//! a decoder of three steps of a bilinear x2 upsampling and two conv blocks halving the width, the
//! last block without ReLU; output `tanh(x) / (2 + 1e-7) + 0.5`. The mask network is the same
//! with one output channel, thresholded by `tanh(20 m - 10) / (2 + 1e-7) + 0.5`.
//!
//! In three files: the networks ([`generator`]), the mask network's pre-training ([`mask`]) and
//! the hooks that train the generator with the classifier ([`hooks`]).

pub mod generator;
pub mod hooks;
pub mod mask;

pub use generator::*;
pub use hooks::*;
pub use mask::*;
