//! A deterministic synthetic data set for tests and smoke runs.
//!
//! Class `c` is a smooth colour gradient whose hue and stripe orientation depend on `c`,
//! plus per-image noise and a random offset: easy to learn, yet not learnable from a single
//! pixel, and the same bytes for the same config on every machine.

use super::{ImageSet, TrainTest, check_side};
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Sizes and seed of the synthetic set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    pub train_size: usize,
    pub test_size: usize,
    pub num_classes: usize,
    pub side: usize,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            train_size: 512,
            test_size: 128,
            num_classes: 10,
            side: 32,
            seed: 0,
        }
    }
}

/// The most images one synthetic split may hold: ten times CIFAR-10's training set, far beyond any
/// smoke run, and small enough that a typo cannot ask for terabytes.
pub const MAX_IMAGES: usize = 1_000_000;

/// The most bytes a synthetic data set may occupy in memory (both splits).
const MAX_BYTES: usize = 8 << 30;

impl SyntheticConfig {
    /// Checks sizes before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        for (name, n) in [
            ("synthetic-train", self.train_size),
            ("synthetic-test", self.test_size),
        ] {
            if n == 0 || n > MAX_IMAGES {
                return Err(Error::config(
                    name,
                    format!("must be in 1..={MAX_IMAGES} images; got {n}"),
                ));
            }
        }
        if !(2..=1000).contains(&self.num_classes) {
            return Err(Error::config(
                "synthetic-classes",
                format!("must be in 2..=1000; got {}", self.num_classes),
            ));
        }
        check_side("synthetic-side", self.side)?;
        let bytes = (self.train_size + self.test_size) * 3 * self.side * self.side;
        if bytes > MAX_BYTES {
            return Err(Error::config(
                "synthetic-train",
                format!(
                    "{} + {} images of {s}x{s} would take {:.1} GiB; the limit is 8 GiB",
                    self.train_size,
                    self.test_size,
                    bytes as f64 / (1u64 << 30) as f64,
                    s = self.side
                ),
            ));
        }
        Ok(())
    }
}

fn make(cfg: &SyntheticConfig, n: usize, stream: u64) -> ImageSet {
    let side = cfg.side;
    let plane = side * side;
    let mut pixels = Vec::with_capacity(n * 3 * plane);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % cfg.num_classes;
        let mut rng = Rng::from_parts(&[cfg.seed, stream, i as u64]);
        let angle = std::f32::consts::PI * c as f32 / cfg.num_classes as f32;
        let (s, co) = angle.sin_cos();
        let freq = 2.0 + (c % 3) as f32;
        let phase = rng.next_f32() * std::f32::consts::TAU;
        let hue = [
            0.5 + 0.4 * (c as f32 * 1.3).sin(),
            0.5 + 0.4 * (c as f32 * 2.1 + 1.0).sin(),
            0.5 + 0.4 * (c as f32 * 0.7 + 2.0).sin(),
        ];
        for (ch, h) in hue.iter().enumerate() {
            for y in 0..side {
                for x in 0..side {
                    let u = (x as f32 * co + y as f32 * s) / side as f32;
                    let stripe = (std::f32::consts::TAU * freq * u + phase).sin();
                    let noise = rng.next_f32() - 0.5;
                    let v = h + 0.3 * stripe * if ch == 1 { -1.0 } else { 1.0 } + 0.25 * noise;
                    pixels.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
                }
            }
        }
        labels.push(c as u16);
    }
    ImageSet {
        pixels,
        labels,
        channels: 3,
        height: side,
        width: side,
        num_classes: cfg.num_classes,
        class_names: (0..cfg.num_classes)
            .map(|c| format!("synthetic-{c}"))
            .collect(),
    }
}

/// Generates the training and test sets.
pub fn generate(cfg: &SyntheticConfig) -> TrainTest {
    TrainTest {
        train: make(cfg, cfg.train_size, 1),
        test: make(cfg, cfg.test_size, 2),
        defender: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_seed_dependent() {
        let cfg = SyntheticConfig {
            train_size: 40,
            test_size: 20,
            ..Default::default()
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.train, b.train);
        assert_eq!(a.train.class_counts(), vec![4; 10]);
        assert_eq!(a.train.pixels.len(), 40 * 3 * 32 * 32);
        assert_ne!(a.train.pixels, a.test.pixels[..].repeat(2));
        let c = generate(&SyntheticConfig { seed: 1, ..cfg });
        assert_ne!(a.train.pixels, c.train.pixels);
    }

    #[test]
    fn sizes_are_checked_before_allocation() {
        let ok = SyntheticConfig::default();
        assert!(ok.validate().is_ok());
        for (cfg, flag) in [
            (
                SyntheticConfig {
                    train_size: 0,
                    ..ok.clone()
                },
                "synthetic-train",
            ),
            (
                SyntheticConfig {
                    test_size: 0,
                    ..ok.clone()
                },
                "synthetic-test",
            ),
            (
                SyntheticConfig {
                    num_classes: 1,
                    ..ok.clone()
                },
                "synthetic-classes",
            ),
            (
                SyntheticConfig {
                    side: 0,
                    ..ok.clone()
                },
                "synthetic-side",
            ),
            (
                SyntheticConfig {
                    side: 100_000,
                    ..ok.clone()
                },
                "synthetic-side",
            ),
            (
                SyntheticConfig {
                    train_size: MAX_IMAGES,
                    side: 1024,
                    ..ok.clone()
                },
                "synthetic-train",
            ),
        ] {
            let err = cfg.validate().expect_err(flag).to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
