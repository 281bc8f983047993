//! Training a classifier, clean or with an attack's hooks: the run's configuration, its data
//! split and the step, on the engine.

pub mod run;

pub use run::{TrainConfig, train};
