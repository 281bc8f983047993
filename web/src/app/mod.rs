//! The Leptos app (wasm32 only): the demo page and the report viewer.
//!
//! Models, data and the device live in a thread-local [`Lab`] (the browser has one thread);
//! signals hold only what the page shows.

mod chart;
mod demo;
mod viewer;

use crate::engine::{DemoData, DemoModel, Host};
use burn::prelude::Device;
use cleanse_core::data::DatasetKind;
use leptos::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// The demo's state outside the reactive graph.
#[derive(Default)]
pub(crate) struct Lab {
    pub device: Option<Device>,
    pub data: HashMap<&'static str, DemoData>,
    /// The model under test (trained here or loaded), the teacher of a cleanse.
    pub model: Option<DemoModel>,
    /// The last clean model trained here (LC makes its adversarial images on it).
    pub clean: Option<DemoModel>,
    pub stop: Rc<Cell<bool>>,
}

thread_local! {
    pub(crate) static LAB: RefCell<Lab> = RefCell::new(Lab::default());
}

pub(crate) fn lab<R>(f: impl FnOnce(&mut Lab) -> R) -> R {
    LAB.with(|l| f(&mut l.borrow_mut()))
}

/// The browser as the engine's host: `performance.now()`, the Stop button, and `setTimeout(0)`
/// between batches so that the page repaints and stays clickable.
pub(crate) struct BrowserHost {
    stop: Rc<Cell<bool>>,
}

impl BrowserHost {
    pub fn new() -> Self {
        let stop = lab(|l| l.stop.clone());
        stop.set(false);
        BrowserHost { stop }
    }
}

impl Host for BrowserHost {
    fn now_ms(&self) -> f64 {
        now_ms()
    }
    fn stop_requested(&self) -> bool {
        self.stop.get()
    }
    fn pause(&self) -> impl Future<Output = ()> {
        sleep_ms(0)
    }
}

pub(crate) fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

pub(crate) async fn sleep_ms(ms: i32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(p).await;
}

/// A query parameter of the page's URL (`?preset=tiny&backend=cpu`).
pub(crate) fn query(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    search
        .trim_start_matches('?')
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn js_error(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// The bytes at `url` (served beside the app).
pub(crate) async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let w = web_sys::window().ok_or("no window")?;
    let resp: web_sys::Response = JsFuture::from(w.fetch_with_str(url))
        .await
        .map_err(|e| format!("{url}: {}", js_error(e)))?
        .dyn_into()
        .map_err(|_| format!("{url}: not a response"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let buf = JsFuture::from(
        resp.array_buffer()
            .map_err(|e| format!("{url}: {}", js_error(e)))?,
    )
    .await
    .map_err(|e| format!("{url}: {}", js_error(e)))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

/// The files of a file list (picker or drop), taken out of the list at once: clearing the input
/// afterwards empties the list itself.
pub(crate) fn files_of(list: Option<web_sys::FileList>) -> Vec<web_sys::File> {
    let Some(list) = list else { return Vec::new() };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// The contents of files, as `(name, bytes)`.
pub(crate) async fn read_files(
    files: Vec<web_sys::File>,
) -> Vec<(String, Result<Vec<u8>, String>)> {
    read_named(files.into_iter().map(|f| (f.name(), f)).collect()).await
}

/// The contents of files, each under the name given with it.
pub(crate) async fn read_named(
    files: Vec<(String, web_sys::File)>,
) -> Vec<(String, Result<Vec<u8>, String>)> {
    let mut out = Vec::new();
    for (name, f) in files {
        let bytes = match JsFuture::from(f.array_buffer()).await {
            Ok(buf) => Ok(js_sys::Uint8Array::new(&buf).to_vec()),
            Err(e) => Err(format!("{name}: cannot read the file: {}", js_error(e))),
        };
        out.push((name, bytes));
    }
    out
}

pub(crate) fn dataset_kind(name: &str) -> DatasetKind {
    match name {
        "gtsrb" => DatasetKind::Gtsrb,
        _ => DatasetKind::Cifar10,
    }
}

/// Picks the device: WebGPU when the browser offers an adapter (unless `?backend=cpu`), else
/// Burn's CPU backend. Returns the line the page shows.
async fn init_device() -> String {
    let want_cpu = query("backend").as_deref() == Some("cpu");
    let (device, label) = if want_cpu {
        (
            Device::flex(),
            "CPU backend (flex), as asked by ?backend=cpu".to_string(),
        )
    } else {
        match Device::wgpu_options().init_async().await {
            Ok(d) => (d, "WebGPU".to_string()),
            Err(e) => (
                Device::flex(),
                format!("CPU backend (flex): WebGPU is not available here ({e})"),
            ),
        }
    };
    lab(|l| l.device = Some(device));
    label
}

pub(crate) fn device() -> Option<Device> {
    lab(|l| l.device.clone())
}

#[derive(Clone, Copy, PartialEq)]
enum Page {
    Demo,
    Viewer,
}

#[component]
fn App() -> impl IntoView {
    let backend = RwSignal::new(String::from("starting…"));
    let ready = RwSignal::new(false);
    let page = RwSignal::new(match query("page").as_deref() {
        Some("viewer") => Page::Viewer,
        _ => Page::Demo,
    });
    leptos::task::spawn_local(async move {
        let label = init_device().await;
        backend.set(label);
        ready.set(true);
    });
    let tab = move |p: Page, text: &'static str, id: &'static str| {
        view! {
            <button id=id class="tab" class:active=move || page.get() == p
                on:click=move |_| page.set(p)>{text}</button>
        }
    };
    view! {
        <header>
            <h1>"cleanse"</h1>
            <p class="lede">"Backdoor attacks on image classifiers, and their removal by distillation on unlabeled data (Pang et al., CVPR 2023), running in your browser on the same Rust code as the command line."</p>
            <nav>{tab(Page::Demo, "Demo", "tab-demo")}{tab(Page::Viewer, "Report viewer", "tab-viewer")}</nav>
            <p class="backend">"Compute: " <span id="backend">{move || backend.get()}</span></p>
        </header>
        <main>
            <div style:display=move || if page.get() == Page::Demo { "block" } else { "none" }>
                {move || ready.get().then(|| view! { <demo::Demo/> })}
            </div>
            <div style:display=move || if page.get() == Page::Viewer { "block" } else { "none" }>
                <viewer::Viewer/>
            </div>
        </main>
    }
}

// The app is built without Burn's kernel autotuning (its `burn` has no `autotune` feature, see the
// workspace Cargo.toml): in a browser a kernel that WebGPU rejects (CubeCL's matmul candidates
// that use subgroups, a feature wgpu does not request on WebGPU) fails asynchronously, so the tuner
// timed its dropped dispatches, found it fastest and trained on garbage. Each operation now runs
// its one default kernel, which also compiles far fewer kernels before the first batch.

/// Forwards `log` records at warning level and above to the browser console: CubeCL logs there
/// why the browser rejected a kernel, which wasm cannot wait for and so does not return.
struct ConsoleLog;

impl log::Log for ConsoleLog {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format!("[{}] {}", record.target(), record.args());
        if record.level() == log::Level::Error {
            web_sys::console::error_1(&text.into());
        } else {
            web_sys::console::warn_1(&text.into());
        }
    }
    fn flush(&self) {}
}

static CONSOLE_LOG: ConsoleLog = ConsoleLog;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    if log::set_logger(&CONSOLE_LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    leptos::mount::mount_to_body(App);
}
