//! Progress events of a run; the CLI draws progress bars with them.

use crate::report::EpochRecord;

/// Receives progress.
pub trait Observer {
    /// A run starts or resumes at `first_epoch` (0-based) of `epochs`, with `batches` per epoch.
    fn start(&mut self, _first_epoch: usize, _epochs: usize, _batches: usize) {}
    /// A training batch finished: running loss, running accuracy (or agreement with the
    /// teacher), images/s so far this epoch.
    fn batch(&mut self, _epoch: usize, _batch: usize, _loss: f64, _acc: f64, _images_per_sec: f64) {
    }
    /// An epoch finished and was checkpointed.
    fn epoch(&mut self, _record: &EpochRecord) {}
    /// A run nested in another one (LC's clean model) is over; progress display can end.
    fn finish(&mut self) {}
}

/// An observer that ignores everything.
pub struct SilentObserver;
impl Observer for SilentObserver {}
