//! cleanse-core: data readers, ResNet-18, training, and the run reports of the `cleanse` toolkit.
//!
//! Images are NCHW `f32` in `[0, 1]` everywhere; the model normalises them itself
//! (see [`model::Normalization`]). All randomness flows from the run's seed through [`rng::Rng`].

pub mod attack;
pub mod cpu;
pub mod data;
pub mod defend;
pub mod device;
pub mod engine;
pub mod error;
pub mod interop;
pub mod io;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod optim;
pub mod output;
pub mod protocol_table;
pub mod report;
pub mod rng;
pub mod table;
pub mod train;

pub use error::{Error, Result};
