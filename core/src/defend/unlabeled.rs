//! The defender's data without labels: a type that has no labels to read, so the cleanser cannot
//! use them by accident.

use crate::data::ImageSet;
use crate::data::augment::Augment;
use crate::data::batcher::{Batches, augmented_images};

/// Decoded 8-bit planar images, nothing else.
#[derive(Clone, Debug, PartialEq)]
pub struct UnlabeledImages {
    pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl UnlabeledImages {
    /// Drops the labels of `set`.
    pub fn from_set(set: ImageSet) -> Self {
        UnlabeledImages {
            pixels: set.pixels,
            channels: set.channels,
            height: set.height,
            width: set.width,
        }
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> UnlabeledImages {
        UnlabeledImages {
            pixels: indices
                .iter()
                .flat_map(|&i| self.image(i))
                .copied()
                .collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }
}

/// A batch of images in `[0,1]`, NCHW, without labels.
#[derive(Clone, Debug)]
pub struct ImageBatch {
    pub images: Vec<f32>,
    pub shape: [usize; 4],
}

/// Builds the batch of `indices`, augmented per image from `(seed, epoch, index)`.
pub fn make_batch(
    set: &UnlabeledImages,
    indices: &[usize],
    aug: &Augment,
    seed: u64,
    epoch: u64,
) -> ImageBatch {
    let shape = [set.channels, set.height, set.width];
    let images = augmented_images(|i| set.image(i), shape, indices, aug, seed, epoch);
    ImageBatch {
        images,
        shape: [indices.len(), set.channels, set.height, set.width],
    }
}

impl Batches for UnlabeledImages {
    type Batch = ImageBatch;
    fn len(&self) -> usize {
        UnlabeledImages::len(self)
    }
    fn batch(&self, indices: &[usize], aug: &Augment, seed: u64, epoch: u64) -> ImageBatch {
        make_batch(self, indices, aug, seed, epoch)
    }
}
