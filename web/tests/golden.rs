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
//! the stride-2 3x3 convolutions' forward pass and weight gradient did
//! (`direct::forward_strided`, `direct::weight_grad_strided`). The second table, of a CPU with
//! AVX2 and FMA but no AVX-512, recorded when the AVX2 form of those ops came. The third, of a
//! CPU with AVX-512 on which the first does not hold (as in `native/tests/golden.rs`).

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

const EXPECTED: &[&[&str]] = &[
    &[
        "clean 0.45 None 1.3202671595982143 31c2f7d0f7d9d389",
        "badnets 0.3 Some(0.7777777777777778) 1.6831743512834823 b73f916b8a44ceb4",
        "sig 0.35 Some(0.2222222222222222) 1.7285389593669347 bdf9b146485239ee",
        "lc 0.35 Some(0.0) 1.3762803384235927 b0d1a932db978e1c",
        "wanet 0.4166666666666667 Some(0.3333333333333333) 1.4332500185285295 827a6bbaf2a7b980",
        "iab 0.6333333333333333 Some(0.2222222222222222) 3.1259419100625174 681b0274e9f6cdac",
        "cleanse 0.1 Some(1.0) 0.2028813987970352 da977c83f272db93",
    ],
    // A CPU with AVX2 and FMA but no AVX-512 (AMD EPYC, family 25 model 1), recorded 2026-12-07.
    &[
        "clean 0.55 None 1.3040978942598616 c27ea2d523f01aa7",
        "badnets 0.2 Some(0.7777777777777778) 1.816393276623317 e2e38d299150e8dc",
        "sig 0.48333333333333334 Some(0.018518518518518517) 1.7554787056786674 ba792f6fee18e739",
        "lc 0.4166666666666667 Some(0.2037037037037037) 1.5411295754568917 bd1b0e2ea31b33b4",
        "wanet 0.6166666666666667 Some(0.2037037037037037) 1.2914024455206734 df02ff517f183552",
        "iab 0.4 Some(0.1111111111111111) 2.719179732458932 06d95ac01fab24f2",
        "cleanse 0.2 Some(0.8888888888888888) 0.15130168944597244 50acf8ef5a9c4572",
    ],
    // A CPU with AVX-512 and its FP16 and BF16 extensions (Intel Xeon, family 6 model 207),
    // recorded 2026-12-07: the code of commit 7265c2b, which CI checks against the first table,
    // gives this one there, as does the cross-entropy of the commit after it.
    &[
        "clean 0.5166666666666667 None 1.279793735912868 b4aa3a6d9b966eb3",
        "badnets 0.2 Some(0.8518518518518519) 1.7214003017970494 6215619c88522f94",
        "sig 0.45 Some(0.018518518518518517) 1.7880926404680524 378505cd779a63aa",
        "lc 0.48333333333333334 Some(0.09259259259259259) 1.4867681230817522 f5f409e7e084ec00",
        "wanet 0.4666666666666667 Some(0.3333333333333333) 1.4252986873899187 397961a8146976c5",
        "iab 0.36666666666666664 Some(0.1111111111111111) 2.8709068979535783 58e5321cdb63456a",
        "cleanse 0.1 Some(1.0) 0.20026361122727393 f2499e0238c5b38d",
    ],
];

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
