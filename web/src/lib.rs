//! The cleanse browser app (demo and report viewer). The Leptos UI (`app`, wasm32 only) sits on
//! parts that are tested natively: the demo's training, cleansing and stamping loops
//! ([`engine`]), pictures ([`picture`]), and here the viewer's logic: loading reports, the
//! per-epoch curves, the run summary, and chart scaling (the attack x defense table is
//! `table::AttackDefenseTable`).

use cleanse_core::report::Findings;
use cleanse_core::report::{Report, RunStatus};
use cleanse_core::table::{attack_label, defense_label};

#[cfg(target_arch = "wasm32")]
mod app;
pub mod engine;
pub mod picture;

/// Parses several report files; each result names its file in the error.
pub fn load_reports<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<Result<Report, String>> {
    files
        .into_iter()
        .map(|(name, text)| Report::from_json(name, text))
        .collect()
}

/// A protocol table's cell as two texts, ACC and ASR in percent: `mean ± std` (the mean alone
/// where one model finished: one model has no spread), with `(n/N)` when fewer runs finished
/// than the protocol plans.
pub fn protocol_cell(c: &cleanse_core::protocol_table::Stat) -> (String, String) {
    let count = match c.n < c.expected {
        true => format!(" ({}/{})", c.n, c.expected),
        false => String::new(),
    };
    let text = |mean: f64, std: f64| match c.n > 1 {
        true => format!("{:.1} ± {:.1}{count}", 100.0 * mean, 100.0 * std),
        false => format!("{:.1}{count}", 100.0 * mean),
    };
    let acc = text(c.acc_mean, c.acc_std);
    let asr = match (c.asr_mean, c.asr_std) {
        (Some(m), Some(s)) => text(m, s),
        _ => "-".to_string(),
    };
    (acc, asr)
}

/// One line of a chart: `(epoch, value)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The per-epoch clean accuracy and (for attacked or defended models) ASR of a report, in
/// percent.
pub fn curves(report: &Report) -> Vec<Series> {
    accuracy_curves(
        report
            .epochs
            .iter()
            // Epochs the run did not evaluate (`--eval-every`) have no point.
            .filter_map(|e| e.clean_acc.map(|acc| (e.epoch as f64, acc, e.asr))),
    )
}

/// A defense's accuracy and ASR along its parameter (MCR's `t`, ANP's threshold), when its
/// report has them: the parameter's name and the series, in percent.
pub fn defense_curves(report: &Report) -> Option<(String, Vec<Series>)> {
    let curve = report.defense.as_ref()?.curve.as_ref()?;
    let series = accuracy_curves(curve.points.iter().map(|p| (p.at, p.clean_acc, p.asr)));
    Some((curve.parameter.clone(), series))
}

/// Clean accuracy and, where any point has one, ASR, in percent, from `(x, clean_acc, asr)`
/// fractions (a report's epochs, the demo's, or a defense's curve along its parameter).
pub fn accuracy_curves(points: impl Iterator<Item = (f64, f64, Option<f64>)>) -> Vec<Series> {
    let (mut clean, mut asr) = (Vec::new(), Vec::new());
    for (x, acc, a) in points {
        clean.push((x, 100.0 * acc));
        if let Some(a) = a {
            asr.push((x, 100.0 * a));
        }
    }
    let mut out = vec![Series {
        label: "clean accuracy".into(),
        points: clean,
    }];
    if !asr.is_empty() {
        out.push(Series {
            label: "ASR".into(),
            points: asr,
        });
    }
    out
}

