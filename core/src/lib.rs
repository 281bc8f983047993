//! cleanse-core: data readers, ResNet-18, training, and the run reports of the `cleanse` toolkit.
//!
//! Images are NCHW `f32` in `[0, 1]` everywhere; the model normalises them itself
//! (see [`model::Normalization`]). All randomness flows from the run's seed through [`rng::Rng`].
//!
//! Layers, lowest first; a module imports only from layers below its own (`tests/layers.rs`
//! checks the sources):
//! 1. [`error`], [`rng`], [`io`], [`precision`]: errors, randomness, files, the arithmetic's
//!    precision;
//! 2. [`device`], [`cpu`], [`kernels`]: devices, the CPU and GPU kernels;
//! 3. [`model`]: ResNet-18 and its loss;
//! 4. [`memory`]: memory estimates and the memory the process can get;
//! 5. [`data`]: data sets, splits and batches;
//! 6. [`optim`]: SGD, Adam, schedules;
//! 7. [`report`]: the run report's schema and record types;
//! 8. [`engine`]: steps, the epoch loop, checkpoints, run directories, evaluation, the ASR meter;
//! 9. [`train`]: a classifier's training run, with hooks;
//! 10. [`attack`]: the attacks (their hooks and triggers);
//! 11. [`defend`]: the defenses and the cleanser;
//! 12. [`interop`], [`output`], [`table`]: PyTorch files, output folders, results tables;
//! 13. [`protocol_table`]: a protocol's table;
//! 14. [`leaderboard`]: BackdoorBench's questions of a protocol's table.

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
pub mod leaderboard;
pub mod memory;
pub mod model;
pub mod optim;
pub mod output;
pub mod precision;
pub mod protocol_table;
pub mod report;
pub mod rng;
pub mod table;
pub mod train;

pub use error::{Error, Result};
