//! The run report (`report.json`) that every command writes and the web viewer reads.
//!
//! Versioned by [`SCHEMA_VERSION`]; metrics are fractions in `[0,1]`.

use crate::device::DeviceInfo;
use serde::{Deserialize, Serialize};

/// Version of the report schema.
pub const SCHEMA_VERSION: u32 = 1;

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Accuracy on the (augmented) training batches.
    pub train_acc: f64,
    /// Accuracy on the clean test set.
    pub clean_acc: f64,
    /// Wall-clock seconds of the epoch: training plus evaluation.
    pub seconds: f64,
    /// Seconds spent in evaluation.
    pub eval_seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// Attack success rate on the triggered test images (attacked and defended models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<f64>,
}

/// Sizes of the data a run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub num_classes: usize,
    pub train_size: usize,
    pub holdout_size: usize,
    pub test_size: usize,
}

/// Final metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    pub clean_acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<f64>,
}

/// Whether the run finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Complete,
}

/// The report of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// What produced it: `train`, `attack` (later also `defense`).
    pub kind: String,
    pub status: RunStatus,
    pub tool_version: String,
    /// The full configuration of the run.
    pub config: serde_json::Value,
    /// The attack's configuration (attack runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<serde_json::Value>,
    pub device: DeviceInfo,
    pub data: DataSummary,
    pub epochs: Vec<EpochRecord>,
    /// Present once the run is complete.
    #[serde(rename = "final")]
    pub final_metrics: Option<FinalMetrics>,
    /// Model file, relative to the report's directory.
    pub model_file: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
}

impl Report {
    /// Parses a report, checking its schema version; `name` names the source in errors.
    pub fn from_json(name: &str, text: &str) -> Result<Report, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) => {
                return Err(format!(
                    "{name}: report schema version {v}; this build reads version {SCHEMA_VERSION}"
                ));
            }
            None => {
                return Err(format!(
                    "{name}: not a cleanse report (no `schema_version`)"
                ));
            }
        }
        serde_json::from_value(value).map_err(|e| format!("{name}: malformed report: {e}"))
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
