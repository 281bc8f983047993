//! The run report (`report.json`) that every command writes and the web viewer reads.
//!
//! Versioned by [`SCHEMA_VERSION`]; metrics are fractions in `[0,1]`.

use crate::device::DeviceInfo;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub mod findings;

pub use findings::{Findings, Realised};

/// Version of the report schema. Version 2 made `defense` a typed record; version 1 reports
/// are still read (their cleanser records are converted).
pub const SCHEMA_VERSION: u32 = 2;

/// What a defense run records under `defense`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DefenseRecord {
    /// The defense with all its settings, tagged by `method`: `defend::Defense` as JSON, which
    /// `Defense::of_record` reads back (the report does not interpret it).
    pub config: serde_json::Value,
    /// The suspect model's run directory.
    pub suspect: PathBuf,
    /// Images of the defender's data the defense trained on.
    pub defender_images: usize,
    /// The suspect's clean accuracy and ASR, measured at the start.
    pub suspect_clean_acc: f64,
    pub suspect_asr: Option<f64>,
    /// The model the defense starts training from, before its first epoch (the cleanser's
    /// re-initialised student, which the supplement's Figure 2 compares; the suspect itself for
    /// fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_clean_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_asr: Option<f64>,
    /// The cleanser's realised re-initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinit: Option<Realised>,
    /// What the defense found on the defender's data before training (Fine-Pruning's search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Findings>,
    /// Clean accuracy and ASR along the method's own parameter (MCR's `t`, ANP's threshold),
    /// measured after the run for the picture; the result is the configured value's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Curve>,
}

/// A defense's models along one of its parameters, measured on the test images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The parameter (`t`, `threshold`).
    pub parameter: String,
    pub points: Vec<CurvePoint>,
}

/// One model of a [`Curve`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub at: f64,
    pub clean_acc: f64,
    pub asr: Option<f64>,
}

impl DefenseRecord {
    /// The `defense` of a version 1 report (the cleanser's record; its configuration was the
    /// report's `config`).
    fn from_v1(defense: &serde_json::Value, config: &serde_json::Value) -> Result<Self, String> {
        let mut config = config.clone();
        let Some(fields) = config.as_object_mut() else {
            return Err("version 1 defense configuration: not an object".into());
        };
        fields.insert("method".into(), "kd".into());
        let Some(teacher) = fields.get("teacher").and_then(|t| t.as_str()) else {
            return Err("version 1 defense configuration: no `teacher`".into());
        };
        let f = |k: &str| defense.get(k).and_then(|v| v.as_f64());
        Ok(DefenseRecord {
            suspect: PathBuf::from(teacher),
            config,
            defender_images: defense["unlabeled_images"].as_u64().unwrap_or(0) as usize,
            suspect_clean_acc: f("teacher_clean_acc").unwrap_or(f64::NAN),
            suspect_asr: f("teacher_asr"),
            start_clean_acc: f("student_init_clean_acc"),
            start_asr: f("student_init_asr"),
            reinit: serde_json::from_value(defense["init"].clone()).ok(),
            findings: None,
            curve: None,
        })
    }
}

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
    /// Accuracy on the clean test set; `None` for an epoch the run did not evaluate (a run
    /// evaluating every Nth epoch; the last epoch always is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_acc: Option<f64>,
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
    /// What a defense did (defense runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defense: Option<DefenseRecord>,
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
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(1) => {
                if let Some(d) = value.get("defense").filter(|d| !d.is_null()) {
                    let record = DefenseRecord::from_v1(d, &value["config"])
                        .map_err(|e| format!("{name}: {e}"))?;
                    value["defense"] =
                        serde_json::to_value(record).map_err(|e| format!("{name}: {e}"))?;
                    value["config"] = serde_json::to_value(&value["defense"]["config"])
                        .map_err(|e| format!("{name}: {e}"))?;
                }
                value["schema_version"] = SCHEMA_VERSION.into();
            }
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

impl Report {
    /// Why the report's metrics are impossible, if they are: a clean accuracy, ASR or training
    /// accuracy outside `[0, 1]` (or not a number), in an epoch or the final metrics.
    pub fn check_metrics(&self) -> Result<(), String> {
        let fraction = |what: String, v: f64| match (0.0..=1.0).contains(&v) {
            true => Ok(()),
            false => Err(format!("{what} is {v}; expected a fraction in [0, 1]")),
        };
        for e in &self.epochs {
            fraction(format!("epoch {}: train_acc", e.epoch), e.train_acc)?;
            if let Some(v) = e.clean_acc {
                fraction(format!("epoch {}: clean_acc", e.epoch), v)?;
            }
            if let Some(v) = e.asr {
                fraction(format!("epoch {}: asr", e.epoch), v)?;
            }
        }
        if let Some(f) = &self.final_metrics {
            fraction("final clean_acc".into(), f.clean_acc)?;
            if let Some(v) = f.asr {
                fraction("final asr".into(), v)?;
            }
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
