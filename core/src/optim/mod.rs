//! The optimisers and learning-rate schedules every training loop uses: SGD and Adam with
//! PyTorch's semantics (their state saved and restored by parameter path), and the schedules.
//! Below the engine: they know tensors and modules, nothing of runs.

pub mod adam;
pub mod loss_scale;
pub mod schedule;
pub mod sgd;

pub use loss_scale::LossScale;
pub use schedule::Schedule;
pub use sgd::{Sgd, SgdConfig};
