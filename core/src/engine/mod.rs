//! The one training engine. A method supplies a [`step::Step`] (how a batch becomes a loss and
//! an update); the engine supplies the rest: the run directory's life ([`run_dir`]), batching,
//! augmentation and schedules ([`driver::LoopPlan`]), per-epoch clean accuracy and ASR, progress
//! events ([`observer`]), a checkpoint after every epoch, resume and the atomic report
//! ([`driver`]). Training, the attacks, the cleanser and every defense run on it; the browser
//! demo drives the same steps asynchronously.

pub mod async_driver;
pub mod bn_update;
pub mod checkpoint;
pub mod driver;
pub mod eval;
pub mod meter;
pub mod observer;
pub mod run_dir;
pub mod run_files;
pub mod step;

pub use driver::{Evaluation, LoopPlan, run_batches, run_epochs};
pub use observer::{Observer, SilentObserver};
pub use run_dir::{RunDir, files};
pub use step::{At, ClassifierStep, Step, StepOutput, Trainee};
