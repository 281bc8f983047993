//! Golden values of the browser demo's loops, run natively on the CPU backend: a clean model, a
//! backdoored model of each kind of attack (BadNets, SIG, LC on the clean model, WaNet, IAB) and
//! a cleanse must end with exactly the metrics and weights recorded here.
//!
//! How the expected values were produced: this test was run on the commit that introduced it
//! (before the demo's loops moved onto core's engine) and its printed table pasted into
//! `EXPECTED` (2 CPU threads). A change of any number is a change of behaviour. Regenerated when
//! batch norm on the CPU moved to the project's own kernel (`cleanse_core::cpu`: the same
//! formulas with sums in another order, which these tiny runs amplify; see
//! `native/tests/golden.rs`), and again when the convolution's forward and weight gradient did.
//!
//! One table per kind of machine arithmetic (most likely the CPU backend's vector width: see
//! `native/tests/golden.rs`). Recorded again when the 3x3 convolutions' forward and input
//! gradient moved to the direct convolution (`cleanse_core::cpu::direct`, natively;
//! the browser build keeps the column version): the table of a CPU with AVX-512 (the development
//! machines and CI); one with AVX2 but no AVX-512 prints its own, to be recorded on such a
//! machine. A run must end with one of them, whole. Recorded again when their weight gradient
//! (AVX-512, output channels in multiples of 16) moved to the direct convolution too, and when
//! the stride-2 3x3 convolutions' forward pass did (`direct::forward_strided`).

use burn::prelude::*;
use cleanse_core::attack::AttackKind;
use cleanse_core::data::synthetic::{SyntheticConfig, generate};
use cleanse_core::data::{DatasetKind, records};
use cleanse_web::engine::{self, CleansePlan, DemoData, DemoModel, Host, TrainPlan};
use futures_lite::future::block_on;
use std::future::Future;

struct Quiet;
impl Host for Quiet {
    fn now_ms(&self) -> f64 {
        0.0
    }
    fn stop_requested(&self) -> bool {
        false
    }
    fn pause(&self) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

fn checksum(m: &DemoModel) -> u64 {
    cleanse_core::model::fingerprint::weights_fingerprint(&m.model)
}

fn line(name: &str, m: &DemoModel) -> String {
    let last = m.last().expect("an epoch");
    format!(
        "{name} {:?} {:?} {:?} {:016x}",
        last.clean_acc,
        last.asr,
        last.loss,
        checksum(m)
    )
}

const EXPECTED: &[&[&str]] = &[&[
    "clean 0.5333333333333333 None 1.3421479667936052 257fdf13cd2a9a69",
    "badnets 0.16666666666666666 Some(0.6666666666666666) 1.7754390444074357 145470518f16acc4",
    "sig 0.3333333333333333 Some(0.0) 1.7319960696356638 662313efb0d0fabd",
    "lc 0.4666666666666667 Some(0.3888888888888889) 1.374823706490653 e2910d9497eb72b2",
    "wanet 0.4666666666666667 Some(0.3333333333333333) 1.4278802190508162 cc340ee85d04e199",
    "iab 0.45 Some(0.14814814814814814) 2.6122863837650843 a4914fc4b0eb4067",
    "cleanse 0.2 Some(0.6851851851851852) 0.2549316098292669 f3afa931850b25ad",
]];

#[test]
fn demo_loops_end_with_the_recorded_metrics_and_weights() {
    let s = generate(&SyntheticConfig {
        train_size: 200,
        test_size: 60,
        ..SyntheticConfig::default()
    });
    let (train, test) = (records::encode(&s.train), records::encode(&s.test));
    let data = DemoData::from_records(
        DatasetKind::Cifar10,
        ("train.bin", &train),
        ("test.bin", &test),
        60,
    )
    .expect("data");
    let device = Device::flex();
    let plan = |attack| TrainPlan {
        width: 4,
        epochs: 3,
        batch_size: 16,
        ..TrainPlan::demo(attack)
    };
    let run = |attack, clean: Option<&DemoModel>| {
        block_on(engine::train(
            &data,
            &plan(attack),
            clean.map(|m| &m.model),
            &device,
            &Quiet,
            &mut |_| {},
        ))
        .expect("train")
    };
    let mut got = Vec::new();
    let clean = run(None, None);
    got.push(line("clean", &clean));
    let mut badnets = None;
    for kind in [
        AttackKind::Badnets,
        AttackKind::Sig,
        AttackKind::Lc,
        AttackKind::Wanet,
        AttackKind::Iab,
    ] {
        let m = run(Some(kind), Some(&clean));
        got.push(line(kind.name(), &m));
        if kind == AttackKind::Badnets {
            badnets = Some(m);
        }
    }
    let cleansed = block_on(engine::cleanse(
        badnets.as_ref().expect("badnets"),
        &data,
        &CleansePlan {
            epochs: 3,
            batch_size: 16,
            ..CleansePlan::demo()
        },
        &device,
        &Quiet,
        &mut |_| {},
    ))
    .expect("cleanse");
    got.push(line("cleanse", &cleansed));
    cleanse_tests::assert_golden(EXPECTED, &got);
}
