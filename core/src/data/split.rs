//! Seeded splits.
//!
//! - [`holdout`]: a fraction of the training set held out *before* poisoning; the attacker never
//!   sees it, and it later becomes the defender's clean, unlabeled data.
//! - [`per_class_holdout`]: `n` images of every class of the training set held out instead of a
//!   fraction (the supplement's ImageNet-10 split: 300 of each class).
//! - [`per_class_slice`]: the first `n` images of each class (in a seeded order) of a test set, the
//!   rest being used for evaluation (the GTSRB protocol for the defender's data).
//! - [`fraction_per_class`]: a fraction of each class of a test set (in a seeded order), the rest
//!   evaluating (the authors' GTSRB split: `val_frac` of every class).

use super::{DataSpec, ImageSet, TrainTest};
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Indices of a split of one set into two disjoint parts, sorted ascending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The part the attacker (or trainer) uses.
    pub keep: Vec<usize>,
    /// The held-out part.
    pub held_out: Vec<usize>,
}

/// Indices of `set` grouped by class.
fn by_class(set: &ImageSet) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); set.num_classes];
    for (i, &l) in set.labels.iter().enumerate() {
        groups[l as usize].push(i);
    }
    groups
}

/// The split whose held-out part is `held_out` (any order) and whose kept part is the rest.
fn complement(n: usize, mut held_out: Vec<usize>) -> Split {
    held_out.sort_unstable();
    let mut is_held = vec![false; n];
    for &i in &held_out {
        is_held[i] = true;
    }
    let keep = (0..n).filter(|&i| !is_held[i]).collect();
    Split { keep, held_out }
}

/// Holds out `round(fraction * n)` images, stratified by class so every class keeps its share.
pub fn holdout(set: &ImageSet, fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::config(
            "holdout",
            format!("fraction must be in [0, 1); got {fraction}"),
        ));
    }
    let mut rng = Rng::from_parts(&[seed, 0x5EED_5B17]);
    let mut by_class = by_class(set);
    let total = (fraction * set.len() as f64).round() as usize;
    // Largest-remainder apportionment of `total` over classes.
    let exact: Vec<f64> = by_class.iter().map(|v| v.len() as f64 * fraction).collect();
    let mut quota: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..quota.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.partial_cmp(&ra)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut missing = total.saturating_sub(quota.iter().sum());
    for &c in order.iter().cycle().take(order.len() * 2) {
        if missing == 0 {
            break;
        }
        if quota[c] < by_class[c].len() {
            quota[c] += 1;
            missing -= 1;
        }
    }
    let mut held_out = Vec::with_capacity(total);
    for (c, members) in by_class.iter_mut().enumerate() {
        rng.shuffle(members);
        held_out.extend_from_slice(&members[..quota[c]]);
    }
    if set.len() - held_out.len() < 2 {
        return Err(Error::config(
            "holdout",
            format!(
                "holding out {} of {} training images leaves {}; at least 2 must remain to train on",
                held_out.len(),
                set.len(),
                set.len() - held_out.len()
            ),
        ));
    }
    Ok(complement(set.len(), held_out))
}

/// Takes `per_class` images of each class (seeded choice) as `held_out`; the rest is `keep`.
pub fn per_class_slice(set: &ImageSet, per_class: usize, seed: u64) -> Result<Split> {
    let mut by_class = by_class(set);
    let mut rng = Rng::from_parts(&[seed, 0xC1A5_5511]);
    let mut held_out = Vec::new();
    for (c, members) in by_class.iter_mut().enumerate() {
        if members.len() < per_class {
            return Err(Error::config(
                "per-class",
                format!(
                    "class {c} has {} images, fewer than the {per_class} requested",
                    members.len()
                ),
            ));
        }
        rng.shuffle(members);
        held_out.extend_from_slice(&members[..per_class]);
    }
    Ok(complement(set.len(), held_out))
}

/// Holds `per_class` images of every class of a training set out for the defender (seeded
/// choice); at least 2 images must remain to train on. An error names `holdout-per-class`.
pub fn per_class_holdout(set: &ImageSet, per_class: usize, seed: u64) -> Result<Split> {
    let counts = by_class(set);
    if let Some((c, members)) = counts.iter().enumerate().find(|(_, m)| m.len() < per_class) {
        return Err(Error::config(
            "holdout-per-class",
            format!(
                "class {c} has {} training images, fewer than the {per_class} to hold out",
                members.len()
            ),
        ));
    }
    let split = per_class_slice(set, per_class, seed)?;
    if split.keep.len() < 2 {
        return Err(Error::config(
            "holdout-per-class",
            format!(
                "holding out {per_class} of every class leaves {} training images; at least 2 \
                 must remain",
                split.keep.len()
            ),
        ));
    }
    Ok(split)
}

/// Takes `round(fraction * n_c)` images of each class `c` (seeded choice) as `held_out`, so the
/// held-out part follows the class sizes; the rest is `keep`. Every class must keep at least one
/// image and the held-out part must not be empty.
pub fn fraction_per_class(set: &ImageSet, fraction: f64, seed: u64) -> Result<Split> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::config(
            "fraction",
            format!("expected a number strictly between 0 and 1, got {fraction}"),
        ));
    }
    let mut by_class = by_class(set);
    let mut rng = Rng::from_parts(&[seed, 0xF4AC_7105]);
    let mut held_out = Vec::new();
    for (c, members) in by_class.iter_mut().enumerate() {
        let take = (fraction * members.len() as f64).round() as usize;
        if !members.is_empty() && take >= members.len() {
            return Err(Error::config(
                "fraction",
                format!(
                    "class {c} has {} images; taking {take} of them leaves none to evaluate on",
                    members.len()
                ),
            ));
        }
        rng.shuffle(members);
        held_out.extend_from_slice(&members[..take]);
    }
    if held_out.is_empty() {
        return Err(Error::config(
            "fraction",
            format!("{fraction} of every class rounds to no image at all"),
        ));
    }
    Ok(complement(set.len(), held_out))
}

/// The split file written beside the model: which training images were held out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitFile {
    pub data: DataSpec,
    pub seed: u64,
    pub holdout: f64,
    /// Set when the run held out this many images of every class instead of a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_per_class: Option<usize>,
    pub split: Split,
}

impl SplitFile {
    /// The defender's images of this run out of its loaded `data`: the test set's slice when the
    /// data spec takes them from there (taken out of `data`), else the images it held out of the
    /// training set.
    pub fn defender_data(&self, data: &mut TrainTest, path: &Path) -> Result<ImageSet> {
        match data.defender.take() {
            Some(d) => Ok(d),
            None => self.held_out_of(&data.train, path),
        }
    }

    /// The held-out images of `train` (the training set this file's data spec reads), after
    /// checking that every index is inside it: a foreign or edited split file is an error naming
    /// `path`, never an out-of-range panic.
    pub fn held_out_of(&self, train: &ImageSet, path: &Path) -> Result<ImageSet> {
        let n = train.len();
        if let Some(&bad) = self.split.held_out.iter().find(|&&i| i >= n) {
            return Err(Error::artifact(
                path,
                format!("held-out index {bad} is outside the training set of {n} images"),
            ));
        }
        Ok(train.subset(&self.split.held_out))
    }
}
