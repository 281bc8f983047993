//! The table of an experiment protocol in the supplement's layout (rows: attacks; columns: "No
//! defense" and each defense; cells: mean and standard deviation over the attack's models), as
//! `cleanse protocol table` writes it (`tables/<protocol>.json`, `.md`, `.csv`) and the viewer
//! shows it.

use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One cell: the finished models' metrics (fractions).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Finished runs in the cell.
    pub n: usize,
    /// Runs the protocol plans for it.
    pub expected: usize,
    pub acc_mean: f64,
    /// Sample standard deviation (0 for one model).
    pub acc_std: f64,
    pub asr_mean: Option<f64>,
    pub asr_std: Option<f64>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = match v.len() {
        0 | 1 => 0.0,
        _ => v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0),
    };
    (mean, var.sqrt())
}

impl Stat {
    /// The cell of the finished runs' `(clean accuracy, ASR)`; `None` when there are none.
    pub fn of(metrics: &[(f64, Option<f64>)], expected: usize) -> Option<Stat> {
        if metrics.is_empty() {
            return None;
        }
        let accs: Vec<f64> = metrics.iter().map(|m| m.0).collect();
        let asrs: Option<Vec<f64>> = metrics.iter().map(|m| m.1).collect();
        let (acc_mean, acc_std) = mean_std(&accs);
        let asr = asrs.map(|a| mean_std(&a));
        Some(Stat {
            n: metrics.len(),
            expected,
            acc_mean,
            acc_std,
            asr_mean: asr.map(|a| a.0),
            asr_std: asr.map(|a| a.1),
        })
    }
}

/// The table, as `tables/<protocol>.json` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolTable {
    /// Always `protocol_table` (how the viewer tells this file from a run report).
    pub kind: String,
    pub attacks: Vec<String>,
    /// "No defense", then each defense (their reports' labels where unique, else the spec's names).
    pub columns: Vec<String>,
    pub models: Vec<String>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Option<Stat>>>,
    /// Per column, the mean over the attacks of their means, where every attack has the cell.
    pub mean: Vec<Option<Stat>>,
    /// The data set (`cifar10`, `gtsrb`, ...; absent in tables written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
}

/// The `kind` of a protocol table's JSON.
pub const KIND: &str = "protocol_table";

