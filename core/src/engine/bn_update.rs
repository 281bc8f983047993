//! Re-estimating a classifier's batch-norm statistics on a set of images (PyTorch's
//! `torch.optim.swa_utils.update_bn`): running means and variances reset, then the cumulative
//! average of the batch statistics over one unaugmented pass. A model whose weights were made
//! rather than trained (a point on MCR's curve) needs the statistics of its own activations.

use crate::data::ImageSet;
use crate::engine::eval::{images_tensor, in_order};
use crate::model::Classifier;
use burn::module::{Module, RunningState};
use burn::prelude::*;
use std::sync::Arc;

/// `model` (an evaluation copy) with every batch norm's running statistics re-estimated on
/// `set` in batches of `batch_size` (a last batch of one image is left out: it has no variance);
/// the weights are unchanged. The result is an evaluation copy; `model` itself is untouched.
pub fn reestimate_batch_norm(
    model: &Classifier,
    set: &Arc<ImageSet>,
    batch_size: usize,
    device: &Device,
) -> Classifier {
    let ad = device.clone().autodiff();
    // `train()` gives fresh running states (and the autodiff device batch statistics need).
    let mut m = model.clone().train().no_grad();
    let mut momenta = Vec::new();
    for (_, bn) in m.batch_norms_mut() {
        let [c] = bn.gamma.shape().dims();
        bn.running_mean = RunningState::new(Tensor::zeros([c], &ad));
        bn.running_var = RunningState::new(Tensor::ones([c], &ad));
        momenta.push(bn.momentum);
    }
    let mut seen = 0usize;
    for b in in_order(set, batch_size) {
        if b.labels.len() < 2 {
            continue;
        }
        // The k-th batch's statistics get weight 1/k: a running mean over batches.
        let momentum = 1.0 / (seen + 1) as f64;
        for (_, bn) in m.batch_norms_mut() {
            bn.momentum = momentum;
        }
        let _ = m.forward(images_tensor(b.images, b.shape, &ad));
        seen += 1;
    }
    for ((_, bn), momentum) in m.batch_norms_mut().into_iter().zip(momenta) {
        bn.momentum = momentum;
    }
    m.valid()
}
