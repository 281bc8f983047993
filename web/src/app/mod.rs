//! The Leptos app (wasm32 only).

use leptos::prelude::*;
use wasm_bindgen::prelude::*;

#[component]
fn App() -> impl IntoView {
    let (status, set_status) = signal(String::from("starting"));
    leptos::task::spawn_local(async move {
        let device = match burn::prelude::Device::wgpu_options().init_async().await {
            Ok(d) => d,
            Err(_) => burn::prelude::Device::flex(),
        };
        let model = cleanse_core::model::ModelConfig {
            architecture: cleanse_core::model::Architecture::Resnet18,
            width: 4,
            num_classes: 10,
            normalization: cleanse_core::model::Normalization::cifar10(),
        }
        .init(&device);
        let x = burn::prelude::Tensor::<4>::zeros([1, 3, 32, 32], &device);
        let y = model.forward(x);
        set_status.set(format!("{:?}", y.dims()));
    });
    view! { <p id="status">{status}</p> }
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