impl ProtocolTable {
    /// A protocol table read from JSON (`name`, the file, for errors); `None` when the JSON is
    /// not a protocol table (no `"kind": "protocol_table"`).
    pub fn from_json(name: &str, text: &str) -> Option<std::result::Result<Self, String>> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        (v.get("kind").and_then(|k| k.as_str()) == Some(KIND)).then(|| {
            serde_json::from_value(v)
                .map_err(|e| format!("{name}: not a valid protocol table: {e}"))
                .and_then(|t: ProtocolTable| {
                    match t.cells.iter().all(|r| r.len() == t.columns.len())
                        && t.cells.len() == t.attacks.len()
                        && t.mean.len() == t.columns.len()
                    {
                        true => Ok(t),
                        false => Err(format!(
                            "{name}: a protocol table whose rows and columns do not match"
                        )),
                    }
                })
        })
    }

    /// Markdown: the means (with the Mean row), then the standard deviations where a cell has
    /// more than one finished model. A cell with fewer finished runs than planned shows the
    /// count, e.g. `(3/14)`.
    pub fn markdown(&self) -> String {
        let pct = |v: f64| format!("{:.1}", v * 100.0);
        let count = |s: &Stat| match s.n < s.expected {
            true => format!(" ({}/{})", s.n, s.expected),
            false => String::new(),
        };
        let mut s = format!(
            "Mean over {} model(s) per attack ({}), ACC / ASR %:\n\n",
            self.models.len(),
            self.models.join(", ")
        );
        s.push_str(&crate::table::attack_defense_header(&self.columns));
        let mean_row = ("Mean".to_string(), self.mean.clone());
        let rows = self.attacks.iter().cloned().zip(self.cells.iter().cloned());
        for (name, cells) in rows.chain((self.attacks.len() > 1).then_some(mean_row)) {
            s.push_str(&format!("| {name} |"));
            for c in &cells {
                match c {
                    Some(c) => s.push_str(&format!(
                        " {}{} | {}{} |",
                        pct(c.acc_mean),
                        count(c),
                        c.asr_mean.map_or("-".into(), pct),
                        count(c)
                    )),
                    None => s.push_str(" - | - |"),
                }
            }
            s.push('\n');
        }
        // Spreads only where a cell has more than one finished model (one model has none).
        if !self.cells.iter().flatten().flatten().any(|c| c.n > 1) {
            return s;
        }
        s.push_str("\nStandard deviation over the models, ACC / ASR %:\n\n");
        s.push_str(&crate::table::attack_defense_header(&self.columns));
        for (name, cells) in self.attacks.iter().zip(&self.cells) {
            s.push_str(&format!("| {name} |"));
            for c in cells {
                match c {
                    Some(c) if c.n > 1 => s.push_str(&format!(
                        " ± {} | ± {} |",
                        pct(c.acc_std),
                        c.asr_std.map_or("-".into(), pct)
                    )),
                    _ => s.push_str(" - | - |"),
                }
            }
            s.push('\n');
        }
        s
    }

    /// CSV, one line per cell (fractions; empty fields where missing).
    pub fn csv(&self) -> String {
        let mut s = String::from("attack,column,n,expected,acc_mean,acc_std,asr_mean,asr_std\n");
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        let rows = self.attacks.iter().zip(&self.cells);
        let mean = std::iter::once(("Mean".to_string(), &self.mean));
        for (name, cells) in rows.map(|(a, c)| (a.clone(), c)).chain(mean) {
            for (col, c) in self.columns.iter().zip(cells) {
                let quote = |x: &str| format!("\"{}\"", x.replace('"', "\"\""));
                match c {
                    Some(c) => s.push_str(&format!(
                        "{},{},{},{},{},{},{},{}\n",
                        quote(&name),
                        quote(col),
                        c.n,
                        c.expected,
                        c.acc_mean,
                        c.acc_std,
                        opt(c.asr_mean),
                        opt(c.asr_std)
                    )),
                    None => s.push_str(&format!("{},{},0,,,,,\n", quote(&name), quote(col))),
                }
            }
        }
        s
    }

    /// Writes `<name>.md` (the Markdown, then `notes` after an empty line when there are any),
    /// `<name>.csv` and `<name>.json` into `dir` (each atomically).
    pub fn write(&self, dir: &Path, name: &str, notes: Option<&str>) -> Result<()> {
        use crate::io::{write_atomic, write_json_atomic};
        let mut md = self.markdown();
        if let Some(notes) = notes {
            md.push('\n');
            md.push_str(notes);
        }
        write_atomic(&dir.join(format!("{name}.md")), md.as_bytes())?;
        write_atomic(&dir.join(format!("{name}.csv")), self.csv().as_bytes())?;
        write_json_atomic(&dir.join(format!("{name}.json")), self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_and_deviations_over_models_and_attacks() {
        let s = Stat::of(&[(0.5, Some(0.9)), (0.7, Some(0.1))], 3).expect("cell");
        assert_eq!((s.n, s.expected), (2, 3));
        assert!((s.acc_mean - 0.6).abs() < 1e-12);
        assert!((s.acc_std - (0.02f64).sqrt()).abs() < 1e-12);
        assert!((s.asr_mean.expect("asr") - 0.5).abs() < 1e-12);
        assert!(Stat::of(&[], 3).is_none());
        let one = Stat::of(&[(0.5, None)], 1).expect("cell");
        assert_eq!((one.acc_std, one.asr_mean), (0.0, None));
    }
}
