//! Models trained elsewhere: PyTorch state dicts in, cleansed models out.
//!
//! [`naming`] holds the name table of the layouts cleanse knows (BackdoorBench's, the authors'
//! torchvision-style one, its own); [`state_dict`] converts between a state dict and a
//! [`crate::model::Classifier`]; with the `torch-files` feature, [`files`] reads PyTorch
//! checkpoints (`.pt`/`.pth`, through Burn's own store) and safetensors files, and writes
//! safetensors; [`run`] writes an imported model as a run directory.

#[cfg(feature = "torch-files")]
pub mod files;
pub mod naming;
pub mod run;
pub mod state_dict;

pub use naming::Naming;
pub use run::{Provenance, RunSetup, write_run};
pub use state_dict::{ImportOptions, Imported, NamedTensor, StateDict, Values, export, import};
