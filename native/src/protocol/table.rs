//! `cleanse protocol table DIR`: the supplement's layout from a protocol's runs. Rows: attacks;
//! columns: "No defense" and each defense; each cell the mean clean accuracy and ASR over the
//! attack's models (and their standard deviation in a second table), with the Mean row.
//! Missing or unfinished runs are left out of a cell and counted; a cell with none is missing,
//! never zero.

use super::plan::{Plan, Role};
use anyhow::Result;
use cleanse_core::report::{NO_DEFENSE, Report, RunStatus, attack_label};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One cell: the finished models' metrics (fractions).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stat {
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
    fn of(metrics: &[(f64, Option<f64>)], expected: usize) -> Option<Stat> {
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

/// Each name's label (from its reports, e.g. `BadNets 10%` for a row, `KD init single:3` for a
/// column) where one finished and no other has the same label, else the spec's name.
fn unique_labels(names: &[String], labels: &[Option<String>]) -> Vec<String> {
    names
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (name, label))| match label {
            Some(l)
                if !labels
                    .iter()
                    .enumerate()
                    .any(|(j, m)| j != i && m.as_ref() == Some(l)) =>
            {
                l.clone()
            }
            _ => name.clone(),
        })
        .collect()
}

/// The table, as `table.json` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProtocolTable {
    /// Always `protocol_table` (how the viewer tells this file from a run report).
    pub kind: String,
    pub attacks: Vec<String>,
    /// "No defense", then each defense ([`unique_labels`]).
    pub columns: Vec<String>,
    pub models: Vec<String>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Option<Stat>>>,
    /// Per column, the mean over the attacks of their means, where every attack has the cell.
    pub mean: Vec<Option<Stat>>,
}

fn finished(path: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(path.join("report.json")).ok()?;
    let r = Report::from_json(&path.display().to_string(), &text).ok()?;
    (r.status == RunStatus::Complete).then_some(r)
}

impl ProtocolTable {
    /// The table of the runs of `plan` under `out`.
    pub fn build(plan: &Plan, out: &Path) -> ProtocolTable {
        let mut columns = vec![NO_DEFENSE.to_string()];
        let mut labels: Vec<Option<String>> = vec![None; plan.defenses.len()];
        let mut row_labels: Vec<Option<String>> = vec![None; plan.attacks.len()];
        let mut cells = Vec::new();
        for attack in &plan.attacks {
            let mut row = Vec::new();
            for column in std::iter::once(None).chain(plan.defenses.iter().map(Some)) {
                let runs: Vec<_> = plan
                    .runs
                    .iter()
                    .filter(|r| r.attack.as_ref() == Some(attack))
                    .filter(|r| match column {
                        None => r.role == Role::Attack,
                        Some(d) => r.defense.as_ref() == Some(d),
                    })
                    .collect();
                let mut metrics = Vec::new();
                for r in &runs {
                    let Some(report) = finished(&out.join(&r.name)) else {
                        continue;
                    };
                    if let Some(f) = report.final_metrics {
                        metrics.push((f.clean_acc, f.asr));
                    }
                    if let (None, Some(a)) = (column, &report.attack) {
                        row_labels[cells.len()].get_or_insert_with(|| attack_label(a));
                    }
                    if let (Some(d), Some(rec)) = (column, &report.defense) {
                        let i = plan.defenses.iter().position(|x| x == d).expect("a column");
                        labels[i].get_or_insert_with(|| rec.config.label());
                    }
                }
                row.push(if runs.is_empty() {
                    None
                } else {
                    Stat::of(&metrics, runs.len())
                });
            }
            cells.push(row);
        }
        columns.extend(unique_labels(&plan.defenses, &labels));
        let attacks = unique_labels(&plan.attacks, &row_labels);
        let mean = (0..columns.len())
            .map(|c| {
                let means: Option<Vec<Stat>> = cells.iter().map(|row| row[c]).collect();
                let means = means.filter(|m| !m.is_empty())?;
                let metrics: Vec<(f64, Option<f64>)> =
                    means.iter().map(|s| (s.acc_mean, s.asr_mean)).collect();
                let mut s = Stat::of(&metrics, means.len())?;
                s.n = means.iter().map(|m| m.n).sum();
                s.expected = means.iter().map(|m| m.expected).sum();
                Some(s)
            })
            .collect();
        ProtocolTable {
            kind: "protocol_table".into(),
            attacks,
            columns,
            models: plan.models.clone(),
            cells,
            mean,
        }
    }

    fn header(&self) -> String {
        let mut s = String::from("| attack |");
        for c in &self.columns {
            s.push_str(&format!(" {c} ACC % | {c} ASR % |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|---|".repeat(self.columns.len()));
        s.push('\n');
        s
    }

    /// Markdown: the means (with the Mean row), then the standard deviations. A cell with fewer
    /// finished runs than planned shows the count, e.g. `(3/14)`.
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
        s.push_str(&self.header());
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
        s.push_str("\nStandard deviation over the models, ACC / ASR %:\n\n");
        s.push_str(&self.header());
        for (name, cells) in self.attacks.iter().zip(&self.cells) {
            s.push_str(&format!("| {name} |"));
            for c in cells {
                match c {
                    Some(c) => s.push_str(&format!(
                        " ± {} | ± {} |",
                        pct(c.acc_std),
                        c.asr_std.map_or("-".into(), pct)
                    )),
                    None => s.push_str(" - | - |"),
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

    /// Writes `table.md`, `table.csv` and `table.json` into `out` (each atomically).
    pub fn write(&self, out: &Path) -> Result<()> {
        use cleanse_core::io::{write_atomic, write_json_atomic};
        write_atomic(&out.join("table.md"), self.markdown().as_bytes())?;
        write_atomic(&out.join("table.csv"), self.csv().as_bytes())?;
        write_json_atomic(&out.join("table.json"), self)?;
        Ok(())
    }
}

/// `cleanse protocol table DIR`: writes the three files and prints the Markdown.
pub(crate) fn run(out: &Path) -> Result<()> {
    let plan = Plan::read(out)?;
    let t = ProtocolTable::build(&plan, out);
    t.write(out)?;
    print!("{}", t.markdown());
    Ok(())
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
