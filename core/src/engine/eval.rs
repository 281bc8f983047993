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

/// The images of `set` in order, unaugmented, in batches of `batch_size` (the last may be
/// smaller), prefetched.
pub(crate) fn in_order(
    set: &Arc<ImageSet>,
    batch_size: usize,
) -> impl Iterator<Item = crate::data::batcher::HostBatch> {
    let chunks: Vec<Vec<usize>> = (0..set.len())
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    stream(set.clone(), chunks, Augment::NONE, 0, 0, 2).into_iter()
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
    let mut correct = 0usize;
    for b in in_order(set, batch_size) {
        let x = images_tensor(b.images, b.shape, device);
        let y = labels_tensor(b.labels, device);
        correct += crate::model::loss::count_correct(model.forward(x), y);
    }
    correct as f64 / set.len() as f64
}

/// The class `model` predicts for each image of `set`, in order.
pub fn predictions(
    model: &Classifier,
    set: &Arc<ImageSet>,
    batch_size: usize,
    device: &Device,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(set.len());
    for b in in_order(set, batch_size) {
        let x = images_tensor(b.images, b.shape, device);
        let logits = model.forward(x);
        let [n, _] = logits.dims();
        let pred = logits.argmax(1).reshape([n]).into_data();
        out.extend(pred.iter::<i64>().map(|p| p as usize));
    }
    out
}

/// Per-class view of predictions on labelled images: each class's accuracy (`None` for a class
/// with no images) and the fraction of all images predicted as each class.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PerClass {
    pub accuracy: Vec<Option<f64>>,
    pub predicted_fraction: Vec<f64>,
}

impl PerClass {
    pub fn new(labels: &[u16], predicted: &[usize], num_classes: usize) -> Self {
        let (mut right, mut count, mut said) = (
            vec![0usize; num_classes],
            vec![0usize; num_classes],
            vec![0usize; num_classes],
        );
        for (&y, &p) in labels.iter().zip(predicted) {
            let y = y as usize;
            count[y] += 1;
            right[y] += usize::from(y == p);
            if p < num_classes {
                said[p] += 1;
            }
        }
        let n = labels.len().max(1) as f64;
        PerClass {
            accuracy: (0..num_classes)
                .map(|c| (count[c] > 0).then(|| right[c] as f64 / count[c] as f64))
                .collect(),
            predicted_fraction: said.iter().map(|&k| k as f64 / n).collect(),
        }
    }
}
