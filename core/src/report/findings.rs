//! What a defense records of its own beyond the metrics: Fine-Pruning's search, ANP's masks,
//! the cleanser's realised re-initialisation. Plain data, written by the defenses
//! (`crate::defend`) and read by the viewer; the engine passes them through.

use serde::{Deserialize, Serialize};

/// What a defense found on the defender's data before training, recorded in its report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Findings {
    /// Fine-Pruning's channel ranking and pruning search.
    Fp(Pruning),
    /// ANP's trained masks.
    Anp(MaskSummary),
}

/// One step of the search: the defender's accuracy with `pruned` channels pruned.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneStep {
    pub pruned: usize,
    pub accuracy: f64,
}

/// The search's result, recorded in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pruning {
    /// Channels of the last stage's output.
    pub channels: usize,
    /// Each channel's mean activation (after ReLU) on the defender's images.
    pub activations: Vec<f64>,
    /// The channels from least to most active: the pruning order (ties: lower index first).
    pub order: Vec<usize>,
    /// The defender's accuracy unpruned (`pruned` 0) and after each step tried; the last step
    /// is the one that stopped the search unless every step but the last channel passed.
    pub steps: Vec<PruneStep>,
    /// How many channels are pruned: the first `pruned` of `order`.
    pub pruned: usize,
}

impl Pruning {
    /// The pruned channels.
    pub fn pruned_channels(&self) -> &[usize] {
        &self.order[..self.pruned]
    }
}

/// The masks after training, for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskSummary {
    /// Masks in [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0].
    pub histogram: [usize; 10],
    /// Channels pruned at the threshold in the stem (ResNet-18; PreAct has no BN there), and
    /// in stages 1-4.
    pub pruned_per_stage: [usize; 5],
    /// Channels of all batch norms.
    pub channels: usize,
    pub threshold: f64,
}

/// What the initialisation did, per group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Realised {
    pub groups: Vec<GroupFraction>,
    /// Re-initialised fraction over all conv/linear elements.
    pub total_fraction: f64,
}

/// One group's requested probability and realised fraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupFraction {
    pub group: String,
    pub elements: usize,
    pub requested: f64,
    pub reinitialised: usize,
    pub fraction: f64,
}
