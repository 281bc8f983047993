//! Batches for training and evaluation, prepared on a background thread (decoding is already
//! done; augmentation runs on the rayon pool) while the model trains on the previous batch.

use super::ImageSet;
use super::augment::{self, Augment};
use crate::rng::Rng;
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

/// A batch in host memory: NCHW `f32` in `[0,1]` and labels.
#[derive(Clone, Debug)]
pub struct HostBatch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Position of each image in the set the batch came from.
    pub indices: Vec<usize>,
    pub shape: [usize; 4],
}

/// The planar images at `indices` as `f32` in `[0,1]`, each augmented from its own stream
/// `(seed, epoch, index)`; `image(i)` gives image `i`'s bytes, of shape `[c, h, w]`.
pub fn augmented_images<'a>(
    image: impl Fn(usize) -> &'a [u8] + Sync,
    [c, h, w]: [usize; 3],
    indices: &[usize],
    aug: &Augment,
    seed: u64,
    epoch: u64,
) -> Vec<f32> {
    let n = c * h * w;
    let mut images = vec![0.0f32; indices.len() * n];
    images
        .par_chunks_mut(n)
        .zip(indices.par_iter())
        .for_each(|(out, &i)| {
            let mut rng = Rng::from_parts(&[seed, epoch, i as u64]);
            augment::apply(image(i), c, h, w, aug, &mut rng, out);
        });
    images
}

/// Builds one batch of the images at `indices`.
pub fn make_batch(
    set: &ImageSet,
    indices: &[usize],
    aug: &Augment,
    seed: u64,
    epoch: u64,
) -> HostBatch {
    let shape = [set.channels, set.height, set.width];
    let images = augmented_images(|i| set.image(i), shape, indices, aug, seed, epoch);
    HostBatch {
        images,
        labels: indices.iter().map(|&i| set.labels[i] as i64).collect(),
        indices: indices.to_vec(),
        shape: [indices.len(), set.channels, set.height, set.width],
    }
}

/// The order of one training epoch: a seeded permutation of `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    Rng::from_parts(&[seed, epoch, 0x0DE7]).permutation(n)
}

/// Splits an order into batches of `batch_size`; a last batch of a single image is dropped
/// (batch normalisation cannot train on it).
pub fn chunk_order(order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    order
        .chunks(batch_size.max(1))
        .filter(|c| c.len() > 1 || order.len() == 1)
        .map(<[usize]>::to_vec)
        .collect()
}

/// A set that batches can be cut from: the engine's data for one loop (labelled images for
/// training and the label-using defenses, [`crate::defend::unlabeled::UnlabeledImages`] for the
/// cleanser).
pub trait Batches: Send + Sync + 'static {
    /// One batch in host memory.
    type Batch: Send + 'static;
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batch of `indices`, each image augmented from its own stream `(seed, epoch, index)`.
    fn batch(&self, indices: &[usize], aug: &Augment, seed: u64, epoch: u64) -> Self::Batch;
}

impl Batches for ImageSet {
    type Batch = HostBatch;
    fn len(&self) -> usize {
        ImageSet::len(self)
    }
    fn batch(&self, indices: &[usize], aug: &Augment, seed: u64, epoch: u64) -> HostBatch {
        make_batch(self, indices, aug, seed, epoch)
    }
}

/// A labelled set whose images each appear `times` times per epoch: a method that counts
/// iterations rather than epochs (ANP) walks it in rounds of many batches. Item `i` is image
/// `i % n`, augmented from its own stream, so the repeats of an image differ.
pub struct Repeated {
    pub set: Arc<ImageSet>,
    pub times: usize,
}

impl Batches for Repeated {
    type Batch = HostBatch;
    fn len(&self) -> usize {
        self.set.len() * self.times
    }
    fn batch(&self, indices: &[usize], aug: &Augment, seed: u64, epoch: u64) -> HostBatch {
        let set = &self.set;
        let n = set.len().max(1);
        let shape = [set.channels, set.height, set.width];
        let images = augmented_images(|i| set.image(i % n), shape, indices, aug, seed, epoch);
        HostBatch {
            images,
            labels: indices.iter().map(|&i| set.labels[i % n] as i64).collect(),
            indices: indices.iter().map(|&i| i % n).collect(),
            shape: [indices.len(), set.channels, set.height, set.width],
        }
    }
}

/// Streams the batches of `chunks`, at most `prefetch` ahead of the consumer.
pub fn stream<S: Batches>(
    set: Arc<S>,
    chunks: Vec<Vec<usize>>,
    aug: Augment,
    seed: u64,
    epoch: u64,
    prefetch: usize,
) -> Receiver<S::Batch> {
    let (tx, rx) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for c in chunks {
            if tx.send(set.batch(&c, &aug, seed, epoch)).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{SyntheticConfig, generate};

    #[test]
    fn batches_cover_every_index_once_and_are_deterministic() {
        let set = Arc::new(
            generate(&SyntheticConfig {
                train_size: 50,
                test_size: 2,
                ..Default::default()
            })
            .train,
        );
        let order = epoch_order(50, 3, 1);
        assert_eq!(order, epoch_order(50, 3, 1));
        assert_ne!(order, epoch_order(50, 3, 2));
        let chunks = chunk_order(&order, 16);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![16, 16, 16, 2]
        );
        let a: Vec<HostBatch> = stream(
            set.clone(),
            chunks.clone(),
            Augment::standard(true),
            3,
            1,
            2,
        )
        .iter()
        .collect();
        let b: Vec<HostBatch> = stream(set.clone(), chunks, Augment::standard(true), 3, 1, 2)
            .iter()
            .collect();
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.images, y.images);
            assert_eq!(x.labels, y.labels);
        }
        assert_eq!(a[0].shape, [16, 3, 32, 32]);
        assert_eq!(a[0].labels[0], set.labels[a[0].indices[0]] as i64);
    }

    #[test]
    fn single_leftover_image_is_dropped() {
        assert_eq!(chunk_order(&[0, 1, 2], 2), vec![vec![0, 1]]);
    }
}
