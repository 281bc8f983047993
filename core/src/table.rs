//! The tables read from run reports: the summary of a folder of runs, and the attack x defense
//! table in the supplement's layout (`cleanse summary`, `cleanse protocol table`, the viewer).
//! Above the defenses: a column's label and place come from the defense's settings.

use crate::defend::Defense;
use crate::report::{DefenseRecord, Report, RunStatus};

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
                .or(last.and_then(|e| e.clean_acc)),
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

/// The supplement's name of an attack kind (`badnets` -> `BadNets`).
pub fn attack_display_name(kind: &str) -> String {
    match kind {
        "badnets" => "BadNets".into(),
        "blended" => "Blended".into(),
        "sig" => "SIG".into(),
        "lc" => "LC".into(),
        "wanet" => "WaNet".into(),
        "iab" => "IAB".into(),
        other => other.to_string(),
    }
}

/// The row label of an attack configuration: name, then what sets it apart from the supplement's
/// all-to-one, target-0 setting (target, all-to-all, poison rate).
pub fn attack_label(attack: &serde_json::Value) -> String {
    let mut s = attack_display_name(attack["kind"].as_str().unwrap_or("?"));
    if attack["all_to_all"].as_bool() == Some(true) {
        s.push_str(" all-to-all");
    } else if let Some(t) = attack["target"].as_u64().filter(|&t| t != 0) {
        s.push_str(&format!(" target {t}"));
    }
    if let Some(p) = attack["poison_rate"].as_f64() {
        s.push_str(&format!(" {}%", (p * 1000.0).round() / 10.0));
    }
    s
}

/// The column label of a defense run: its method, then each setting that differs from the
/// method's defaults (e.g. initialisation, unlabeled data, epochs).
pub fn defense_label(report: &Report) -> String {
    report
        .defense
        .as_ref()
        .map_or_else(|| "defense".to_string(), record_label)
}

/// [`defense_label`] of a defense record.
pub fn record_label(record: &DefenseRecord) -> String {
    match Defense::of_record(record) {
        Ok(d) => d.label(),
        Err(e) => format!("defense ({e})"),
    }
}

/// The supplement's Mean-row rule, for every attack x defense table: per column, `combine` of
/// the column's cells, only where every row has one (a mean over fewer attacks than its
/// neighbours would not compare).
pub fn column_means<T: Copy, U>(
    rows: &[&[Option<T>]],
    columns: usize,
    combine: impl Fn(&[T]) -> Option<U>,
) -> Vec<Option<U>> {
    (0..columns)
        .map(|c| {
            let cells: Option<Vec<T>> = rows.iter().map(|r| r.get(c).copied().flatten()).collect();
            cells.filter(|v| !v.is_empty()).and_then(|v| combine(&v))
        })
        .collect()
}

/// Clean accuracy and ASR of one model, as fractions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    pub clean_acc: f64,
    pub asr: Option<f64>,
    /// The run finished (otherwise: its last epoch so far).
    pub complete: bool,
}

/// Rows: attacks; columns: "No defense" then each defense; cells: ACC and ASR (the supplement's
/// table layout).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttackDefenseTable {
    /// Column labels: "No defense", then the defenses in the supplement's order (FT, FP, MCR,
    /// ANP, NAD, I-BAU, the cleanser), variants of one method in the order first seen.
    pub defenses: Vec<String>,
    pub rows: Vec<(String, Vec<Option<Cell>>)>,
    /// Reports that could not be placed, and cells that two reports claimed, by name.
    pub notes: Vec<String>,
}

