//! Runs the browser demo's training and cleansing natively (CPU backend), to choose and check the
//! demo's settings without a browser:
//!
//!   cargo build --release --workspace --example demo_run && target/release/examples/demo_run [KEY=VALUE...]
//!
//! (`--workspace` builds it with the workspace's features, so the native build is reused.)
//!
//! Keys (defaults: the demo's): attack (badnets|blended|sig|lc|wanet|iab|clean) [badnets],
//! train (training file) [web/dist/samples/cifar10-train.bin], test [web/dist/samples/cifar10-test.bin],
//! unlabeled (images held out of `train` for the cleanser) [500], epochs [20], cleanse_epochs [20],
//! ratio_scale [2], poison_rate [demo's], width [8], cleanse_lr [0.01], seed [0].
//! Prints one line per epoch and a final before/after line.

use burn::prelude::Device;
use cleanse_core::attack::AttackKind;
use cleanse_core::data::DatasetKind;
use cleanse_web::engine::{self, CleansePlan, DemoData, Host, Progress, TrainPlan};
use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

struct NativeHost(Instant);

impl Host for NativeHost {
    fn now_ms(&self) -> f64 {
        self.0.elapsed().as_secs_f64() * 1e3
    }
    fn stop_requested(&self) -> bool {
        false
    }
    fn pause(&self) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

fn main() -> Result<(), String> {
    let args: HashMap<String, String> = std::env::args()
        .skip(1)
        .map(|a| match a.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(format!("argument `{a}`: expected KEY=VALUE")),
        })
        .collect::<Result<_, _>>()?;
    let get = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_string());
    let num = |k: &str, d: &str| -> Result<f64, String> {
        get(k, d).parse::<f64>().map_err(|e| format!("{k}: {e}"))
    };
    let attack = match get("attack", "badnets").as_str() {
        "clean" => None,
        a => Some(
            *AttackKind::ALL
                .iter()
                .find(|k| k.name() == a)
                .ok_or(format!(
                    "attack `{a}`: expected one of badnets, blended, sig, lc, wanet, iab, clean"
                ))?,
        ),
    };
    let kind = match get("dataset", "cifar10").as_str() {
        "gtsrb" => DatasetKind::Gtsrb,
        _ => DatasetKind::Cifar10,
    };
    let train_path = get("train", "web/dist/samples/cifar10-train.bin");
    let test_path = get("test", "web/dist/samples/cifar10-test.bin");
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let (train_bytes, test_bytes) = (read(&train_path)?, read(&test_path)?);
    let data = DemoData::from_records(
        kind,
        (&train_path, &train_bytes),
        (&test_path, &test_bytes),
        num("unlabeled", "500")? as usize,
    )?;
    let mut plan = TrainPlan::demo(attack);
    plan.epochs = num("epochs", &plan.epochs.to_string())? as usize;
    plan.width = num("width", &plan.width.to_string())? as usize;
    plan.seed = num("seed", "0")? as u64;
    let mut cplan = CleansePlan::demo();
    cplan.epochs = num("cleanse_epochs", &cplan.epochs.to_string())? as usize;
    cplan.ratio_scale = num("ratio_scale", &cplan.ratio_scale.to_string())?;
    cplan.lr = num("cleanse_lr", &cplan.lr.to_string())?;
    plan.poison_rate = args
        .get("poison_rate")
        .map(|v| v.parse::<f64>())
        .transpose()
        .map_err(|e| format!("poison_rate: {e}"))?;
    let device = Device::flex();
    let host = NativeHost(Instant::now());
    println!(
        "data: {} train, {} unlabeled, {} test; {plan:?}; {cplan:?}",
        data.train.len(),
        data.unlabeled.len(),
        data.test.len()
    );
    let mut print = |p: Progress| {
        if let Progress::Epoch(e) = p {
            println!("{e:?}");
        }
    };
    let teacher = futures_lite::future::block_on(engine::train(
        &data, &plan, None, &device, &host, &mut print,
    ))?;
    let before = teacher.last().cloned();
    println!("before {before:?}\ntrain {:.1} s", host.now_ms() / 1e3);
    // `cleanses=SCALExEPOCHS,...` cleanses the same model several ways (default: one, as set
    // by ratio_scale and cleanse_epochs).
    let plans = match args.get("cleanses") {
        None => vec![cplan.clone()],
        Some(list) => list
            .split(',')
            .map(|c| {
                let (r, e) = c
                    .split_once('x')
                    .ok_or(format!("cleanses: `{c}`: expected SCALExEPOCHS, e.g. 2x20"))?;
                Ok(CleansePlan {
                    ratio_scale: r.parse().map_err(|e| format!("cleanses: `{c}`: {e}"))?,
                    epochs: e.parse().map_err(|e| format!("cleanses: `{c}`: {e}"))?,
                    ..cplan.clone()
                })
            })
            .collect::<Result<Vec<_>, String>>()?,
    };
    for p in plans {
        let t = host.now_ms();
        let student = futures_lite::future::block_on(engine::cleanse(
            &teacher, &data, &p, &device, &host, &mut print,
        ))?;
        println!(
            "after x{} {} epochs: {:?}\ncleanse {:.1} s",
            p.ratio_scale,
            p.epochs,
            student.last(),
            (host.now_ms() - t) / 1e3
        );
    }
    Ok(())
}
