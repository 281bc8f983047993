//! The report viewer: `report.json` files from the CLI, by file picker or drag and drop.

use super::chart::chart;
use super::{files_of, read_named};
use crate::{archive_name, curves, defense_curves, load_reports, protocol_cell, summary};
use cleanse_core::leaderboard::Leaderboard;
use cleanse_core::protocol_table::ProtocolTable;
use cleanse_core::report::Report;
use cleanse_core::table::AttackDefenseTable;
use leptos::prelude::*;

fn pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

/// One row of an attack × defense table: its label and, per column, the ACC and ASR texts
/// (`None`: no run).
type AccAsrRow = (String, Vec<Option<(String, String)>>);

/// An attack × defense table: an ACC and an ASR column under each of `columns`.
fn acc_asr_table(
    id: Option<&'static str>,
    class: Option<&'static str>,
    columns: &[String],
    rows: Vec<AccAsrRow>,
) -> impl IntoView + use<> {
    let head = columns
        .iter()
        .map(|d| view! { <th colspan="2">{d.clone()}</th> })
        .collect::<Vec<_>>();
    let sub = columns
        .iter()
        .map(|_| view! { <th>"ACC %"</th><th>"ASR %"</th> })
        .collect::<Vec<_>>();
    let rows = rows
        .into_iter()
        .map(|(label, cells)| {
            let cells = cells
                .into_iter()
                .map(|c| {
                    let (acc, asr) = c.unwrap_or_else(|| ("-".into(), "-".into()));
                    view! { <td>{acc}</td><td>{asr}</td> }
                })
                .collect::<Vec<_>>();
            view! { <tr><th>{label}</th>{cells}</tr> }
        })
        .collect::<Vec<_>>();
    view! {
        <table id=id class=class>
            <thead><tr><th rowspan="2">"attack"</th>{head}</tr><tr>{sub}</tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// A protocol table's leaderboard (core's [`Leaderboard`], with the rows and headers its
/// Markdown has): the best defense per attack by DER, each defense's means, and on CIFAR-10 the
/// pairs ordered otherwise than BackdoorBench's.
fn leaderboard_view(l: Leaderboard) -> impl IntoView + use<> {
    let table = |class: &'static str, header: &[&str], rows: Vec<Vec<String>>| {
        let head = header
            .iter()
            .map(|h| view! { <th>{h.to_string()}</th> })
            .collect::<Vec<_>>();
        let rows = rows
            .into_iter()
            .map(|r| {
                let mut cells = r.into_iter();
                let first = cells.next().unwrap_or_default();
                let rest = cells.map(|c| view! { <td>{c}</td> }).collect::<Vec<_>>();
                view! { <tr><th>{first}</th>{rest}</tr> }
            })
            .collect::<Vec<_>>();
        view! {
            <table class=class>
                <thead><tr>{head}</tr></thead>
                <tbody>{rows}</tbody>
            </table>
        }
    };
    let best = table(
        "leaderboard",
        &Leaderboard::BEST_HEADER,
        l.rankings.iter().map(|r| r.row().to_vec()).collect(),
    );
    let means = table(
        "leaderboard-defenses",
        &Leaderboard::MEANS_HEADER,
        l.summaries.iter().map(|d| d.row().to_vec()).collect(),
    );
    let reversals = l.comparison().map(|comparison| {
        view! {
            <p class="note">{format!("{comparison} (DER % there -> here).")}</p>
            {table(
                "leaderboard-reversals",
                &Leaderboard::REVERSALS_HEADER,
                l.reversals.iter().map(|r| r.row().to_vec()).collect(),
            )}
        }
    });
    view! {
        <h4>{format!("{}.", Leaderboard::RATING)}</h4>
        {best}
        {means}
        {reversals}
    }
}

/// A file's path inside the folder it was picked with (`webkitRelativePath`; empty when picked
/// alone).
fn relative_path(f: &web_sys::File) -> String {
    js_sys::Reflect::get(f.as_ref(), &"webkitRelativePath".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_default()
}

#[component]
pub fn Viewer() -> impl IntoView {
    let reports: RwSignal<Vec<(String, Report)>> = RwSignal::new(Vec::new());
    let tables: RwSignal<Vec<(String, ProtocolTable)>> = RwSignal::new(Vec::new());
    let errors: RwSignal<Vec<String>> = RwSignal::new(Vec::new());
    let notes: RwSignal<Vec<String>> = RwSignal::new(Vec::new());
    let dragging = RwSignal::new(false);
    let open = move |list: Vec<(String, web_sys::File)>, skipped: usize| {
        leptos::task::spawn_local(async move {
            let files = read_named(list).await;
            let mut errs = Vec::new();
            if skipped > 0 {
                notes.set(vec![format!(
                    "{skipped} other files of the folder (weights, manifests, splits) left unread"
                )]);
            }
            let mut texts = Vec::new();
            for (name, bytes) in files {
                match bytes.and_then(|b| {
                    String::from_utf8(b).map_err(|_| format!("{name}: not a text file (expected a report.json written by the cleanse CLI)"))
                }) {
                    Ok(t) => texts.push((name, t)),
                    Err(e) => errs.push(e),
                }
            }
            // Protocol tables (`cleanse protocol table`) go to their own list.
            let mut found = Vec::new();
            texts.retain(|(name, text)| match ProtocolTable::from_json(name, text) {
                Some(Ok(t)) => {
                    found.push((name.clone(), t));
                    false
                }
                Some(Err(e)) => {
                    errs.push(e);
                    false
                }
                None => true,
            });
            tables.update(|v| {
                for (n, t) in found {
                    v.retain(|(m, _)| *m != n);
                    v.push((n, t));
                }
            });
            let parsed = load_reports(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())));
            let mut ok = Vec::new();
            for ((name, _), r) in texts.iter().zip(parsed) {
                match r {
                    Ok(r) => ok.push((name.clone(), r)),
                    Err(e) => errs.push(e),
                }
            }
            errors.set(errs);
            reports.update(|v| {
                for (n, r) in ok {
                    // Opening a file again replaces it.
                    v.retain(|(m, _)| *m != n);
                    v.push((n, r));
                }
            });
        });
    };
    let by_name = |list: Option<web_sys::FileList>| {
        files_of(list)
            .into_iter()
            .map(|f| (f.name(), f))
            .collect::<Vec<_>>()
    };
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        open(by_name(input.files()), 0);
        input.set_value("");
    };
    let on_folder = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        let all = files_of(input.files());
        let total = all.len();
        let picked: Vec<(String, web_sys::File)> = all
            .into_iter()
            .filter_map(|f| archive_name(&relative_path(&f)).map(|n| (n, f)))
            .collect();
        let skipped = total - picked.len();
        open(picked, skipped);
        input.set_value("");
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        open(by_name(ev.data_transfer().and_then(|d| d.files())), 0);
    };
    let table = move || {
        let rs = reports.get();
        let t = AttackDefenseTable::build(rs.iter().map(|(n, r)| (n.as_str(), r)));
        if t.rows.is_empty() {
            return None;
        }
        // The supplement's Mean row, under two attacks or more.
        let mean = (t.rows.len() > 1).then(|| ("Mean".to_string(), t.mean()));
        let rows = t
            .rows
            .iter()
            .chain(mean.as_ref())
            .map(|(attack, cells)| {
                let cells = cells
                    .iter()
                    .map(|c| {
                        c.map(|c| {
                            let star = if c.complete { "" } else { "*" };
                            let asr = c.asr.map(pct).unwrap_or_else(|| "-".into());
                            (
                                format!("{}{star}", pct(c.clean_acc)),
                                format!("{asr}{star}"),
                            )
                        })
                    })
                    .collect();
                (attack.clone(), cells)
            })
            .collect();
        let table = acc_asr_table(Some("attack-defense-table"), None, &t.defenses, rows);
        let notes = t
            .notes
            .iter()
            .map(|n| view! { <li>{n.clone()}</li> })
            .collect::<Vec<_>>();
        let unfinished = t
            .rows
            .iter()
            .any(|(_, cells)| cells.iter().flatten().any(|c| !c.complete));
        Some(view! {
            <h3>"Attack × defense"</h3>
            {table}
            {unfinished.then(|| view! { <p class="note">"* the run had not finished: its last epoch so far."</p> })}
            <ul class="note">{notes}</ul>
        })
    };
    let protocol_tables = move || {
        tables
            .get()
            .into_iter()
            .map(|(name, t)| {
                let mean = (t.attacks.len() > 1).then(|| ("Mean".to_string(), t.mean.clone()));
                let rows = t
                    .attacks
                    .iter()
                    .cloned()
                    .zip(t.cells.iter().cloned())
                    .chain(mean)
                    .map(|(attack, cells)| {
                        (attack, cells.iter().map(|c| c.as_ref().map(protocol_cell)).collect())
                    })
                    .collect();
                let board = Leaderboard::of(&t).map(leaderboard_view);
                view! {
                    <h3>{format!("{name}: mean ± standard deviation over {} model(s) per attack", t.models.len())}</h3>
                    {acc_asr_table(None, Some("protocol-table"), &t.columns, rows)}
                    {board}
                }
            })
            .collect::<Vec<_>>()
    };
    let runs = move || {
        reports
            .get()
            .into_iter()
            .map(|(name, r)| {
                let facts = summary(&name, &r)
                    .into_iter()
                    .map(|(k, v)| view! { <tr><th>{k}</th><td>{v}</td></tr> })
                    .collect::<Vec<_>>();
                let series = curves(&r);
                let plot = (!series.is_empty() && !series[0].points.is_empty())
                    .then(|| chart("run-chart", format!("{name}: per epoch, %"), series, true));
                let along = defense_curves(&r).map(|(parameter, series)| {
                    chart(
                        "defense-curve",
                        format!("{name}: along {parameter}, %"),
                        series,
                        true,
                    )
                });
                view! {
                    <section class="run">
                        <h4>{name.clone()}</h4>
                        <table class="facts">{facts}</table>
                        {plot}
                        {along}
                    </section>
                }
            })
            .collect::<Vec<_>>()
    };
    view! {
        <section id="viewer">
            <h2>"Report viewer"</h2>
            <p>"Open the " <code>"report.json"</code> " files the " <code>"cleanse"</code>
               " command line writes (several at once): a summary and per-epoch curves of each run, and the attack × defense table in the layout of the paper's supplement; or the "
               <code>"table.json"</code> " of " <code>"cleanse protocol table"</code> "; or a whole folder: a results archive ("
               <code>"results/<protocol>/"</code> ") or a protocol's output folder, whose table and every run's curves it shows."</p>
            <div id="drop-zone" class="drop" class:over=move || dragging.get()
                on:dragover=move |ev: leptos::ev::DragEvent| { ev.prevent_default(); dragging.set(true); }
                on:dragleave=move |_| dragging.set(false)
                on:drop=on_drop>
                "Drop report files here, or "
                <input id="report-files" type="file" multiple accept=".json,application/json" on:change=on_pick/>
                " or a folder "
                <input id="archive-folder" type="file" prop:webkitdirectory=true multiple on:change=on_folder/>
                <button id="clear-reports" on:click=move |_| { reports.set(Vec::new()); tables.set(Vec::new()); errors.set(Vec::new()); notes.set(Vec::new()); }>"Clear"</button>
            </div>
            <ul id="viewer-notes" class="note">
                {move || notes.get().into_iter().map(|e| view! { <li>{e}</li> }).collect::<Vec<_>>()}
            </ul>
            <ul id="viewer-errors" class="errors">
                {move || errors.get().into_iter().map(|e| view! { <li>{e}</li> }).collect::<Vec<_>>()}
            </ul>
            {protocol_tables}
            {table}
            {runs}
        </section>
    }
}
