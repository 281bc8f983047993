//! `cleanse protocol table DIR`: the supplement's layout ([`ProtocolTable`]) from a protocol's
//! runs. Missing or unfinished runs are left out of a cell and counted; a cell with none is
//! missing, never zero.

use super::archive::{Archive, EntryStatus, Manifest};
use super::plan::{Plan, Role};
use anyhow::Result;
use cleanse_core::leaderboard::Leaderboard;
use cleanse_core::protocol_table::{ProtocolTable, Stat};
use cleanse_core::report::{Report, RunStatus};
use cleanse_core::table::{NO_DEFENSE, attack_label, record_label};
use std::path::Path;

/// Each name's label (from its reports, e.g. `BadNets 10%` for a row, `KD init single:3` for a
/// column; before any finished, from its planned command line) where no other has the same
/// label, else the spec's name.
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

/// The report of the run in `path` when it is complete; `None` when it has none or is not
/// complete. A report that cannot be read or holds impossible metrics is an error naming it.
fn finished(path: &Path) -> Result<Option<Report>> {
    let file = path.join("report.json");
    let text = match std::fs::read(&file) {
        Ok(b) => String::from_utf8(b)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", file.display())),
    };
    let r = Report::from_json(&file.display().to_string(), &text).map_err(anyhow::Error::msg)?;
    r.check_metrics()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok((r.status == RunStatus::Complete).then_some(r))
}

/// The table of the runs of `plan` under `out`.
pub(crate) fn build(plan: &Plan, out: &Path) -> Result<ProtocolTable> {
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
                let Some(report) = finished(&out.join(&r.name))? else {
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
                    labels[i].get_or_insert_with(|| record_label(rec));
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
    // Rows and columns with no finished run yet: the label their runs' flags give.
    let planned = |label: &mut Option<String>,
                   role: Role,
                   attack: Option<&String>,
                   defense: Option<&String>| {
        if label.is_none() {
            *label = plan
                .runs
                .iter()
                .find(|r| {
                    r.role == role
                        && attack.is_none_or(|a| r.attack.as_ref() == Some(a))
                        && defense.is_none_or(|d| r.defense.as_ref() == Some(d))
                })
                .and_then(|r| crate::planned_label(&r.words));
        }
    };
    for (label, a) in row_labels.iter_mut().zip(&plan.attacks) {
        planned(label, Role::Attack, Some(a), None);
    }
    for (label, d) in labels.iter_mut().zip(&plan.defenses) {
        planned(label, Role::Defense, None, Some(d));
    }
    columns.extend(unique_labels(&plan.defenses, &labels));
    let attacks = unique_labels(&plan.attacks, &row_labels);
    let rows: Vec<&[Option<Stat>]> = cells.iter().map(Vec::as_slice).collect();
    let mean = cleanse_core::table::column_means(&rows, columns.len(), |means| {
        let metrics: Vec<(f64, Option<f64>)> =
            means.iter().map(|s| (s.acc_mean, s.asr_mean)).collect();
        let mut s = Stat::of(&metrics, means.len())?;
        s.n = means.iter().map(|m| m.n).sum();
        s.expected = means.iter().map(|m| m.expected).sum();
        Some(s)
    });
    // The data set, as every run's command line names it.
    let dataset = plan.runs.iter().find_map(|r| {
        r.words
            .windows(2)
            .find(|w| w[0] == "--dataset")
            .map(|w| w[1].clone())
    });
    Ok(ProtocolTable {
        kind: cleanse_core::protocol_table::KIND.into(),
        attacks,
        columns,
        models: plan.models.clone(),
        cells,
        mean,
        dataset,
    })
}

/// `cleanse protocol table DIR`: the table of every protocol run into `DIR` (an output folder
/// of `protocol run`, or a results archive, whose every file is checked against its manifest
/// first); with `provenance`, which machine kind and commit made each run.
pub(crate) fn run(out: &Path, provenance: bool) -> Result<()> {
    let entries = match out.join(super::archive::INDEX).is_file() {
        // `open` first finishes or undoes a replacement a killed process left.
        true => Archive::open(out)?.entries()?,
        false => Vec::new(),
    };
    for plan in Plan::read_all(out)? {
        write(&plan, out)?;
        if provenance {
            out!("{}", provenance_table(&plan, out, &entries)?);
        }
    }
    Ok(())
}

/// Who made each run of `plan`'s table: from the archive's manifests where there are any,
/// else from the run's report (its device only).
fn provenance_table(plan: &Plan, out: &Path, entries: &[Manifest]) -> Result<String> {
    let mut s = String::from(
        "\n| run | status | arithmetic | commit | epochs | hours |\n|---|---|---|---|---|---|\n",
    );
    for r in plan.runs.iter().filter(|r| r.role != Role::Map) {
        let line = match entries.iter().find(|m| m.run == r.name) {
            Some(m) => format!(
                "| {} | {} | {} | {} | {} | {:.2} |",
                r.name,
                match m.status {
                    EntryStatus::Complete => "archived",
                    EntryStatus::InProgress => "archived unfinished",
                },
                m.arithmetic.join(", then "),
                m.commit.get(..12).unwrap_or(&m.commit),
                m.epochs_done,
                m.seconds() / 3600.0
            ),
            None => match finished(&out.join(&r.name))? {
                Some(rep) => format!(
                    "| {} | complete | {} | | {} | {:.2} |",
                    r.name,
                    crate::describe_device_info(&rep.device),
                    rep.epochs.len(),
                    rep.epochs.iter().map(|e| e.seconds).sum::<f64>() / 3600.0
                ),
                None => format!("| {} | missing | | | | |", r.name),
            },
        };
        s.push_str(&line);
        s.push('\n');
    }
    Ok(s)
}

/// The table of `plan` as `out/tables/<name>.{md,csv,json}`, the Markdown followed by the
/// table's leaderboard (when an attack has a defended cell); returns the table and the
/// leaderboard's Markdown.
pub(crate) fn save(plan: &Plan, out: &Path) -> Result<(ProtocolTable, Option<String>)> {
    let t = build(plan, out)?;
    let dir = out.join("tables");
    cleanse_core::io::create_dir_all(&dir)?;
    let leaderboard = Leaderboard::of(&t).map(|l| l.markdown());
    t.write(&dir, &plan.name(), leaderboard.as_deref())?;
    Ok((t, leaderboard))
}

/// The table of `plan` as `out/tables/<name>.{md,csv,json}`, and its Markdown on stdout.
pub(crate) fn write(plan: &Plan, out: &Path) -> Result<()> {
    let (t, leaderboard) = save(plan, out)?;
    let dir = out.join("tables");
    outln!(
        "{} ({}):\n",
        plan.name(),
        dir.join(format!("{}.md", plan.name())).display()
    );
    out!("{}", t.markdown());
    if let Some(l) = leaderboard {
        out!("\n{l}");
    }
    Ok(())
}
