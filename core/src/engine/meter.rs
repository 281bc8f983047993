//! Measuring an attack success rate: the test images whose label an attack changes (labelled
//! with its target) and the trigger stamped on them. The engine measures through [`Stamp`]; the
//! attacks implement it (`attack::Backdoor`), so the engine knows nothing of them.

use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::stream;
use crate::model::Classifier;
use burn::prelude::*;
use std::sync::Arc;

/// A test-time trigger: what turns `[N, C, H, W]` images in `[0, 1]` into triggered ones.
pub trait Stamp: Send + Sync {
    fn stamp(&self, x: Tensor<4>) -> Tensor<4>;
}

/// Measures the ASR of models against one trigger.
#[derive(Clone)]
pub struct AsrMeter {
    /// The triggered images' clean versions, labelled with the attack's target.
    pub set: Arc<ImageSet>,
    pub trigger: Arc<dyn Stamp>,
    /// Evaluation batch size.
    pub batch_size: usize,
    device: Device,
}

impl AsrMeter {
    pub fn new(
        set: Arc<ImageSet>,
        trigger: Arc<dyn Stamp>,
        batch_size: usize,
        device: &Device,
    ) -> Self {
        AsrMeter {
            set,
            trigger,
            batch_size,
            device: device.clone(),
        }
    }

    /// The fraction of the triggered images `model` (an evaluation copy) sends to the target.
    pub fn asr(&self, model: &Classifier) -> f64 {
        triggered_accuracy(
            model,
            &self.set,
            &|x| self.trigger.stamp(x),
            self.batch_size,
            &self.device,
        )
    }
}

/// Fraction of `set` (the test images an attack changes, labelled with its target) that `model`
/// assigns to the target after `stamp`.
pub fn triggered_accuracy(
    model: &Classifier,
    set: &Arc<ImageSet>,
    stamp: &dyn Fn(Tensor<4>) -> Tensor<4>,
    batch_size: usize,
    device: &Device,
) -> f64 {
    if set.is_empty() {
        return 0.0;
    }
    let idx: Vec<usize> = (0..set.len()).collect();
    let chunks: Vec<Vec<usize>> = idx
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut correct = 0;
    for b in stream(set.clone(), chunks, Augment::NONE, 0, 0, 2) {
        let x = stamp(super::eval::images_tensor(b.images, b.shape, device));
        let y = super::eval::labels_tensor(b.labels, device);
        correct += crate::model::loss::count_correct(model.forward(x), y);
    }
    correct as f64 / set.len() as f64
}
