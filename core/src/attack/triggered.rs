//! Already-triggered test images: a folder the attacker (or BackdoorBench's export of its
//! poisoned test set) supplies, each image labelled with the class the attack wants. How the ASR
//! of a model with an unknown trigger is measured; a run records the folder in `triggered.json`
//! so that every command measuring it uses the same images.

use crate::data::{ImageSet, folder};
use crate::io::read_json;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file a run names its triggered images in.
pub const FILE: &str = "triggered.json";

/// A folder of triggered images (`DIR/<class index>/*.png`) and the side they are read at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggeredData {
    /// The folder, absolute.
    pub path: PathBuf,
    pub image_size: usize,
}

impl TriggeredData {
    /// The folder `dir` (made absolute, so a run found elsewhere still finds it).
    pub fn new(dir: &Path, image_size: usize) -> Result<TriggeredData> {
        let path = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        Ok(TriggeredData { path, image_size })
    }

    /// The triggered images named in run directory `dir`, if it names any.
    pub fn read(dir: &Path) -> Result<Option<TriggeredData>> {
        let path = dir.join(FILE);
        if !path.is_file() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// The images, for a model of `num_classes` classes whose test images are `shape`
    /// (`[C, H, W]`).
    pub fn load(&self, num_classes: usize, shape: [usize; 3]) -> Result<ImageSet> {
        let set = folder::load_indexed(&self.path, self.image_size, num_classes)?;
        let got = [set.channels, set.height, set.width];
        if got != shape {
            return Err(Error::NoData {
                path: self.path.clone(),
                reason: format!("triggered images of shape {got:?}; the test images are {shape:?}"),
            });
        }
        Ok(set)
    }
}