/// The header of a Markdown attack x defense table: the attack, then an ACC and an ASR column
/// (percent) per defense column.
pub fn attack_defense_header(columns: &[String]) -> String {
    let mut s = String::from("| attack |");
    for c in columns {
        s.push_str(&format!(" {c} ACC % | {c} ASR % |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|---|".repeat(columns.len()));
    s.push('\n');
    s
}

/// The column of the undefended models.
pub const NO_DEFENSE: &str = "No defense";

impl AttackDefenseTable {
    /// Builds the table from named reports. Attack runs fill "No defense"; a defense run fills its
    /// own column and, when no attack run of that attack is among the reports, "No defense" from
    /// the teacher's metrics it recorded. Clean (attack-free) runs are skipped. Rows and columns
    /// keep the order in which they first appear; the first report for a cell wins.
    pub fn build<'a>(reports: impl IntoIterator<Item = (&'a str, &'a Report)>) -> Self {
        let mut t = AttackDefenseTable {
            defenses: vec![NO_DEFENSE.to_string()],
            ..Default::default()
        };
        let mut teacher_cells: Vec<(String, Cell)> = Vec::new();
        // Each column's place in the supplement's order.
        let mut positions: Vec<(String, usize)> = vec![(NO_DEFENSE.to_string(), 0)];
        for (name, r) in reports {
            let Some(attack) = &r.attack else {
                continue;
            };
            let row = attack_label(attack);
            let summary = SummaryRow::of(name, r);
            let Some(cell) = summary.clean_acc.map(|clean_acc| Cell {
                clean_acc,
                asr: summary.asr,
                complete: summary.complete,
            }) else {
                t.notes.push(format!("{name}: no epoch finished yet"));
                continue;
            };
            let column = if r.kind == "defense" {
                if let Some(d) = r
                    .defense
                    .as_ref()
                    .filter(|d| d.suspect_clean_acc.is_finite())
                {
                    teacher_cells.push((
                        row.clone(),
                        Cell {
                            clean_acc: d.suspect_clean_acc,
                            asr: d.suspect_asr,
                            complete: true,
                        },
                    ));
                }
                let label = defense_label(r);
                if let Some(d) = &r.defense
                    && !positions.iter().any(|(l, _)| *l == label)
                {
                    let place = Defense::of_record(d).map_or(usize::MAX, |d| d.table_position());
                    positions.push((label.clone(), place));
                }
                label
            } else {
                NO_DEFENSE.to_string()
            };
            t.put(name, &row, &column, cell);
        }
        for (row, cell) in teacher_cells {
            let r = t.row_index(&row);
            if t.rows[r].1[0].is_none() {
                t.rows[r].1[0] = Some(cell);
            }
        }
        let position = |label: &str| {
            positions
                .iter()
                .find(|(l, _)| l == label)
                .map_or(usize::MAX, |(_, p)| *p)
        };
        let mut order: Vec<usize> = (0..t.defenses.len()).collect();
        order.sort_by_key(|&i| position(&t.defenses[i]));
        t.defenses = order.iter().map(|&i| t.defenses[i].clone()).collect();
        for (_, cells) in &mut t.rows {
            *cells = order.iter().map(|&i| cells[i]).collect();
        }
        t
    }

    /// The supplement's "Mean" row: per column, the mean ACC and ASR over the attacks, present
    /// only where every attack has that cell (a mean over fewer attacks than its neighbours
    /// would not compare); unfinished if any run is.
    pub fn mean(&self) -> Vec<Option<Cell>> {
        let rows: Vec<&[Option<Cell>]> = self.rows.iter().map(|(_, r)| r.as_slice()).collect();
        column_means(&rows, self.defenses.len(), |cells| {
            let n = cells.len() as f64;
            let asrs: Option<Vec<f64>> = cells.iter().map(|c| c.asr).collect();
            Some(Cell {
                clean_acc: cells.iter().map(|c| c.clean_acc).sum::<f64>() / n,
                asr: asrs.map(|a| a.iter().sum::<f64>() / n),
                complete: cells.iter().all(|c| c.complete),
            })
        })
    }

    fn row_index(&mut self, row: &str) -> usize {
        match self.rows.iter().position(|(r, _)| r == row) {
            Some(i) => i,
            None => {
                self.rows
                    .push((row.to_string(), vec![None; self.defenses.len()]));
                self.rows.len() - 1
            }
        }
    }

    fn put(&mut self, name: &str, row: &str, column: &str, cell: Cell) {
        let c = match self.defenses.iter().position(|d| d == column) {
            Some(c) => c,
            None => {
                self.defenses.push(column.to_string());
                for (_, cells) in &mut self.rows {
                    cells.push(None);
                }
                self.defenses.len() - 1
            }
        };
        let r = self.row_index(row);
        if self.rows[r].1[c].is_some() {
            self.notes.push(format!(
                "{name}: a second run for {row} / {column}; the first is shown"
            ));
        } else {
            self.rows[r].1[c] = Some(cell);
        }
    }

    /// Markdown: one ACC and one ASR column per defense, in percent; `*` marks unfinished runs;
    /// the Mean row last when there are two attacks or more.
    pub fn markdown(&self) -> String {
        let mut s = attack_defense_header(&self.defenses);
        let mean = (self.rows.len() > 1).then(|| ("Mean".to_string(), self.mean()));
        for (row, cells) in self.rows.iter().chain(mean.as_ref()) {
            s.push_str(&format!("| {row} |"));
            for cell in cells {
                match cell {
                    Some(c) => {
                        let star = if c.complete { "" } else { "*" };
                        s.push_str(&format!(
                            " {:.1}{star} | {}{star} |",
                            c.clean_acc * 100.0,
                            c.asr
                                .map(|a| format!("{:.1}", a * 100.0))
                                .unwrap_or_else(|| "-".into())
                        ));
                    }
                    None => s.push_str(" - | - |"),
                }
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use crate::defend::cleanse::KdConfig;
    use crate::report::{DataSummary, EpochRecord, FinalMetrics, SCHEMA_VERSION};

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
            clean_acc: Some(acc),
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

    fn defense(
        attack: serde_json::Value,
        config: Defense,
        teacher: (f64, f64),
        after_asr: f64,
    ) -> Report {
        let mut r = report("defense", Some(attack), Some(after_asr), true);
        r.config = serde_json::to_value(&config).expect("config");
        r.defense = Some(DefenseRecord {
            suspect: config.suspect().to_path_buf(),
            config: config.record_value(),
            defender_images: 10,
            suspect_clean_acc: teacher.0,
            suspect_asr: Some(teacher.1),
            start_clean_acc: None,
            start_asr: None,
            reinit: None,
            findings: None,
            curve: None,
        });
        r
    }

    fn kd(change: impl FnOnce(&mut KdConfig)) -> Defense {
        let mut c = KdConfig::paper("runs/subset/x".into(), true);
        change(&mut c);
        Defense::Kd(c)
    }

    #[test]
    fn version_1_cleanser_reports_are_read_as_typed_defense_records() {
        let mut config =
            serde_json::to_value(KdConfig::paper("runs/t".into(), true)).expect("json");
        config["epochs"] = 7.into();
        // Version 1 named the suspect `teacher`.
        let teacher = config["suspect"].take();
        config["teacher"] = teacher;
        config.as_object_mut().expect("fields").remove("suspect");
        let mut v1 = serde_json::to_value(report("defense", None, Some(0.1), true)).expect("json");
        v1["schema_version"] = 1.into();
        v1["config"] = config;
        v1["defense"] = serde_json::json!({
            "method": "kd", "teacher": "runs/t", "unlabeled_images": 12,
            "init": {"groups": [], "total_fraction": 0.25},
            "teacher_clean_acc": 0.9, "teacher_asr": 0.95,
            "student_init_clean_acc": 0.4,
        });
        let r = Report::from_json("old", &v1.to_string()).expect("a v1 report reads");
        let d = r.defense.expect("record");
        let typed = Defense::of_record(&d).expect("typed");
        assert_eq!(typed.method(), "kd");
        assert_eq!(typed.label(), "KD 7 ep");
        assert_eq!((d.suspect_clean_acc, d.suspect_asr), (0.9, Some(0.95)));
        assert_eq!((d.defender_images, d.start_clean_acc), (12, Some(0.4)));
        assert_eq!(d.reinit.map(|r| r.total_fraction), Some(0.25));
        assert_eq!(r.schema_version, SCHEMA_VERSION);
        // A version this build does not know is refused.
        v1["schema_version"] = 99.into();
        let e = Report::from_json("new", &v1.to_string()).expect_err("unknown version");
        assert!(e.contains("version 99"), "{e}");
    }

    #[test]
    fn attack_defense_table_in_the_supplements_layout() {
        let badnets = serde_json::json!({"kind": "badnets", "target": 0, "all_to_all": false, "poison_rate": 0.1});
        let blended = serde_json::json!({"kind": "blended", "target": 0, "all_to_all": false, "poison_rate": 0.1});
        let a2a = serde_json::json!({"kind": "badnets", "target": 0, "all_to_all": true, "poison_rate": 0.05});
        let holdout = kd(|_| {});
        let single = kd(|c| {
            c.init = crate::defend::reinit::InitMode::Single {
                stage: 3,
                ratios: crate::defend::reinit::ADAPTIVE_RATIOS,
            }
        });
        let ood = kd(|c| {
            c.training.epochs = 40;
            c.unlabeled = crate::defend::cleanse::UnlabeledSource::Data {
                spec: crate::data::DataSpec::new(crate::data::DatasetKind::Gtsrb, None),
            };
        });
        let ft = Defense::Ft(crate::defend::ft::FtConfig::paper(
            "runs/subset/x".into(),
            true,
        ));
        let clean = report("train", None, None, true);
        let attack_run = report("attack", Some(badnets.clone()), Some(0.99), true);
        let running = report("attack", Some(a2a), Some(0.5), false);
        let kd = defense(badnets.clone(), holdout.clone(), (0.5, 0.99), 0.05);
        let kd_single = defense(badnets.clone(), single, (0.5, 0.99), 0.5);
        let kd_ood = defense(badnets.clone(), ood, (0.5, 0.99), 0.2);
        // Blended has no attack run here: its "No defense" cell comes from the teacher metrics.
        let kd_blended = defense(blended, holdout, (0.6, 0.97), 0.8);
        let ft_run = defense(badnets.clone(), ft, (0.5, 0.99), 0.3);
        let duplicate = report("attack", Some(badnets), Some(0.1), true);
        let t = AttackDefenseTable::build([
            ("clean", &clean),
            ("kd", &kd),
            ("attack", &attack_run),
            ("running", &running),
            ("single", &kd_single),
            ("ood", &kd_ood),
            ("kd-blended", &kd_blended),
            ("duplicate", &duplicate),
            ("ft", &ft_run),
        ]);
        assert_eq!(
            t.defenses,
            [
                "No defense",
                "FT",
                "KD",
                "KD init single:3",
                "KD on gtsrb 40 ep",
            ]
        );
        let rows: Vec<&str> = t.rows.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            rows,
            ["BadNets 10%", "BadNets all-to-all 5%", "Blended 10%"]
        );
        // BadNets' "No defense" is its attack run (ASR 0.99), not the duplicate (0.1).
        assert_eq!(t.rows[0].1[0].map(|c| c.asr), Some(Some(0.99)));
        assert_eq!(t.rows[0].1[2].map(|c| c.asr), Some(Some(0.05)));
        assert_eq!(t.rows[2].1[0].map(|c| c.clean_acc), Some(0.6));
        assert_eq!(t.rows[1].1[1], None);
        assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
        assert!(t.notes[0].starts_with("duplicate:"));
        let md = t.markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(
            lines[0].starts_with("| attack | No defense ACC % | No defense ASR % | FT ACC % |")
        );
        assert_eq!(
            lines[2],
            "| BadNets 10% | 40.0 | 99.0 | 40.0 | 30.0 | 40.0 | 5.0 | 40.0 | 50.0 | 40.0 | 20.0 |"
        );
        // The unfinished all-to-all run is starred and shows its last epoch.
        assert_eq!(
            lines[3],
            "| BadNets all-to-all 5% | 40.0* | 50.0* | - | - | - | - | - | - | - | - |"
        );
        // The mean over the three attacks where all three have the cell; unfinished if one is.
        assert_eq!(
            lines[5],
            "| Mean | 46.7* | 82.0* | - | - | - | - | - | - | - | - |"
        );
    }
}
