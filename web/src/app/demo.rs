//! The demo page: trigger gallery, training (clean or backdoored), cleansing, and loading a model
//! trained by the CLI.

use super::chart::chart;
use super::{BrowserHost, dataset_kind, device, fetch_bytes, files_of, lab, query, read_files};
use crate::engine::{self, CleansePlan, DemoData, DemoModel, EpochPoint, Progress, TrainPlan};
use crate::picture::{data_url, png, residual};
use crate::{Series, accuracy_curves};
use cleanse_core::attack::AttackKind;
use cleanse_core::table::attack_display_name;
use leptos::prelude::*;

/// Training and unlabeled images the demo uses (of the 2,000 training images shipped; the 500 test
/// images are all used). Fewer do not show the cleanser at work: with 400 training and 200
/// unlabeled images the teacher reaches 18.5% clean accuracy and the cleanser cannot remove
/// its backdoor (docs/browser.md).
const TRAIN_IMAGES: usize = 1500;
const UNLABELED: usize = 500;
/// Residual magnification of the gallery.
const MAGNIFY: f32 = 5.0;

#[derive(Clone, Debug, PartialEq)]
struct GalleryRow {
    name: String,
    poisoned: String,
    residual: String,
    note: String,
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn image_url(pixels: &[u8]) -> String {
    png(pixels, [3, 32, 32], 3)
        .map(|p| data_url(&p))
        .unwrap_or_default()
}

/// Loads (once) the shipped samples of data set `ds`.
async fn load_data(ds: &'static str) -> Result<DemoData, String> {
    if let Some(d) = lab(|l| l.data.get(ds).cloned()) {
        return Ok(d);
    }
    let train_url = format!("samples/{ds}-train.bin");
    let test_url = format!("samples/{ds}-test.bin");
    let train = fetch_bytes(&train_url).await?;
    let test = fetch_bytes(&test_url).await?;
    let d = DemoData::from_records(
        dataset_kind(ds),
        (&train_url, &train),
        (&test_url, &test),
        UNLABELED,
    )?;
    lab(|l| l.data.insert(ds, d.clone()));
    Ok(d)
}

fn static_name(ds: &str) -> &'static str {
    match ds {
        "gtsrb" => "gtsrb",
        _ => "cifar10",
    }
}

fn attack_of(name: &str) -> Option<AttackKind> {
    AttackKind::ALL.into_iter().find(|k| k.name() == name)
}

fn metrics_view(id: &'static str, m: Option<(f64, Option<f64>)>) -> impl IntoView {
    let (acc, asr) = match m {
        Some((a, s)) => (
            pct(a),
            s.map(pct).unwrap_or_else(|| "n/a (clean model)".into()),
        ),
        None => ("–".into(), "–".into()),
    };
    view! {
        <span class="metric">"clean accuracy " <b id=format!("{id}-acc")>{acc}</b></span>
        <span class="metric">"ASR " <b id=format!("{id}-asr")>{asr}</b></span>
    }
}

/// "BadNets", "IAB", ... or "clean": what a model was trained against.
fn model_name(m: &DemoModel) -> String {
    m.attack
        .as_ref()
        .map(|a| attack_display_name(a.config.kind.name()))
        .unwrap_or_else(|| "clean".into())
}

fn history_series(h: &[EpochPoint]) -> Vec<Series> {
    accuracy_curves(h.iter().map(|e| (e.epoch as f64, e.clean_acc, e.asr)))
}

