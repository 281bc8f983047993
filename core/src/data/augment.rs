//! Seeded augmentation: random crop with zero padding and horizontal flip.
//!
//! Each image draws from its own stream `(seed, epoch, index)`, so the result does not depend on
//! batch order, thread count, or whether the run was resumed.

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Augmentation settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding before a random crop back to the original size (0 = no crop). Supplement: 4.
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2 (off for GTSRB).
    pub flip: bool,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Augment = Augment {
        crop_padding: 0,
        flip: false,
    };

    /// The supplement's training augmentation: crop with padding 4, and flip where allowed.
    pub fn standard(flip: bool) -> Self {
        Augment {
            crop_padding: 4,
            flip,
        }
    }

    /// Checks `crop_padding` against [`super::MAX_IMAGE_SIDE`] (a padded image is allocated per
    /// batch).
    pub fn validate(&self) -> crate::Result<()> {
        if self.crop_padding > super::MAX_IMAGE_SIDE {
            return Err(crate::Error::config(
                "crop-padding",
                format!(
                    "must be in 0..={} pixels; got {}",
                    super::MAX_IMAGE_SIDE,
                    self.crop_padding
                ),
            ));
        }
        Ok(())
    }

    /// Whether this changes anything.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.flip
    }
}

/// Converts planar `u8` pixels to `f32` in `[0,1]`, augmented with `rng` (`out.len() == src.len()`).
pub fn apply(
    src: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    aug: &Augment,
    rng: &mut Rng,
    out: &mut [f32],
) {
    const SCALE: f32 = 1.0 / 255.0;
    if aug.is_identity() {
        for (o, &s) in out.iter_mut().zip(src) {
            *o = s as f32 * SCALE;
        }
        return;
    }
    let p = aug.crop_padding as isize;
    // Offsets into the padded image, as torchvision's RandomCrop(size, padding) draws them.
    let (dy, dx) = if p > 0 {
        (
            rng.below(2 * p as usize + 1) as isize - p,
            rng.below(2 * p as usize + 1) as isize - p,
        )
    } else {
        (0, 0)
    };
    let flip = aug.flip && rng.bernoulli(0.5);
    let plane = height * width;
    for c in 0..channels {
        let sp = &src[c * plane..(c + 1) * plane];
        let op = &mut out[c * plane..(c + 1) * plane];
        for y in 0..height {
            let sy = y as isize + dy;
            for x in 0..width {
                let xx = if flip { width - 1 - x } else { x };
                let sx = xx as isize + dx;
                op[y * width + x] =
                    if sy >= 0 && sy < height as isize && sx >= 0 && sx < width as isize {
                        sp[sy as usize * width + sx as usize] as f32 * SCALE
                    } else {
                        0.0
                    };
            }
        }
    }
}

