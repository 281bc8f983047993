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
    /// What a defense did (defense runs): the method, its data and, for the cleanser, the
    /// realised re-initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defense: Option<serde_json::Value>,
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

/// One row of a results table, read from a report.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    /// The run's name (its directory).
    pub name: String,
    pub kind: String,
    /// Attack name, target and poison rate, when the run is an attack.
    pub attack: Option<String>,
    pub target: Option<u64>,
    pub all_to_all: bool,
    pub poison_rate: Option<f64>,
    pub epochs: usize,
    pub complete: bool,
    pub clean_acc: Option<f64>,
    pub asr: Option<f64>,
    /// Mean seconds per epoch.
    pub seconds_per_epoch: Option<f64>,
}

impl SummaryRow {
    /// The row of `report`, named `name`. Unfinished runs show their last epoch.
    pub fn of(name: &str, report: &Report) -> SummaryRow {
        let last = report.epochs.last();
        let a = report.attack.as_ref();
        let n = report.epochs.len();
        SummaryRow {
            name: name.to_string(),
            kind: report.kind.clone(),
            attack: a.and_then(|a| a["kind"].as_str()).map(str::to_string),
            target: a.and_then(|a| a["target"].as_u64()),
            all_to_all: a.and_then(|a| a["all_to_all"].as_bool()).unwrap_or(false),
            poison_rate: a.and_then(|a| a["poison_rate"].as_f64()),
            epochs: n,
            complete: report.status == RunStatus::Complete,
            clean_acc: report
                .final_metrics
                .as_ref()
                .map(|f| f.clean_acc)
                .or(last.map(|e| e.clean_acc)),
            asr: report
                .final_metrics
                .as_ref()
                .and_then(|f| f.asr)
                .or(last.and_then(|e| e.asr)),
            seconds_per_epoch: (n > 0)
                .then(|| report.epochs.iter().map(|e| e.seconds).sum::<f64>() / n as f64),
        }
    }
}

/// A Markdown table of runs: clean accuracy and ASR in percent.
pub fn markdown_table(rows: &[SummaryRow]) -> String {
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.1}", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let mut s = String::from(
        "| run | attack | target | poison rate | epochs | clean acc % | ASR % | s/epoch |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {}{} | {} | {} | {} |\n",
            r.name,
            r.attack.as_deref().unwrap_or("none (clean)"),
            match (r.all_to_all, r.target) {
                (true, _) => "all-to-all".to_string(),
                (false, Some(t)) => t.to_string(),
                _ => "-".into(),
            },
            r.poison_rate
                .map(|p| format!("{p}"))
                .unwrap_or_else(|| "-".into()),
            r.epochs,
            if r.complete { "" } else { " (running)" },
            pct(r.clean_acc),
            pct(r.asr),
            r.seconds_per_epoch
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    s
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    fn report(
        kind: &str,
        attack: Option<serde_json::Value>,
        asr: Option<f64>,
        done: bool,
    ) -> Report {
        let epoch = |e: usize, acc: f64| EpochRecord {
            epoch: e,
            lr: 0.1,
            loss: 1.0,
            train_acc: 0.5,
            clean_acc: acc,
            seconds: 10.0 * e as f64,
            eval_seconds: 1.0,
            images_per_sec: 100.0,
            asr,
        };
        Report {
            schema_version: SCHEMA_VERSION,
            kind: kind.into(),
            status: if done {
                RunStatus::Complete
            } else {
                RunStatus::Running
            },
            tool_version: "0".into(),
            config: serde_json::json!({}),
            attack,
            defense: None,
            device: serde_json::from_value(serde_json::json!({
                "requested": "cpu", "backend": "flex", "adapter": null, "cpu_threads": 2
            }))
            .expect("device"),
            data: DataSummary {
                num_classes: 10,
                train_size: 1,
                holdout_size: 1,
                test_size: 1,
            },
            epochs: vec![epoch(1, 0.2), epoch(2, 0.4)],
            final_metrics: done.then_some(FinalMetrics {
                clean_acc: 0.4,
                asr,
            }),
            model_file: None,
            started_unix: 0,
            finished_unix: None,
        }
    }

    #[test]
    fn summary_rows_and_table() {
        let clean = SummaryRow::of("runs/clean", &report("train", None, None, true));
        assert_eq!(clean.attack, None);
        assert_eq!(clean.clean_acc, Some(0.4));
        assert_eq!(clean.seconds_per_epoch, Some(15.0));
        let a2a = SummaryRow::of(
            "runs/a2a",
            &report(
                "attack",
                Some(
                    serde_json::json!({"kind": "badnets", "target": 0, "all_to_all": true, "poison_rate": 0.05}),
                ),
                Some(0.875),
                false,
            ),
        );
        assert!(!a2a.complete);
        assert_eq!(a2a.asr, Some(0.875));
        let t = markdown_table(&[clean, a2a]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[2],
            "| runs/clean | none (clean) | - | - | 2 | 40.0 | - | 15 |"
        );
        assert_eq!(
            lines[3],
            "| runs/a2a | badnets | all-to-all | 0.05 | 2 (running) | 40.0 | 87.5 | 15 |"
        );
    }
}
