//! Data sets: readers (CIFAR-10 binary, GTSRB, image folders, synthetic), splits, augmentation
//! and the batcher that feeds training.
//!
//! Every reader returns an [`ImageSet`]: decoded 8-bit images in planar CHW order (the CIFAR-10
//! record layout), decoded once and kept in memory.

pub mod augment;
pub mod batcher;
pub mod cifar10;
pub mod folder;
pub mod gtsrb;
pub mod records;
pub mod split;
pub mod synthetic;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The largest image side any reader or generator accepts (`--image-size`, `--synthetic-side`).
///
/// The model keeps every activation of a batch in memory: at 1024x1024 one width-64 ResNet-18
/// activation map is 256 MiB per image, so larger sides cannot train on any machine we target;
/// the bound turns such a typo into an error instead of an allocation failure.
pub const MAX_IMAGE_SIDE: usize = 1024;

/// Checks an image side setting: `1..=MAX_IMAGE_SIDE`.
pub fn check_side(name: &str, side: usize) -> Result<()> {
    if side == 0 || side > MAX_IMAGE_SIDE {
        return Err(Error::config(
            name,
            format!("must be in 1..={MAX_IMAGE_SIDE} pixels; got {side}"),
        ));
    }
    Ok(())
}

/// Decoded images with labels.
///
/// `pixels` holds `len() * channels * height * width` bytes, image after image, each image
/// planar (all of channel 0, then channel 1, ...), rows top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub labels: Vec<u16>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The planar bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        ImageSet {
            pixels,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        }
    }

    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The classes from the most to the least frequent (ties: lower index first). The supplement
    /// attacks GTSRB with targets among its ten most frequent classes.
    pub fn classes_by_frequency(&self) -> Vec<usize> {
        let counts = self.class_counts();
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by_key(|&c| (std::cmp::Reverse(counts[c]), c));
        order
    }

    /// Appends another set of the same geometry and classes.
    pub fn extend(&mut self, other: ImageSet) {
        debug_assert_eq!(self.image_len(), other.image_len());
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
    }
}

/// The data set kinds the toolkit reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CIFAR-10 binary records (10 classes).
    Cifar10,
    /// GTSRB: official layout or 32x32 binary records (43 classes).
    Gtsrb,
    /// One sub-folder per class, PNG/JPEG/PPM images.
    Folder,
    /// Deterministic synthetic images for tests and smoke runs.
    Synthetic,
}

impl DatasetKind {
    /// Name as used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Gtsrb => "gtsrb",
            DatasetKind::Folder => "folder",
            DatasetKind::Synthetic => "synthetic",
        }
    }

    /// Whether horizontal flips are label-preserving for this data (not for traffic signs).
    pub fn allows_flip(self) -> bool {
        !matches!(self, DatasetKind::Gtsrb)
    }
}

/// Where and how to read a data set. Serialised into every report and checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub kind: DatasetKind,
    /// Directory of the data (unused for synthetic data).
    pub path: Option<PathBuf>,
    /// Side length images are resized to (image folders and official GTSRB).
    pub image_size: usize,
    /// Synthetic data: training and test set sizes and classes.
    pub synthetic: synthetic::SyntheticConfig,
    /// The defender's data taken from the test set instead of held out from the training set:
    /// this many images of each class (a fixed seeded choice), the rest of the test set evaluates
    /// (the supplement's GTSRB protocol). `None`: the whole test set evaluates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defender_per_class: Option<usize>,
    /// The defender's data taken from the test set as this fraction of every class (rounded per
    /// class, a fixed seeded choice), the rest of the test set evaluates: the authors' GTSRB split
    /// (`val_frac: 0.398`). Exclusive with `defender_per_class`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defender_fraction: Option<f64>,
}

impl DataSpec {
    /// A spec for a data set on disk.
    pub fn new(kind: DatasetKind, path: Option<PathBuf>) -> Self {
        DataSpec {
            kind,
            path,
            image_size: 32,
            synthetic: synthetic::SyntheticConfig::default(),
            defender_per_class: None,
            defender_fraction: None,
        }
    }