/// The facts a run summary shows, as label/value pairs.
pub fn summary(name: &str, report: &Report) -> Vec<(String, String)> {
    let mut rows = vec![
        ("file".to_string(), name.to_string()),
        ("kind".to_string(), report.kind.clone()),
        (
            "status".to_string(),
            match report.status {
                RunStatus::Complete => "complete".to_string(),
                _ => format!("in progress ({} epochs so far)", report.epochs.len()),
            },
        ),
    ];
    if let Some(a) = &report.attack {
        rows.push(("attack".into(), attack_label(a)));
    }
    if report.kind == "defense" {
        rows.push(("defense".into(), defense_label(report)));
    }
    match report.defense.as_ref().and_then(|d| d.findings.as_ref()) {
        Some(Findings::Fp(p)) => rows.push(("pruned".into(), {
            let at = |n: usize| {
                p.steps
                    .iter()
                    .find(|s| s.pruned == n)
                    .map_or("-".to_string(), |s| format!("{:.1}%", 100.0 * s.accuracy))
            };
            format!(
                "{} of {} last-stage channels (the defender's held-out accuracy {} unpruned, \
                     {} pruned)",
                p.pruned,
                p.channels,
                at(0),
                at(p.pruned)
            )
        })),
        Some(Findings::Anp(m)) => rows.push((
            "pruned".into(),
            format!(
                "{} of {} batch-norm channels at mask <= {} (per stage {:?}; mask histogram by \
                 tenths {:?})",
                m.pruned_per_stage.iter().sum::<usize>(),
                m.channels,
                m.threshold,
                m.pruned_per_stage,
                m.histogram
            ),
        )),
        None => {}
    }
    rows.push((
        "data".into(),
        format!(
            "{} classes; {} training, {} held out, {} test images",
            report.data.num_classes,
            report.data.train_size,
            report.data.holdout_size,
            report.data.test_size
        ),
    ));
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    if let Some(f) = &report.final_metrics {
        rows.push(("clean accuracy".into(), pct(f.clean_acc)));
        if let Some(a) = f.asr {
            rows.push(("ASR".into(), pct(a)));
        }
    }
    rows
}

/// A linear axis with "nice" tick values (1, 2 or 5 times a power of ten apart).
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub ticks: Vec<f64>,
}

impl Axis {
    /// An axis covering `[lo, hi]` with at most `max_ticks` ticks (at least 2) on round values;
    /// the range is widened to the outer ticks. A degenerate range is widened by one unit.
    pub fn nice(lo: f64, hi: f64, max_ticks: usize) -> Axis {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
            (lo.min(hi), lo.max(hi))
        } else {
            (0.0, 1.0)
        };
        if hi - lo < 1e-12 {
            lo -= 0.5;
            hi += 0.5;
        }
        let max_ticks = max_ticks.max(2);
        let raw = (hi - lo) / (max_ticks - 1) as f64;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            // Ticks = intervals + 1.
            .find(|s| (((hi / s).ceil() - (lo / s).floor()) as usize) < max_ticks)
            .unwrap_or(10.0 * mag);
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        let ticks: Vec<f64> = (0..=(last - first) as usize)
            .map(|i| ((first + i as f64) * step * 1e9).round() / 1e9)
            .collect();
        Axis {
            min: ticks[0],
            max: *ticks.last().expect("at least one tick"),
            ticks,
        }
    }

    /// Position of `v` on a `length`-pixel axis (0 at `min`).
    pub fn scale(&self, v: f64, length: f64) -> f64 {
        (v - self.min) / (self.max - self.min) * length
    }
}