/// Mixup within a batch (Zhang et al. 2018), as consistent distillation uses it (Beyer et al.
/// 2022, "function matching"): image `i` becomes `l_i x_i + (1 - l_i) x_pi(i)` with `pi` a random
/// permutation of the batch and `l_i` uniform in `[0, 1)`, both drawn from `rng`. The teacher
/// and the student see the same mixed images, so no label is involved. `images` holds the batch
/// as consecutive images of `per_image` values each.
pub fn mixup(images: &mut [f32], per_image: usize, rng: &mut Rng) {
    if per_image == 0 {
        return;
    }
    let n = images.len() / per_image;
    if n < 2 {
        return;
    }
    let partner = rng.permutation(n);
    let lambdas: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
    let original = images.to_vec();
    for (i, out) in images.chunks_mut(per_image).enumerate() {
        let (l, other) = (lambdas[i], &original[partner[i] * per_image..][..per_image]);
        let own = &original[i * per_image..][..per_image];
        for ((o, &a), &b) in out.iter_mut().zip(own).zip(other) {
            *o = l * a + (1.0 - l) * b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        (0..3 * 8 * 8).map(|i| (i * 7 % 251) as u8 + 1).collect()
    }

    #[test]
    fn identity_is_exact_scaling() {
        let src = image();
        let mut out = vec![0.0; src.len()];
        apply(&src, 3, 8, 8, &Augment::NONE, &mut Rng::new(0), &mut out);
        for (o, s) in out.iter().zip(&src) {
            assert!((o - *s as f32 / 255.0).abs() < 1e-7);
        }
    }

    #[test]
    fn same_stream_same_result_and_streams_differ() {
        let src = image();
        let aug = Augment::standard(true);
        let run = |seed: u64| {
            let mut out = vec![0.0; src.len()];
            apply(
                &src,
                3,
                8,
                8,
                &aug,
                &mut Rng::from_parts(&[seed, 1, 5]),
                &mut out,
            );
            out
        };
        assert_eq!(run(1), run(1));
        let distinct = (0..8).map(run).filter(|o| *o != run(1)).count();
        assert!(distinct >= 5, "augmentation barely varies across streams");
    }

    #[test]
    fn crop_shifts_content_and_pads_with_zeros() {
        let src = image();
        let aug = Augment {
            crop_padding: 4,
            flip: false,
        };
        let mut saw_shift = false;
        for s in 0..20 {
            let mut out = vec![0.0; src.len()];
            apply(&src, 3, 8, 8, &aug, &mut Rng::new(s), &mut out);
            // Every output pixel is either padding or some source pixel's value.
            let zeros = out.iter().filter(|v| **v == 0.0).count();
            if zeros > 0 {
                saw_shift = true;
            }
            for v in out.iter().filter(|v| **v != 0.0) {
                assert!(src.iter().any(|s| (*s as f32 / 255.0 - v).abs() < 1e-7));
            }
        }
        assert!(saw_shift);
    }

    #[test]
    fn flip_mirrors_rows() {
        let src = image();
        let aug = Augment {
            crop_padding: 0,
            flip: true,
        };
        let mut flipped = None;
        for s in 0..20 {
            let mut out = vec![0.0; src.len()];
            apply(&src, 3, 8, 8, &aug, &mut Rng::new(s), &mut out);
            if (out[0] - src[0] as f32 / 255.0).abs() > 1e-6 {
                flipped = Some(out);
                break;
            }
        }
        let out = flipped.expect("no flip in 20 draws");
        for y in 0..8 {
            for x in 0..8 {
                assert!((out[y * 8 + x] - src[y * 8 + 7 - x] as f32 / 255.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn mixup_blends_each_image_with_one_partner_of_the_batch() {
        // Four constant images with distinct values: every mixed image must be a convex
        // combination of its own value and one other image's, varying across images.
        let per = 12;
        let values = [0.0f32, 0.25, 0.5, 1.0];
        let batch: Vec<f32> = values.iter().flat_map(|&v| vec![v; per]).collect();
        let mut mixed = batch.clone();
        mixup(&mut mixed, per, &mut Rng::new(7));
        assert_ne!(mixed, batch);
        for (i, img) in mixed.chunks(per).enumerate() {
            assert!(
                img.iter().all(|&v| (v - img[0]).abs() < 1e-7),
                "not one blend per image"
            );
            let own = values[i];
            let explained = values.iter().any(|&other| {
                let d = other - own;
                if d.abs() < 1e-9 {
                    (img[0] - own).abs() < 1e-6
                } else {
                    let l = (img[0] - other) / (own - other);
                    (0.0..=1.0).contains(&l)
                }
            });
            assert!(
                explained,
                "image {i} ({}) is no blend of its own and another",
                img[0]
            );
        }
        // Seeded: the same stream mixes the same way.
        let mut again = batch.clone();
        mixup(&mut again, per, &mut Rng::new(7));
        assert_eq!(again, mixed);
        // A single image is left alone.
        let mut one = vec![0.5f32; per];
        mixup(&mut one, per, &mut Rng::new(7));
        assert_eq!(one, vec![0.5f32; per]);
    }
}
