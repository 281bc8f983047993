//! Evaluation of a classifier on a set of images.

use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::stream;
use crate::model::Classifier;
use burn::prelude::*;
use std::sync::Arc;

/// Builds the `[N,C,H,W]` image tensor of a host batch.
pub fn images_tensor(images: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(images, shape), device)
}

/// Builds the label tensor of a host batch.
pub fn labels_tensor(labels: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = labels.len();
    Tensor::from_data(TensorData::new(labels, [n]), device)
}

/// Fraction of `set` that `model` classifies correctly, in `[0,1]`.
///
/// `model` should be an evaluation copy (`model.valid()`), living on `device`.
pub fn accuracy(
    model: &Classifier,
    set: &Arc<ImageSet>,
    batch_size: usize,
    device: &Device,
) -> f64 {
    if set.is_empty() {
        return 0.0;
    }
    let order: Vec<usize> = (0..set.len()).collect();
    let chunks: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut correct = 0usize;
    for b in stream(set.clone(), chunks, Augment::NONE, 0, 0, 2) {
        let x = images_tensor(b.images, b.shape, device);
        let y = labels_tensor(b.labels, device);
        correct += super::count_correct(model.forward(x), y);
    }
    correct as f64 / set.len() as f64
}