/// SVG polyline points of `series` in a `width` x `height` box (y grows downwards).
pub fn polyline(series: &Series, x: &Axis, y: &Axis, width: f64, height: f64) -> String {
    series
        .points
        .iter()
        .map(|&(a, b)| {
            format!(
                "{:.1},{:.1}",
                x.scale(a, width),
                height - y.scale(b, height)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The name a file of a picked folder (a protocol's output folder or a results archive) is
/// shown under, from its path in the folder: a run's `report.json` by its run's folder (e.g.
/// `quick/badnets/t0-s0/kd`), a table of `tables/` by its path; `None` for the other files
/// (weights, manifests, splits, checkpoints), which the viewer does not read.
pub fn archive_name(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [dirs @ .., "report.json"] if !dirs.contains(&"checkpoint") => Some(if dirs.is_empty() {
            "report.json".to_string()
        } else {
            dirs.join("/")
        }),
        [.., "tables", file] if file.ends_with(".json") => Some(path.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleanse_core::table::AttackDefenseTable;

    #[test]
    fn a_folders_reports_and_tables_are_read_and_named_by_their_run() {
        assert_eq!(
            archive_name("quick/badnets/t0-s0/kd/report.json").as_deref(),
            Some("quick/badnets/t0-s0/kd")
        );
        assert_eq!(
            archive_name("quick/tables/quick.json").as_deref(),
            Some("quick/tables/quick.json")
        );
        for other in [
            "quick/badnets/t0-s0/attack/model.safetensors",
            "quick/badnets/t0-s0/kd/manifest.json",
            "quick/badnets/t0-s0/kd/split.json",
            "quick/badnets/t0-s0/kd/checkpoint/report.json",
            "quick/protocols/quick.json",
            "quick/archive.json",
        ] {
            assert_eq!(archive_name(other), None, "{other}");
        }
    }

    /// The browser test's sample reports (real CLI reports) and its malformed file.
    #[test]
    fn the_browser_test_fixtures_load_as_the_e2e_test_expects() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let names = ["badnets-report.json", "cleanse-badnets-report.json"];
        let texts: Vec<String> = names.iter().map(|f| read(f)).collect();
        let reports: Vec<Report> =
            load_reports(names.iter().zip(&texts).map(|(n, t)| (*n, t.as_str())))
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let t = AttackDefenseTable::build(names.iter().copied().zip(&reports));
        assert_eq!(t.rows.len(), 1, "{t:?}");
        assert!(t.rows[0].0.contains("BadNets"));
        assert_eq!(t.defenses.len(), 2);
        assert!(
            t.rows[0]
                .1
                .iter()
                .all(|c| c.is_some_and(|c| c.asr.is_some()))
        );
        let bad = load_reports([("malformed.json", read("malformed.json").as_str())]);
        let e = bad[0].as_ref().unwrap_err();
        assert!(e.contains("malformed.json"), "{e}");
    }

    /// A real `defend anp` report (`fixtures/make-anp-report.sh`): its findings in the summary,
    /// its curve along the threshold, its column before the cleanser's.
    #[test]
    fn a_baseline_defense_report_shows_its_findings_curve_and_column() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let names = ["cleanse-badnets-report.json", "anp-badnets-report.json"];
        let texts: Vec<String> = names
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
            .collect();
        let reports: Vec<Report> =
            load_reports(names.iter().zip(&texts).map(|(n, t)| (*n, t.as_str())))
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let anp = &reports[1];
        let (parameter, series) = defense_curves(anp).expect("ANP's curve");
        assert_eq!(parameter, "threshold");
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].points.len(), series[1].points.len());
        assert!(series[0].points.windows(2).all(|w| w[0].0 < w[1].0));
        let facts = summary("anp", anp);
        let pruned = &facts.iter().find(|(k, _)| k == "pruned").expect("pruned").1;
        assert!(pruned.contains("of 300 batch-norm channels"), "{pruned}");
        assert!(defense_curves(&reports[0]).is_none());
        let t = AttackDefenseTable::build(names.iter().copied().zip(&reports));
        assert_eq!(t.defenses.len(), 3, "{t:?}");
        assert!(t.defenses[1].starts_with("ANP") && t.defenses[2].starts_with("KD"));
    }

    /// A real `cleanse protocol table` JSON (`fixtures/make-protocol-table.sh`) is told from a
    /// run report and shows mean ± std per cell; a damaged one is an error naming the file.
    #[test]
    fn a_protocol_table_loads_and_formats_its_cells() {
        use cleanse_core::protocol_table::ProtocolTable;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let text = std::fs::read_to_string(dir.join("protocol-table.json")).unwrap();
        let t = ProtocolTable::from_json("t.json", &text)
            .expect("a protocol table")
            .expect("valid");
        assert_eq!(t.attacks.len(), 2);
        assert_eq!(t.columns[0], "No defense");
        assert!(t.mean.iter().all(Option::is_some));
        let (acc, asr) = protocol_cell(t.cells[0][1].as_ref().expect("cell"));
        assert!(acc.contains(" ± ") && asr.contains(" ± "), "{acc} {asr}");
        let mut partial = t.cells[0][1].expect("cell");
        partial.n = 1;
        // One finished model: its value and the count, no spread.
        let (acc, _) = protocol_cell(&partial);
        assert!(acc.ends_with("(1/2)") && !acc.contains('±'), "{acc}");
        let report = std::fs::read_to_string(dir.join("badnets-report.json")).unwrap();
        assert!(ProtocolTable::from_json("r.json", &report).is_none());
        let broken = text.replacen("\"No defense\",", "", 1);
        let e = ProtocolTable::from_json("t.json", &broken)
            .expect("still a protocol table")
            .expect_err("columns and cells differ");
        assert!(e.starts_with("t.json"), "{e}");
    }

    const REPORT: &str = r#"{
        "schema_version": 1, "kind": "attack", "status": "complete", "tool_version": "0.1.0",
        "config": {}, "attack": {"kind": "blended", "target": 0, "all_to_all": false, "poison_rate": 0.1},
        "device": {"requested": "cpu", "backend": "flex", "adapter": null, "cpu_threads": 2},
        "data": {"num_classes": 10, "train_size": 3000, "holdout_size": 1000, "test_size": 1000},
        "epochs": [
            {"epoch": 1, "lr": 0.05, "loss": 2.0, "train_acc": 0.2, "clean_acc": 0.25, "seconds": 30, "eval_seconds": 3, "images_per_sec": 100, "asr": 0.1},
            {"epoch": 2, "lr": 0.05, "loss": 1.5, "train_acc": 0.4, "clean_acc": 0.41, "seconds": 30, "eval_seconds": 3, "images_per_sec": 100, "asr": 0.9}
        ],
        "final": {"clean_acc": 0.41, "asr": 0.9}, "model_file": "model.bpk",
        "started_unix": 0, "finished_unix": 60
    }"#;

    #[test]
    fn malformed_and_foreign_files_name_the_file() {
        let r = load_reports([
            ("a.json", "{"),
            ("b.json", "{\"x\":1}"),
            ("c.json", "{\"schema_version\":99}"),
        ]);
        let errs: Vec<String> = r.into_iter().map(|x| x.expect_err("must fail")).collect();
        assert!(errs[0].starts_with("a.json: not JSON"), "{}", errs[0]);
        assert!(
            errs[1].starts_with("b.json: not a cleanse report"),
            "{}",
            errs[1]
        );
        assert!(
            errs[2].contains("c.json") && errs[2].contains("99"),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn a_report_gives_curves_summary_and_a_table_row() {
        let r = load_reports([("run/report.json", REPORT)])
            .pop()
            .expect("one")
            .expect("valid report");
        let c = curves(&r);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].points, vec![(1.0, 25.0), (2.0, 41.0)]);
        assert_eq!(c[1].label, "ASR");
        assert_eq!(c[1].points[1], (2.0, 90.0));
        let s = summary("run/report.json", &r);
        assert!(s.contains(&("attack".to_string(), "Blended 10%".to_string())));
        assert!(s.contains(&("ASR".to_string(), "90.0%".to_string())));
        let t = AttackDefenseTable::build([("run", &r)]);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].0, "Blended 10%");
    }

    #[test]
    fn axes_have_round_ticks_covering_the_data() {
        let a = Axis::nice(3.2, 97.5, 6);
        assert_eq!(a.ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!((a.min, a.max), (0.0, 100.0));
        let e = Axis::nice(1.0, 24.0, 6);
        assert_eq!(e.ticks, vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0]);
        let small = Axis::nice(0.013, 0.048, 5);
        assert_eq!(small.ticks, vec![0.01, 0.02, 0.03, 0.04, 0.05]);
        // One epoch: a degenerate range still gives a usable axis.
        let one = Axis::nice(1.0, 1.0, 5);
        assert!(one.min < 1.0 && one.max > 1.0 && one.ticks.len() >= 2);
        assert!(Axis::nice(f64::NAN, 1.0, 5).ticks.len() >= 2);
        assert_eq!(a.scale(50.0, 200.0), 100.0);
    }

    #[test]
    fn polylines_map_data_into_the_box() {
        let s = Series {
            label: "x".into(),
            points: vec![(0.0, 0.0), (10.0, 100.0)],
        };
        let x = Axis::nice(0.0, 10.0, 3);
        let y = Axis::nice(0.0, 100.0, 3);
        assert_eq!(polyline(&s, &x, &y, 200.0, 100.0), "0.0,100.0 200.0,0.0");
    }
}
