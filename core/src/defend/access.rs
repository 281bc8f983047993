//! What a defense may see of the defender's held-out split, and that data as it sees it.

use super::unlabeled::UnlabeledImages;
use crate::Result;
use crate::data::ImageSet;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a defense may see of the defender's held-out split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefenderAccess {
    /// The images only (the cleanser: [`super::unlabeled::UnlabeledImages`] has no labels).
    Images,
    /// Images and labels (the baselines, as the method spec allows).
    Labelled,
}

/// The defender's held-out split as a defense may see it (never the test images).
pub enum DefenderData {
    /// Images without labels.
    Images(UnlabeledImages),
    /// Images with their labels.
    Labelled(ImageSet),
}

impl DefenderData {
    /// The labelled images of a baseline defense, which trains on them: an error naming the
    /// suspect's run directory when that run held out none.
    pub(crate) fn labelled(self, suspect: &Path) -> Result<ImageSet> {
        match self {
            DefenderData::Labelled(set) if !set.is_empty() => Ok(set),
            DefenderData::Labelled(_) => Err(crate::Error::config(
                "model",
                format!(
                    "{}: the model's run held out no labelled images for the defender \
                     (train it with --holdout above 0)",
                    suspect.display()
                ),
            )),
            DefenderData::Images(_) => unreachable!("a baseline defense is given labels"),
        }
    }
}