    /// Whether the defender's data comes from the test set (a per-class count or a fraction of
    /// each class) instead of being held out of the training set.
    pub fn defender_from_test(&self) -> bool {
        self.defender_per_class.is_some() || self.defender_fraction.is_some()
    }

    fn require_path(&self) -> Result<&Path> {
        self.path.as_deref().ok_or_else(|| {
            Error::config(
                "data",
                format!("dataset `{}` needs a data directory", self.kind.name()),
            )
        })
    }

    /// Checks the settings that apply to this kind of data, without reading anything.
    pub fn validate(&self) -> Result<()> {
        if self.defender_per_class == Some(0) {
            return Err(Error::config(
                "defender-per-class",
                "expected at least 1 image per class",
            ));
        }
        if let Some(f) = self.defender_fraction {
            if self.defender_per_class.is_some() {
                return Err(Error::config(
                    "defender-fraction",
                    "give either a count per class (defender-per-class) or a fraction, not both",
                ));
            }
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::config(
                    "defender-fraction",
                    format!("expected a number strictly between 0 and 1, got {f}"),
                ));
            }
        }
        match self.kind {
            DatasetKind::Cifar10 => Ok(()),
            DatasetKind::Gtsrb | DatasetKind::Folder => check_side("image-size", self.image_size),
            DatasetKind::Synthetic => self.synthetic.validate(),
        }
    }

    /// Reads the training and test sets (with `defender_per_class`, the test set less the
    /// defender's images, which come back as `defender`). Either one ending up empty is an error:
    /// a run on it would "complete" with a loss or accuracy of 0 that means nothing.
    pub fn load(&self) -> Result<TrainTest> {
        self.validate()?;
        let mut data = match self.kind {
            DatasetKind::Cifar10 => cifar10::load_dir(self.require_path()?),
            DatasetKind::Gtsrb => gtsrb::load_dir(self.require_path()?, self.image_size),
            DatasetKind::Folder => folder::load_dir(self.require_path()?, self.image_size),
            DatasetKind::Synthetic => Ok(synthetic::generate(&self.synthetic)),
        }?;
        for (set, which) in [(&data.train, "training"), (&data.test, "test")] {
            if set.is_empty() {
                let path = self.path.clone().unwrap_or_else(|| "synthetic".into());
                return Err(Error::NoData {
                    path,
                    reason: format!("the {which} set holds no image"),
                });
            }
        }
        // One fixed choice for every model trained on this data, so that the defenders of a
        // protocol's models all see the same images and the same evaluation set.
        let slice = match (self.defender_per_class, self.defender_fraction) {
            (Some(n), _) => Some((
                "defender-per-class",
                split::per_class_slice(&data.test, n, 0),
            )),
            (None, Some(f)) => Some((
                "defender-fraction",
                split::fraction_per_class(&data.test, f, 0),
            )),
            (None, None) => None,
        };
        if let Some((flag, s)) = slice {
            let s = s.map_err(|e| Error::config(flag, e.to_string()))?;
            if s.keep.is_empty() {
                return Err(Error::config(
                    flag,
                    "the defender's slice takes the whole test set",
                ));
            }
            data.defender = Some(data.test.subset(&s.held_out));
            data.test = data.test.subset(&s.keep);
        }
        Ok(data)
    }

    /// The model normalisation the method spec prescribes for this data.
    pub fn normalization(&self) -> crate::model::Normalization {
        match self.kind {
            DatasetKind::Cifar10 => crate::model::Normalization::cifar10(),
            DatasetKind::Gtsrb => crate::model::Normalization::identity(),
            DatasetKind::Folder => crate::model::Normalization::imagenet(),
            DatasetKind::Synthetic => crate::model::Normalization::identity(),
        }
    }
}

/// A training set and a test set of the same geometry.
#[derive(Clone, Debug)]
pub struct TrainTest {
    pub train: ImageSet,
    pub test: ImageSet,
    /// The defender's images taken from the test set ([`DataSpec::defender_per_class`],
    /// [`DataSpec::defender_fraction`]).
    pub defender: Option<ImageSet>,
}
