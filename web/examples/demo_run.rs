//! Runs the browser demo's training and cleansing natively (CPU backend), to choose and check the
//! demo's settings without a browser:
//!
//!   cargo build --release --workspace --example demo_run && target/release/examples/demo_run [KEY=VALUE...]
//!
//! (`--workspace` builds it with the workspace's features, so the native build is reused.)
//!
//! Keys (defaults: the demo's): attack (badnets|blended|sig|lc|wanet|iab|clean) [badnets],
//! dataset (cifar10|gtsrb) [cifar10], train (training file) [web/dist/samples/DATASET-train.bin],
//! test [web/dist/samples/DATASET-test.bin], unlabeled (images held out of `train` for the
//! cleanser) [500], epochs [20], width [8], poison_rate [demo's], seed [0], cleanse_epochs [20],
//! ratio_scale [2], cleanse_lr [0.01], cleanses (SCALExEPOCHS,... : one model cleansed several
//! ways) [ratio_scale x cleanse_epochs]. An unknown key or a malformed value is an error.
//! Prints one line per epoch and a final before/after line.

use burn::prelude::Device;
use cleanse_core::attack::AttackKind;
use cleanse_core::data::DatasetKind;
use cleanse_web::engine::{self, CleansePlan, DemoData, Host, Progress, TrainPlan};
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::str::FromStr;
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
    const KEYS: [&str; 13] = [
        "attack",
        "dataset",
        "train",
        "test",
        "unlabeled",
        "epochs",
        "width",
        "poison_rate",
        "seed",
        "cleanse_epochs",
        "ratio_scale",
        "cleanse_lr",
        "cleanses",
    ];
    if let Some(k) = args.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{k}`; expected one of {}",
            KEYS.join(", ")
        ));
    }
    let get = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_string());
    // The value of `k` parsed as a T, or `default`.
    fn value<T: FromStr>(args: &HashMap<String, String>, k: &str, default: T) -> Result<T, String>
    where
        T::Err: Display,
    {
        args.get(k).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("{k}=`{v}`: {e}"))
        })
    }
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
        "cifar10" => DatasetKind::Cifar10,
        "gtsrb" => DatasetKind::Gtsrb,
        d => return Err(format!("dataset `{d}`: expected cifar10 or gtsrb")),
    };
    let train_path = get(
        "train",
        &format!("web/dist/samples/{}-train.bin", kind.name()),
    );
    let test_path = get(
        "test",
        &format!("web/dist/samples/{}-test.bin", kind.name()),
    );
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let (train_bytes, test_bytes) = (read(&train_path)?, read(&test_path)?);
    let data = DemoData::from_records(
        kind,
        (&train_path, &train_bytes),
        (&test_path, &test_bytes),
        value(&args, "unlabeled", 500)?,
    )?;
    let mut plan = TrainPlan::demo(attack);
    plan.epochs = value(&args, "epochs", plan.epochs)?;
    plan.width = value(&args, "width", plan.width)?;
    plan.seed = value(&args, "seed", plan.seed)?;
    if args.contains_key("poison_rate") {
        plan.poison_rate = Some(value(&args, "poison_rate", 0.0)?);
    }
    let mut cplan = CleansePlan::demo();
    cplan.epochs = value(&args, "cleanse_epochs", cplan.epochs)?;
    cplan.ratio_scale = value(&args, "ratio_scale", cplan.ratio_scale)?;
    cplan.lr = value(&args, "cleanse_lr", cplan.lr)?;
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
