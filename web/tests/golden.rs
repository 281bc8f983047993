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
//! `native/tests/golden.rs`): `EXPECTED[0]` from the development machines until 2026-12-04 and
//! CI, `EXPECTED[1]` from one with AVX2 but no AVX-512, the same commit. A run must end with one
//! of them, whole.

use burn::module::{Module, ModuleVisitor, Param};
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
    struct Hash(u64);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            for v in p.val().into_data().iter::<f32>() {
                for b in v.to_bits().to_le_bytes() {
                    self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
    let mut h = Hash(0xcbf2_9ce4_8422_2325);
    m.model.visit(&mut h);
    h.0
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
        "clean 0.38333333333333336 None 1.3444992882864817 2f14def481cfa4b5",
        "badnets 0.2 Some(0.8888888888888888) 1.7963785716465541 7c629d680120fb40",
        "sig 0.4166666666666667 Some(0.037037037037037035) 1.646251596723284 986bccf45d536383",
        "lc 0.6833333333333333 Some(0.1111111111111111) 1.2574678455080306 699cbccd81272eec",
        "wanet 0.5 Some(0.3333333333333333) 1.4210296630859376 ef441e2b18c30cac",
        "iab 0.36666666666666664 Some(0.1111111111111111) 3.2898427963256838 2ede59721b36935f",
        "cleanse 0.2 Some(0.8888888888888888) 0.17902057121197382 c53901076b6fd4eb",
    ],
    &[
        "clean 0.4166666666666667 None 1.308371002333505 d473a70b92e028c5",
        "badnets 0.2 Some(0.8888888888888888) 1.7317410060337612 ef7e052b83ddce2e",
        "sig 0.4666666666666667 Some(0.07407407407407407) 1.78002553326743 6f2aa1cb3d921d76",
        "lc 0.6666666666666666 Some(0.0) 1.4794045891080583 d8147c39c3069c27",
        "wanet 0.43333333333333335 Some(0.12962962962962962) 1.3455380541937692 2e24167e07c2a859",
        "iab 0.35 Some(0.16666666666666666) 3.002778012411935 c4ac8a5065081108",
        "cleanse 0.2 Some(0.8888888888888888) 0.19292905827363332 e609865ec6eed193",
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
    let table = got.join("\n");
    eprintln!("golden values:\n{table}");
    let same = |t: &&[&str]| t.iter().copied().eq(got.iter().map(String::as_str));
    assert!(
        EXPECTED.iter().any(same),
        "golden values changed (none of the recorded tables); got:\n{table}"
    );
}