#[component]
pub fn Demo() -> impl IntoView {
    let tiny = query("preset").as_deref() == Some("tiny");
    let dataset = RwSignal::new(static_name(&query("dataset").unwrap_or_default()));
    let data_msg = RwSignal::new(String::from("loading sample images…"));
    let thumbs: RwSignal<Vec<String>> = RwSignal::new(Vec::new());
    let picked = RwSignal::new(0usize);
    let clean_url = RwSignal::new(String::new());
    let gallery: RwSignal<Vec<GalleryRow>> = RwSignal::new(Vec::new());
    let gallery_gen = RwSignal::new(0u32);

    let attack = RwSignal::new(query("attack").unwrap_or_else(|| "badnets".into()));
    let epochs = RwSignal::new(if tiny {
        1usize
    } else {
        TrainPlan::demo(None).epochs
    });
    let width = RwSignal::new(if tiny { 4usize } else { 8 });
    let n_train = RwSignal::new(if tiny { 64usize } else { TRAIN_IMAGES });
    // `?batches=N` caps every epoch at N batches (a quick look); the tiny preset uses 3.
    let max_batches =
        query("batches")
            .and_then(|b| b.parse().ok())
            .or(if tiny { Some(3) } else { None });
    let test_images = if tiny { 64 } else { 500 };

    let busy = RwSignal::new(false);
    let status = RwSignal::new(String::new());
    let error = RwSignal::new(String::new());
    let losses: RwSignal<Vec<(f64, f64)>> = RwSignal::new(Vec::new());
    let train_hist: RwSignal<Vec<EpochPoint>> = RwSignal::new(Vec::new());
    let model_label = RwSignal::new(String::from("none yet"));
    let before: RwSignal<Option<(f64, Option<f64>)>> = RwSignal::new(None);

    let cleanse_defaults = CleansePlan::demo();
    let k_epochs = RwSignal::new(if tiny { 1 } else { cleanse_defaults.epochs });
    let ratio_scale = RwSignal::new(cleanse_defaults.ratio_scale);
    let cleanse_hist: RwSignal<Vec<EpochPoint>> = RwSignal::new(Vec::new());
    let after: RwSignal<Option<(f64, Option<f64>)>> = RwSignal::new(None);

    // The gallery: the picked test image under every attack (the model's own IAB networks when
    // an IAB model is loaded).
    let refresh_gallery = move || {
        let ds = dataset.get_untracked();
        let idx = picked.get_untracked();
        gallery_gen.update(|g| *g += 1);
        let gen_now = gallery_gen.get_untracked();
        leptos::task::spawn_local(async move {
            let Some(data) = lab(|l| l.data.get(ds).cloned()) else {
                return;
            };
            let Some(dev) = device() else { return };
            let img = data.test.image(idx.min(data.test.len() - 1)).to_vec();
            let iab = lab(|l| l.model.as_ref().and_then(|m| m.iab.clone()));
            match engine::stamp_all(&img, [3, 32, 32], data.kind, iab.as_ref(), &dev).await {
                Ok(rows) => {
                    if gallery_gen.get_untracked() != gen_now {
                        return;
                    }
                    clean_url.set(image_url(&img));
                    gallery.set(
                        rows.into_iter()
                            .map(|s| GalleryRow {
                                name: attack_display_name(s.kind.name()),
                                poisoned: image_url(&s.poisoned),
                                residual: image_url(&residual(&img, &s.poisoned, MAGNIFY)),
                                note: match (s.kind, s.trained) {
                                    (AttackKind::Iab, false) => "networks as seeded, untrained (load an IAB run to see its trained trigger)".into(),
                                    (AttackKind::Iab, true) => "the loaded run's trained networks".into(),
                                    (AttackKind::Lc, _) => "test-time trigger (training images also carry a PGD perturbation)".into(),
                                    _ => String::new(),
                                },
                            })
                            .collect(),
                    );
                }
                Err(e) => error.set(format!("gallery: {e}")),
            }
        });
    };

    Effect::new(move |_| {
        let ds = dataset.get();
        data_msg.set(format!("loading {ds} sample images…"));
        leptos::task::spawn_local(async move {
            match load_data(ds).await {
                Ok(d) => {
                    data_msg.set(format!(
                        "{}: {} training, {} unlabeled (held out for the defender) and {} test images, shipped with the page",
                        ds,
                        d.train.len(),
                        d.unlabeled.len(),
                        d.test.len()
                    ));
                    thumbs.set(
                        (0..24.min(d.test.len()))
                            .map(|i| {
                                png(d.test.image(i), [3, 32, 32], 1)
                                    .map(|p| data_url(&p))
                                    .unwrap_or_default()
                            })
                            .collect(),
                    );
                    picked.set(0);
                    refresh_gallery();
                }
                Err(e) => data_msg.set(format!("could not load the samples: {e}")),
            }
        });
    });

    let on_train = move |_| {
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        error.set(String::new());
        losses.set(Vec::new());
        train_hist.set(Vec::new());
        cleanse_hist.set(Vec::new());
        after.set(None);
        leptos::task::spawn_local(async move {
            let result = async {
                let ds = dataset.get_untracked();
                let data =
                    load_data(ds)
                        .await?
                        .truncated(n_train.get_untracked(), UNLABELED, test_images);
                let dev = device().ok_or("no compute device")?;
                let kind = attack_of(&attack.get_untracked());
                let plan = TrainPlan {
                    width: width.get_untracked(),
                    epochs: epochs.get_untracked(),
                    max_batches,
                    ..TrainPlan::demo(kind)
                };
                let clean = lab(|l| l.clean.as_ref().map(|m| m.model.clone()));
                let host = BrowserHost::new();
                let mut on = |p: Progress| match p {
                    Progress::Stage(s) => status.set(s),
                    Progress::Batch {
                        epoch,
                        batch,
                        batches,
                        loss,
                    } => {
                        status.set(format!(
                            "training: epoch {}/{}, batch {}/{batches}, loss {loss:.3}",
                            epoch + 1,
                            plan.epochs,
                            batch + 1
                        ));
                        losses.update(|v| {
                            v.push((epoch as f64 + (batch + 1) as f64 / batches as f64, loss))
                        });
                    }
                    Progress::Epoch(e) => train_hist.update(|h| h.push(e)),
                };
                let m = engine::train(&data, &plan, clean.as_ref(), &dev, &host, &mut on).await?;
                Ok::<DemoModel, String>(m)
            }
            .await;
            match result {
                Ok(m) => {
                    let name = model_name(&m);
                    let last = m.last().map(|e| (e.clean_acc, e.asr));
                    model_label.set(format!(
                        "{name} model trained here (width {}, {} epochs{})",
                        m.config.width,
                        m.history.len(),
                        if m.stopped { ", stopped early" } else { "" }
                    ));
                    before.set(last);
                    status.set("training finished".into());
                    lab(|l| {
                        if m.attack.is_none() {
                            l.clean = Some(m.clone());
                        }
                        l.model = Some(m);
                    });
                }
                Err(e) => error.set(e),
            }
            busy.set(false);
        });
    };

    let on_cleanse = move |_| {
        if busy.get_untracked() {
            return;
        }
        let Some(teacher) = lab(|l| l.model.clone()) else {
            error.set("train or load a model first".into());
            return;
        };
        busy.set(true);
        error.set(String::new());
        cleanse_hist.set(Vec::new());
        after.set(None);
        leptos::task::spawn_local(async move {
            let result = async {
                let ds = dataset.get_untracked();
                let data = load_data(ds).await?.truncated(0, UNLABELED, test_images);
                let dev = device().ok_or("no compute device")?;
                let plan = CleansePlan {
                    epochs: k_epochs.get_untracked(),
                    ratio_scale: ratio_scale.get_untracked(),
                    max_batches,
                    ..CleansePlan::demo()
                };
                let host = BrowserHost::new();
                let mut on = |p: Progress| match p {
                    Progress::Stage(s) => status.set(s),
                    Progress::Batch {
                        epoch,
                        batch,
                        batches,
                        loss,
                    } => status.set(format!(
                        "cleansing: epoch {}/{}, batch {}/{batches}, KL loss {loss:.4}",
                        epoch + 1,
                        plan.epochs,
                        batch + 1
                    )),
                    Progress::Epoch(e) => cleanse_hist.update(|h| h.push(e)),
                };
                engine::cleanse(&teacher, &data, &plan, &dev, &host, &mut on).await
            }
            .await;
            match result {
                Ok(s) => {
                    after.set(s.last().map(|e| (e.clean_acc, e.asr)));
                    status.set("cleansing finished".into());
                }
                Err(e) => error.set(e),
            }
            busy.set(false);
        });
    };

    let on_load_model = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        let list = files_of(input.files());
        input.set_value("");
        busy.set(true);
        error.set(String::new());
        leptos::task::spawn_local(async move {
            let result = async {
                let mut files = Vec::new();
                for (name, bytes) in read_files(list).await {
                    files.push((name, bytes?));
                }
                let dev = device().ok_or("no compute device")?;
                let m = engine::load_run(&files, &dev)?;
                let ds = dataset.get_untracked();
                let data = load_data(ds).await?.truncated(0, UNLABELED, test_images);
                if m.config.num_classes != data.test.num_classes {
                    return Err(format!(
                        "the model has {} classes, the {ds} demo data {}: pick the matching data set above",
                        m.config.num_classes, data.test.num_classes
                    ));
                }
                status.set("evaluating the loaded model".into());
                let host = BrowserHost::new();
                let (acc, asr) = engine::evaluate(&m, &data.test, &dev, &host).await?;
                Ok::<_, String>((m, acc, asr))
            }
            .await;
            match result {
                Ok((m, acc, asr)) => {
                    let name = model_name(&m);
                    model_label.set(format!(
                        "{name} model loaded from a CLI run (width {})",
                        m.config.width
                    ));
                    before.set(Some((acc, asr)));
                    train_hist.set(Vec::new());
                    cleanse_hist.set(Vec::new());
                    after.set(None);
                    status.set("model loaded".into());
                    lab(|l| l.model = Some(m));
                    refresh_gallery();
                }
                Err(e) => error.set(e),
            }
            busy.set(false);
        });
    };

    let number_input = |id: &'static str, sig: RwSignal<usize>, min: usize, max: usize| {
        view! {
            <input id=id type="number" min=min max=max prop:value=move || sig.get().to_string()
                on:change=move |ev| {
                    if let Ok(v) = event_target_value(&ev).parse::<usize>() {
                        sig.set(v.clamp(min, max));
                    }
                }/>
        }
    };

    let attack_options = std::iter::once(("clean", "none (clean model)".to_string()))
        .chain(
            AttackKind::ALL
                .iter()
                .map(|k| (k.name(), attack_display_name(k.name()))),
        )
        .map(|(v, label)| view! { <option value=v selected=v == attack.get_untracked()>{label}</option> })
        .collect::<Vec<_>>();

    view! {
        <section id="demo">
            <h2>"1. Data and triggers"</h2>
            <label>"Data set "
                <select id="dataset" on:change=move |ev| dataset.set(static_name(&event_target_value(&ev)))>
                    <option value="cifar10">"CIFAR-10"</option>
                    <option value="gtsrb">"GTSRB"</option>
                </select>
            </label>
            <p id="data-status" class="note">{move || data_msg.get()}</p>
            <div class="thumbs">
                {move || thumbs.get().into_iter().enumerate().map(|(i, url)| view! {
                    <img src=url class="thumb" class:picked=move || picked.get() == i
                        on:click=move |_| { picked.set(i); refresh_gallery(); }/>
                }).collect::<Vec<_>>()}
            </div>
            <table id="gallery" class="gallery">
                <thead><tr><th>"attack"</th><th>"clean"</th><th>"poisoned"</th><th>{format!("residual ×{MAGNIFY}")}</th><th></th></tr></thead>
                <tbody>
                    {move || gallery.get().into_iter().map(|r| view! {
                        <tr>
                            <th>{r.name}</th>
                            <td><img src=move || clean_url.get()/></td>
                            <td><img class="poisoned" src=r.poisoned/></td>
                            <td><img src=r.residual/></td>
                            <td class="note">{r.note}</td>
                        </tr>
                    }).collect::<Vec<_>>()}
                </tbody>
            </table>

            <h2>"2. Train a model"</h2>
            <p class="note">"A narrow ResNet-18 on the training images, clean or with a backdoor; the trigger is stamped after augmentation by an attacker who controls training (the CLI's " <code>"--preset subset"</code> ")."</p>
            <div class="controls">
                <label>"Attack " <select id="attack" on:change=move |ev| attack.set(event_target_value(&ev))>{attack_options}</select></label>
                <label>"Epochs " {number_input("epochs", epochs, 1, 100)}</label>
                <label>"Width " {number_input("width", width, 2, 64)}</label>
                <label>"Training images " {number_input("train-images", n_train, 16, TRAIN_IMAGES)}</label>
                <button id="train" on:click=on_train disabled=move || busy.get()>"Train"</button>
                <button id="stop" on:click=move |_| lab(|l| l.stop.set(true)) disabled=move || !busy.get()>"Stop"</button>
            </div>
            <p id="status" class="status">{move || status.get()}</p>
            <p id="demo-error" class="error">{move || error.get()}</p>
            <p>"Model: " <span id="model-label">{move || model_label.get()}</span></p>
            <p id="train-metrics">{move || metrics_view("train", train_hist.get().last().map(|e| (e.clean_acc, e.asr)))}
                <span class="metric">"last epoch " <b id="epoch-seconds">{move || train_hist.get().last().map(|e| format!("{:.2} s", e.train_seconds)).unwrap_or_else(|| "–".into())}</b>
                {move || train_hist.get().last().map(|e| format!(" for {} images", e.images)).unwrap_or_default()}</span>
                <span class="note">" epoch times: " <span id="epoch-times">{move || train_hist.get().iter().map(|e| format!("{:.2}", e.train_seconds)).collect::<Vec<_>>().join(", ")}</span>" s"</span>
            </p>
            <div class="charts">
                {move || { let l = losses.get(); (!l.is_empty()).then(|| chart("loss-chart", "training loss".into(), vec![Series { label: "loss".into(), points: l }], false)) }}
                {move || { let h = train_hist.get(); (!h.is_empty()).then(|| chart("train-chart", "training: per epoch, %".into(), history_series(&h), true)) }}
            </div>
            <details>
                <summary>"Load a model trained by the command line"</summary>
                <p class="note">"Pick the files of one run directory of " <code>"cleanse train"</code> ", " <code>"cleanse attack"</code> " or " <code>"cleanse defend"</code> ": " <code>"model.json"</code> ", " <code>"model.bpk"</code> " and, for a backdoored model, " <code>"attack.json"</code> " (WaNet: also " <code>"warp_grid.f32"</code> "; IAB: " <code>"iab_generator.bpk"</code> ", " <code>"iab_mask.bpk"</code> ")."</p>
                <input id="model-files" type="file" multiple on:change=on_load_model/>
            </details>

            <h2>"3. Cleanse it"</h2>
            <p class="note">"The paper's cleanser: the student is the model with a layer-wise share of its weights re-initialised (adaptive ratios 1, 1, 3, 9, 27 and 10% from the stem to the classifier, times the scale), distilled from the frozen model on the unlabeled images only, with the annealed temperature."</p>
            <div class="controls">
                <label>"Epochs " {number_input("cleanse-epochs", k_epochs, 1, 200)}</label>
                <label>"Ratio scale "
                    <input id="ratio-scale" type="number" min="0.1" max="10" step="0.5" prop:value=move || ratio_scale.get().to_string()
                        on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<f64>() { ratio_scale.set(v.clamp(0.1, 10.0)) } }/>
                </label>
                <button id="cleanse" on:click=on_cleanse disabled=move || busy.get()>"Cleanse"</button>
            </div>
            <table class="before-after">
                <tr><th>"before (the model)"</th><td>{move || metrics_view("before", before.get())}</td></tr>
                <tr><th>"after (the cleansed student)"</th><td>{move || metrics_view("after", after.get())}</td></tr>
            </table>
            <div class="charts">
                {move || { let h = cleanse_hist.get(); (!h.is_empty()).then(|| chart("cleanse-chart", "cleansing: per epoch, %".into(), history_series(&h), true)) }}
            </div>
        </section>
    }
}
