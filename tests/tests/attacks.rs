//! The six attacks on tiny data: what each trigger changes, poison counts and label rules, ASR
//! bookkeeping, and saved attacks that reload and stamp identically.

use burn::prelude::*;
use cleanse_core::attack::poison::{AttackHooks, asr_set, choose_poisoned};
use cleanse_core::attack::trigger::to_u8;
use cleanse_core::attack::warp;
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Stamping, Trigger};
use cleanse_core::data::batcher::HostBatch;
use cleanse_core::data::synthetic::{SyntheticConfig, generate};
use cleanse_core::data::{DatasetKind, ImageSet};
use cleanse_core::rng::Rng;
use cleanse_core::train::run::TrainHooks;

fn dev() -> Device {
    Device::flex()
}

fn tiny(train: usize) -> ImageSet {
    generate(&SyntheticConfig {
        train_size: train,
        test_size: 10,
        ..Default::default()
    })
    .train
}

/// Random images in (0.1, 0.9) so no trigger value coincides with a pixel by accident.
fn random_images(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * c * h * w)
        .map(|_| 0.1 + 0.8 * rng.next_f32())
        .collect()
}

fn tensor(v: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, shape), &dev())
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

/// Positions `(channel, row, col)` where two planar images differ.
fn changed(a: &[f32], b: &[f32], c: usize, h: usize, w: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for ch in 0..c {
        for r in 0..h {
            for col in 0..w {
                let i = (ch * h + r) * w + col;
                if (a[i] - b[i]).abs() > 1e-6 {
                    out.push((ch, r, col));
                }
            }
        }
    }
    out
}

fn config(kind: AttackKind) -> AttackConfig {
    AttackConfig::supplement(kind, DatasetKind::Cifar10)
}

#[test]
fn badnets_changes_exactly_the_lower_right_3x3_with_the_pattern() {
    let x = random_images(2, 3, 32, 32, 1);
    let t = Trigger::badnets(3, 32, 32);
    let y = values(t.apply(tensor(x.clone(), [2, 3, 32, 32])));
    let per = 3 * 32 * 32;
    for k in 0..2 {
        let diff = changed(
            &x[k * per..(k + 1) * per],
            &y[k * per..(k + 1) * per],
            3,
            32,
            32,
        );
        assert_eq!(diff.len(), 27, "3 channels x 3x3");
        assert!(
            diff.iter()
                .all(|&(_, r, c)| (29..32).contains(&r) && (29..32).contains(&c))
        );
        for ch in 0..3 {
            let patch: Vec<f32> = (29..32)
                .flat_map(|r| (29..32).map(move |c| (r, c)))
                .map(|(r, c)| y[k * per + (ch * 32 + r) * 32 + c])
                .collect();
            assert_eq!(patch, vec![0., 0., 1., 0., 1., 0., 1., 0., 1.]);
        }
    }
}

/// At 224 pixels BadNets' patch is the authors' ImageNet-10 one: a 15x15 checkerboard at rows
/// 98-112, columns 194-208, white where row + column is odd; below 64 pixels the 3x3 corner.
#[test]
fn badnets_at_224_is_the_authors_15x15_patch() {
    let x = random_images(1, 3, 224, 224, 3);
    let y = values(Trigger::badnets(3, 224, 224).apply(tensor(x.clone(), [1, 3, 224, 224])));
    let diff = changed(&x, &y, 3, 224, 224);
    assert_eq!(diff.len(), 3 * 15 * 15);
    assert!(
        diff.iter()
            .all(|&(_, r, c)| (98..113).contains(&r) && (194..209).contains(&c))
    );
    for (ch, r, c) in diff {
        let want = if (r + c) % 2 == 1 { 1.0 } else { 0.0 };
        assert_eq!(y[(ch * 224 + r) * 224 + c], want, "({ch}, {r}, {c})");
    }
    // Other large sides scale the patch: 448 pixels, a 30x30 patch 30 pixels from the right.
    let Trigger::Patch { mask, .. } = Trigger::badnets(1, 448, 448) else {
        panic!("a patch")
    };
    let cells: Vec<usize> = (0..448 * 448).filter(|&i| mask[i] == 1).collect();
    assert_eq!(cells.len(), 30 * 30);
    assert_eq!(cells[0], 196 * 448 + 388);
    let Trigger::Patch { mask, .. } = Trigger::badnets(3, 63, 63) else {
        panic!("a patch")
    };
    assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 9);
}

#[test]
fn lc_stamps_the_same_pattern_at_all_four_corners_only() {
    let x = random_images(1, 3, 32, 32, 2);
    let y = values(Trigger::four_corners(3, 32, 32).apply(tensor(x.clone(), [1, 3, 32, 32])));
    let diff = changed(&x, &y, 3, 32, 32);
    assert_eq!(diff.len(), 4 * 27);
    let corner = |r: usize, c: usize| !(3..29).contains(&r) && !(3..29).contains(&c);
    assert!(diff.iter().all(|&(_, r, c)| corner(r, c)));
    // Copied, not mirrored: the top-left patch equals the bottom-right one.
    for dr in 0..3 {
        for dc in 0..3 {
            assert_eq!(y[dr * 32 + dc], y[(29 + dr) * 32 + 29 + dc]);
            assert_eq!(y[dr * 32 + 29 + dc], y[(29 + dr) * 32 + dc]);
        }
    }
}

#[test]
fn blended_mixes_the_seeded_pattern_at_alpha() {
    let x = random_images(1, 3, 8, 8, 3);
    let t = Trigger::blended(3, 8, 8, 0.2, 7);
    assert_eq!(t, Trigger::blended(3, 8, 8, 0.2, 7), "seeded");
    assert_ne!(t, Trigger::blended(3, 8, 8, 0.2, 8));
    let Trigger::Blend { pattern, .. } = &t else {
        panic!("blend")
    };
    let y = values(t.apply(tensor(x.clone(), [1, 3, 8, 8])));
    for i in 0..x.len() {
        let want = 0.8 * x[i] + 0.2 * pattern[i] as f32 / 255.0;
        assert!((y[i] - want).abs() < 1e-6);
    }
    let distinct: std::collections::HashSet<u8> = pattern.iter().copied().collect();
    assert!(distinct.len() > 100, "pattern spans [0,256)");
}

#[test]
fn sig_adds_a_column_only_sinusoid_and_clips() {
    let (h, w) = (8, 32);
    let x = vec![0.5f32; 3 * h * w];
    let t = Trigger::signal(3, h, w, 20.0 / 255.0, 6.0);
    let y = values(t.apply(tensor(x.clone(), [1, 3, h, w])));
    for j in 0..w {
        let want =
            0.5 + 20.0 / 255.0 * (2.0 * std::f32::consts::PI * j as f32 * 6.0 / w as f32).sin();
        for ch in 0..3 {
            for r in 0..h {
                assert!(
                    (y[(ch * h + r) * w + j] - want).abs() < 1e-6,
                    "depends on the column only"
                );
            }
        }
    }
    let ones = values(t.apply(tensor(vec![1.0; 3 * h * w], [1, 3, h, w])));
    assert!(ones.iter().all(|&v| v <= 1.0));
    assert!(ones.iter().any(|&v| v < 1.0));
}

#[test]
fn wanet_is_the_identity_at_strength_zero_and_warps_otherwise() {
    let ins = warp::wanet_control_points(4, 0);
    let mean_abs: f32 = ins.iter().map(|v| v.abs()).sum::<f32>() / ins.len() as f32;
    assert!((mean_abs - 1.0).abs() < 1e-5);
    let x = random_images(2, 3, 16, 16, 4);
    let id =
        values(Trigger::warp(3, 16, 16, &ins, 4, 0.0).apply(tensor(x.clone(), [2, 3, 16, 16])));
    for (a, b) in x.iter().zip(&id) {
        assert!((a - b).abs() < 1e-5);
    }
    let warped =
        values(Trigger::warp(3, 16, 16, &ins, 4, 0.5).apply(tensor(x.clone(), [2, 3, 16, 16])));
    let max = max_abs_diff(&x, &warped);
    assert!(max > 0.01, "a real warp moves pixels: {max}");
}

#[test]
fn bicubic_upsampling_keeps_corners_and_constants() {
    let plane: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
    let up = warp::bicubic_upsample(&plane, 4, 32, 32);
    // align_corners: the corner samples land exactly on the control points.
    assert!((up[0] - plane[0]).abs() < 1e-6);
    assert!((up[31] - plane[3]).abs() < 1e-6);
    assert!((up[31 * 32] - plane[12]).abs() < 1e-6);
    assert!((up[32 * 32 - 1] - plane[15]).abs() < 1e-6);
    let flat = warp::bicubic_upsample(&[0.25; 16], 4, 9, 7);
    assert!(flat.iter().all(|v| (v - 0.25).abs() < 1e-6));
    // A linear ramp is reproduced exactly away from the clamped border.
    let ramp: Vec<f32> = (0..64).map(|i| (i % 8) as f32).collect();
    let up = warp::bicubic_upsample(&ramp, 8, 15, 15);
    for j in 4..11 {
        assert!(
            (up[7 * 15 + j] - j as f32 * 0.5).abs() < 1e-5,
            "{j}: {}",
            up[7 * 15 + j]
        );
    }
}

#[test]
fn grid_sample_tensor_matches_the_host_reference_with_zero_padding() {
    let (n, c, h, w) = (2, 3, 7, 9);
    let x = random_images(n, c, h, w, 5);
    let mut rng = Rng::new(9);
    // Coordinates beyond [-1, 1] exercise the zero padding.
    let grid: Vec<f32> = (0..n * h * w * 2)
        .map(|_| rng.next_f32() * 2.6 - 1.3)
        .collect();
    let got = values(warp::grid_sample_tensor(
        tensor(x.clone(), [n, c, h, w]),
        tensor(grid.clone(), [n, h, w, 2]),
    ));
    let per = c * h * w;
    for k in 0..n {
        let want = warp::grid_sample_host(
            &x[k * per..(k + 1) * per],
            c,
            h,
            w,
            &grid[k * h * w * 2..(k + 1) * h * w * 2],
            h,
            w,
        );
        for (a, b) in got[k * per..(k + 1) * per].iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}

#[test]
fn augment_grid_without_augmentation_is_the_identity_and_flip_mirrors() {
    let mut rng = Rng::new(1);
    let none = warp::WanetAugment {
        pad: 0,
        p_crop: 0.8,
        degrees: 0.0,
        p_rotation: 0.5,
        flip: false,
    };
    let g = warp::augment_grid(8, 8, &none, &mut rng);
    let id = warp::identity_grid(8, 8);
    for (a, b) in g.iter().zip(&id) {
        assert!((a - b).abs() < 1e-6);
    }
    // With flips on, some of many draws mirror x and keep y.
    let flipped = (0..16).any(|_| {
        let g = warp::augment_grid(8, 8, &warp::WanetAugment { flip: true, ..none }, &mut rng);
        (g[0] - 1.0).abs() < 1e-6 && (g[1] + 1.0).abs() < 1e-6
    });
    assert!(flipped);
}

#[test]
fn dirty_label_poisoning_picks_the_rate_among_non_target_images() {
    let set = tiny(200);
    let attack = Attack::new(config(AttackKind::Badnets), &set).expect("attack");
    let p = choose_poisoned(&attack, &set).expect("poison");
    assert_eq!(p.len(), 20);
    assert!(p.iter().all(|&i| set.labels[i] != 0));
    assert_eq!(p, choose_poisoned(&attack, &set).expect("again"), "seeded");
    let mut c = config(AttackKind::Badnets);
    c.all_to_all = true;
    c.poison_rate = 0.5;
    let a2a = Attack::new(c, &set).expect("attack");
    let p = choose_poisoned(&a2a, &set).expect("poison");
    assert_eq!(p.len(), 100);
    assert!(
        p.iter().any(|&i| set.labels[i] == 0),
        "all-to-all poisons every class"
    );
}

#[test]
fn clean_label_attacks_poison_only_the_target_class_and_keep_labels() {
    let set = tiny(200);
    for kind in [AttackKind::Sig, AttackKind::Lc] {
        let mut c = config(kind);
        c.target = 3;
        c.lc_steps = 5;
        let clean = (kind == AttackKind::Lc).then(|| {
            cleanse_core::model::ModelConfig {
                architecture: cleanse_core::model::Architecture::Resnet18,
                width: 4,
                num_classes: 10,
                normalization: cleanse_core::model::Normalization::cifar10(),
            }
            .init_seeded(&dev(), 1)
        });
        let mut hooks =
            AttackHooks::new(Attack::new(c, &set).expect("attack"), clean, true).expect("hooks");
        let tmp = tempfile::tempdir().expect("tmp");
        let idx: Vec<usize> = (0..set.len()).collect();
        let poisoned = hooks
            .prepare(set.clone(), &idx, &tiny(20), tmp.path(), &dev())
            .expect("prepare");
        assert_eq!(poisoned.labels, set.labels, "labels never change");
        let targets = set.labels.iter().filter(|&&l| l == 3).count();
        assert_eq!(
            hooks.attack.poisoned.len(),
            (0.8 * targets as f64).round() as usize
        );
        let n = set.image_len();
        for i in 0..set.len() {
            let differs = poisoned.image(i) != set.image(i);
            let is_poisoned = hooks.attack.poisoned.contains(&i);
            assert_eq!(differs, is_poisoned, "image {i}");
            if is_poisoned {
                assert_eq!(set.labels[i], 3);
            }
            let _ = n;
        }
    }
}

#[test]
fn before_augment_poisoning_stamps_and_relabels_the_chosen_images_only() {
    let set = tiny(100);
    let mut c = config(AttackKind::Badnets);
    c.target = 2;
    let mut hooks =
        AttackHooks::new(Attack::new(c, &set).expect("attack"), None, true).expect("hooks");
    let tmp = tempfile::tempdir().expect("tmp");
    // The attacker's part is images 50..100 of the data set.
    let keep: Vec<usize> = (50..100).collect();
    let part = set.subset(&keep);
    let out = hooks
        .prepare(part.clone(), &keep, &tiny(20), tmp.path(), &dev())
        .expect("prepare");
    assert_eq!(hooks.attack.poisoned.len(), 5);
    assert!(
        hooks.attack.poisoned.iter().all(|i| (50..100).contains(i)),
        "data-set indices"
    );
    let trigger = Trigger::badnets(3, 32, 32);
    for (local, original) in keep.iter().enumerate() {
        let hit = hooks.attack.poisoned.contains(original);
        assert_eq!(out.labels[local], if hit { 2 } else { part.labels[local] });
        let want = if hit {
            trigger.apply_u8(part.image(local), &dev())
        } else {
            part.image(local).to_vec()
        };
        assert_eq!(out.image(local), &want[..]);
    }
    // The saved attack names the same images.
    let saved = Attack::load(tmp.path()).expect("load");
    assert_eq!(saved.poisoned, hooks.attack.poisoned);
}

#[test]
fn after_augment_poisoning_stamps_inside_the_batch() {
    let set = tiny(100);
    let mut c = config(AttackKind::Blended);
    c.stamping = Stamping::AfterAugment;
    c.target = 1;
    let mut hooks =
        AttackHooks::new(Attack::new(c, &set).expect("attack"), None, true).expect("hooks");
    let tmp = tempfile::tempdir().expect("tmp");
    let idx: Vec<usize> = (0..100).collect();
    let out = hooks
        .prepare(set.clone(), &idx, &tiny(20), tmp.path(), &dev())
        .expect("prepare");
    assert_eq!(out, set, "nothing stamped on the stored images");
    let rows: Vec<usize> = (0..100).collect();
    let images = random_images(100, 3, 32, 32, 6);
    let batch = HostBatch {
        images: images.clone(),
        labels: set.labels.iter().map(|&l| l as i64).collect(),
        indices: rows,
        shape: [100, 3, 32, 32],
    };
    let x = tensor(images.clone(), [100, 3, 32, 32]);
    let y = Tensor::<1, Int>::from_data(TensorData::new(batch.labels.clone(), [100]), &dev());
    let (x2, y2, extra) = hooks.batch(x, y, &batch, 0, 0, 0);
    assert!(extra.is_none());
    let x2 = values(x2);
    let y2: Vec<i64> = y2.into_data().try_to_vec_as::<i64>().expect("i64");
    let stamped = values(
        hooks
            .attack
            .trigger
            .as_ref()
            .expect("trigger")
            .apply(tensor(images.clone(), [100, 3, 32, 32])),
    );
    let per = 3 * 32 * 32;
    for i in 0..100 {
        let hit = hooks.attack.poisoned.contains(&i);
        let src = if hit { &stamped } else { &images };
        for k in 0..per {
            assert!((x2[i * per + k] - src[i * per + k]).abs() < 1e-6);
        }
        assert_eq!(y2[i], if hit { 1 } else { batch.labels[i] });
    }
}

#[test]
fn wanet_batches_relabel_the_backdoor_fraction_and_keep_noise_labels() {
    let set = tiny(50);
    let c = config(AttackKind::Wanet);
    let mut hooks =
        AttackHooks::new(Attack::new(c, &set).expect("attack"), None, true).expect("hooks");
    let tmp = tempfile::tempdir().expect("tmp");
    let idx: Vec<usize> = (0..50).collect();
    hooks
        .prepare(set.clone(), &idx, &tiny(20), tmp.path(), &dev())
        .expect("prepare");
    let labels: Vec<i64> = (0..40).map(|i| 1 + (i % 9) as i64).collect();
    let batch = HostBatch {
        images: random_images(40, 3, 32, 32, 7),
        labels: labels.clone(),
        indices: (0..40).collect(),
        shape: [40, 3, 32, 32],
    };
    let x = tensor(batch.images.clone(), [40, 3, 32, 32]);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [40]), &dev());
    let (x2, y2, extra) = hooks.batch(x, y, &batch, 0, 0, 0);
    assert!(extra.is_none());
    let y2: Vec<i64> = y2.into_data().try_to_vec_as::<i64>().expect("i64");
    // 10% backdoor (4 images) to the target; the rest keep their labels.
    assert_eq!(&y2[..4], &[0, 0, 0, 0]);
    assert_eq!(&y2[4..], &labels[4..]);
    assert_eq!(x2.dims(), [40, 3, 32, 32]);
    let v = values(x2);
    assert!(v.iter().all(|p| (-1e-6..=1.0 + 1e-6).contains(p)));
}

#[test]
fn asr_set_excludes_target_class_and_maps_all_to_all_labels() {
    let test = tiny(60);
    let mut c = config(AttackKind::Badnets);
    c.target = 4;
    let a = Attack::new(c.clone(), &test).expect("attack");
    let s = asr_set(&a, &test);
    assert_eq!(s.len(), test.labels.iter().filter(|&&l| l != 4).count());
    assert!(s.labels.iter().all(|&l| l == 4));
    c.all_to_all = true;
    let a = Attack::new(c, &test).expect("attack");
    let s = asr_set(&a, &test);
    assert_eq!(s.len(), test.len());
    for (got, orig) in s.labels.iter().zip(&test.labels) {
        assert_eq!(*got, (orig + 1) % 10);
    }
}

#[test]
fn saved_attacks_reload_and_stamp_identically() {
    let set = tiny(40);
    let x = random_images(3, 3, 32, 32, 8);
    for kind in [
        AttackKind::Badnets,
        AttackKind::Blended,
        AttackKind::Sig,
        AttackKind::Lc,
        AttackKind::Wanet,
    ] {
        let mut c = config(kind);
        c.seed = 11;
        let a = Attack::new(c, &set).expect("attack");
        let tmp = tempfile::tempdir().expect("tmp");
        a.save(tmp.path()).expect("save");
        let b = Attack::load(tmp.path()).expect("load");
        assert_eq!(a, b, "{kind:?}");
        let ta = a.trigger.as_ref().expect("trigger");
        let tb = b.trigger.as_ref().expect("trigger");
        let ya = to_u8(ta.apply(tensor(x.clone(), [3, 3, 32, 32])));
        let yb = to_u8(tb.apply(tensor(x.clone(), [3, 3, 32, 32])));
        assert_eq!(ya, yb, "{kind:?}");
    }
}

#[test]
fn bad_attack_settings_are_rejected_with_the_flag_named() {
    let set = tiny(40);
    let mut c = config(AttackKind::Badnets);
    c.target = 10;
    let e = Attack::new(c, &set)
        .expect_err("target out of range")
        .to_string();
    assert!(e.contains("target"), "{e}");
    let mut c = config(AttackKind::Sig);
    c.all_to_all = true;
    let e = Attack::new(c, &set)
        .expect_err("clean-label all-to-all")
        .to_string();
    assert!(e.contains("all-to-all"), "{e}");
    let mut c = config(AttackKind::Badnets);
    c.poison_rate = 1.5;
    let e = Attack::new(c, &set).expect_err("rate").to_string();
    assert!(e.contains("poison-rate"), "{e}");
    let mut c = config(AttackKind::Wanet);
    c.wanet_cross_ratio = -1.0;
    let e = Attack::new(c, &set).expect_err("cross ratio").to_string();
    assert!(e.contains("wanet-cross-ratio"), "{e}");
    let e = AttackHooks::new(
        Attack::new(config(AttackKind::Lc), &set).expect("attack"),
        None,
        true,
    )
    .err()
    .expect("LC needs a clean model")
    .to_string();
    assert!(e.contains("clean-model"), "{e}");
    // Only LC trains a clean model of its own.
    let own = cleanse_core::attack::poison::OwnCleanModel {
        config: cleanse_core::train::TrainConfig::supplement(cleanse_core::data::DataSpec::new(
            DatasetKind::Synthetic,
            None,
        )),
        selected: cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu)
            .expect("cpu"),
        observer: Box::new(cleanse_core::engine::SilentObserver),
    };
    let e = AttackHooks::with_own_clean_model(
        Attack::new(config(AttackKind::Badnets), &set).expect("attack"),
        own,
        true,
    )
    .err()
    .expect("BadNets has no clean model")
    .to_string();
    assert!(e.contains("clean-model") && e.contains("badnets"), "{e}");
}

#[test]
fn lc_pgd_stays_within_eps_on_the_8_bit_grid_and_raises_the_loss() {
    use cleanse_core::attack::lc::{Pgd, pgd_untargeted};
    use cleanse_core::model::{Architecture, ModelConfig, Normalization};
    let set = tiny(16);
    let model = ModelConfig {
        architecture: Architecture::Resnet18,
        width: 4,
        num_classes: 10,
        normalization: Normalization::cifar10(),
    }
    .init_seeded(&dev(), 3);
    let pgd = Pgd {
        eps: 8.0 / 255.0,
        step: 1.5 / 255.0,
        steps: 10,
        batch_size: 8,
    };
    let adv = pgd_untargeted(&model, &set, &pgd, &dev());
    assert_eq!(adv.len(), set.pixels.len());
    let max = adv
        .iter()
        .zip(&set.pixels)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .expect("pixels");
    assert!(max <= 8, "L-inf {max}/255 exceeds eps 8/255");
    assert!(max >= 7, "PGD moved pixels by at most {max}/255");
    let loss = |pixels: &[u8]| -> f32 {
        let x: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
        let x = tensor(x, [16, 3, 32, 32]);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(
                set.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [16],
            ),
            &dev(),
        );
        cleanse_core::model::loss::cross_entropy(model.forward(x), y).into_scalar::<f32>()
    };
    assert!(
        loss(&adv) > loss(&set.pixels),
        "untargeted PGD raises the loss"
    );
}

#[test]
fn an_attack_run_reports_asr_per_epoch_that_eval_reproduces() {
    use cleanse_core::data::augment::Augment;
    use cleanse_core::data::{DataSpec, DatasetKind};
    use cleanse_core::engine::SilentObserver;
    use cleanse_core::engine::run_files::load_run_model;
    use cleanse_core::optim::Schedule;
    use cleanse_core::train::TrainConfig;
    use cleanse_core::train::run::train_with;
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 120,
        test_size: 40,
        num_classes: 4,
        side: 16,
        seed: 2,
    };
    let mut tc = TrainConfig::supplement(data.clone());
    tc.width = 4;
    tc.epochs = 2;
    tc.batch_size = 16;
    tc.lr = 0.05;
    tc.schedule = Schedule::cosine(2);
    tc.augment = Augment::NONE;
    let loaded = data.load().expect("data");
    let mut c = config(AttackKind::Badnets);
    c.stamping = Stamping::AfterAugment;
    c.target = 1;
    let attack = Attack::new(c, &loaded.train).expect("attack");
    let mut hooks = AttackHooks::new(attack, None, false).expect("hooks");
    let tmp = tempfile::tempdir().expect("tmp");
    let selected =
        cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu).expect("cpu");
    let report = train_with(
        &tc,
        &mut hooks,
        tmp.path(),
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect("attack run");
    assert_eq!(report.kind, "attack");
    assert_eq!(
        report.attack.as_ref().expect("attack config")["kind"],
        "badnets"
    );
    assert!(
        report
            .epochs
            .iter()
            .all(|e| e.asr.is_some_and(|a| (0.0..=1.0).contains(&a)))
    );
    let final_asr = report
        .final_metrics
        .as_ref()
        .and_then(|f| f.asr)
        .expect("final asr");
    let model = load_run_model(tmp.path(), &dev()).expect("model").model;
    let saved = Attack::load(tmp.path()).expect("attack.json");
    assert_eq!(
        saved.poisoned.len(),
        11,
        "10% of the 108 attacker images, none of the target class"
    );
    let again = cleanse_core::attack::attack_success_rate(&model, &saved, &loaded.test, 64, &dev())
        .expect("asr");
    assert!((again - final_asr).abs() < 1e-9, "{again} vs {final_asr}");
}

#[test]
fn iab_networks_have_the_reference_shapes_and_ranges() {
    use cleanse_core::attack::iab::{Generator, IabNets, diversity_loss, rms_distance};
    let nets = IabNets::new(3, 4, 1, &dev());
    let x = tensor(random_images(2, 3, 16, 16, 9), [2, 3, 16, 16]);
    let p = nets.generator.valid().forward(x.clone());
    assert_eq!(p.dims(), [2, 3, 16, 16]);
    let m = IabNets::mask_of(&nets.mask.valid(), x.clone());
    assert_eq!(m.dims(), [2, 1, 16, 16]);
    for v in values(p).into_iter().chain(values(m)) {
        assert!((0.0..=1.0).contains(&v));
    }
    // The threshold is a steep step at 0.5.
    let t = values(Generator::threshold(tensor(
        vec![0.0, 0.45, 0.55, 1.0],
        [1, 1, 2, 2],
    )));
    assert!(t[0] < 1e-4 && t[1] < 0.5 && t[2] > 0.5 && t[3] > 0.9999);
    // Seeded: the same networks twice.
    let again = IabNets::new(3, 4, 1, &dev());
    let a = values(nets.valid().stamp(x.clone()));
    let b = values(again.valid().stamp(x.clone()));
    assert_eq!(a, b);
    // rms distance and the diversity loss against hand computation.
    let z = tensor(vec![0.0; 12], [1, 3, 2, 2]);
    let o = tensor(vec![0.5; 12], [1, 3, 2, 2]);
    let d: f32 = rms_distance(o.clone(), z.clone()).into_scalar();
    assert!((d - 0.5).abs() < 1e-6);
    let q = tensor(vec![0.25; 12], [1, 3, 2, 2]);
    let l: f32 = diversity_loss(o, z.clone(), q, z).into_scalar();
    assert!((l - 2.0).abs() < 1e-4, "{l}");
}

#[test]
fn an_iab_run_trains_the_generator_and_saves_networks_that_reload() {
    use cleanse_core::attack::iab::{IabHooks, IabNets};
    use cleanse_core::data::augment::Augment;
    use cleanse_core::data::{DataSpec, DatasetKind};
    use cleanse_core::engine::SilentObserver;
    use cleanse_core::engine::run_files::load_run_model;
    use cleanse_core::optim::Schedule;
    use cleanse_core::train::TrainConfig;
    use cleanse_core::train::run::train_with;
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 64,
        test_size: 16,
        num_classes: 4,
        side: 16,
        seed: 2,
    };
    let mut tc = TrainConfig::supplement(data.clone());
    tc.width = 4;
    tc.epochs = 2;
    tc.batch_size = 16;
    tc.lr = 0.05;
    tc.schedule = Schedule::cosine(2);
    tc.augment = Augment::NONE;
    let loaded = data.load().expect("data");
    let mut c = config(AttackKind::Iab);
    c.iab_width = 4;
    c.iab_mask_epochs = 1;
    let attack = Attack::new(c, &loaded.train).expect("attack");
    let mut hooks = IabHooks::new(attack, 16, Augment::NONE, 0);
    let before = IabNets::new(3, 4, 0, &dev());
    let tmp = tempfile::tempdir().expect("tmp");
    let selected =
        cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu).expect("cpu");
    let report = train_with(
        &tc,
        &mut hooks,
        tmp.path(),
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect("iab run");
    let final_asr = report.final_metrics.and_then(|f| f.asr).expect("asr");
    let saved = Attack::load(tmp.path()).expect("attack");
    let nets = IabNets::load(tmp.path(), 3, 4, &dev()).expect("networks");
    let x = tensor(random_images(4, 3, 16, 16, 10), [4, 3, 16, 16]);
    let trained = values(nets.generator.forward(x.clone()));
    let fresh = values(before.generator.valid().forward(x));
    assert!(
        trained
            .iter()
            .zip(&fresh)
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "the generator was trained"
    );
    let model = load_run_model(tmp.path(), &dev()).expect("model").model;
    let set = std::sync::Arc::new(asr_set(&saved, &loaded.test));
    let again = cleanse_core::engine::meter::triggered_accuracy(
        &model,
        &set,
        &|x| nets.stamp(x),
        64,
        &dev(),
    );
    assert!((again - final_asr).abs() < 1e-9, "{again} vs {final_asr}");
}

#[test]
fn poisoned_training_batches_carry_the_trigger_on_the_autodiff_device() {
    use cleanse_core::data::augment::Augment;
    use cleanse_core::data::batcher::make_batch;
    let set = tiny(100);
    let mut c = config(AttackKind::Badnets);
    c.stamping = Stamping::AfterAugment;
    c.poison_rate = 0.3;
    let mut hooks =
        AttackHooks::new(Attack::new(c, &set).expect("attack"), None, true).expect("hooks");
    let tmp = tempfile::tempdir().expect("tmp");
    let idx: Vec<usize> = (0..100).collect();
    hooks
        .prepare(set.clone(), &idx, &tiny(20), tmp.path(), &dev())
        .expect("prepare");
    let ad = dev().autodiff();
    let b = make_batch(&set, &idx, &Augment::standard(true), 3, 1);
    let x = cleanse_core::engine::eval::images_tensor(b.images.clone(), b.shape, &ad);
    let y = cleanse_core::engine::eval::labels_tensor(b.labels.clone(), &ad);
    let (x2, y2, _) = hooks.batch(x, y, &b, 3, 1, 0);
    let v = values(x2.inner());
    let labels: Vec<i64> = y2
        .inner()
        .into_data()
        .try_to_vec_as::<i64>()
        .expect("labels");
    let per = 3 * 32 * 32;
    let mut hits = 0;
    for i in 0..100 {
        let corner: Vec<f32> = (29..32)
            .flat_map(|r| (29..32).map(move |col| (r, col)))
            .map(|(r, col)| v[i * per + r * 32 + col])
            .collect();
        if hooks.attack.poisoned.contains(&i) {
            hits += 1;
            assert_eq!(
                corner,
                vec![0., 0., 1., 0., 1., 0., 1., 0., 1.],
                "image {i}"
            );
            assert_eq!(labels[i], 0);
        } else {
            assert_eq!(labels[i], set.labels[i] as i64);
        }
    }
    assert_eq!(hits, 30);
}

/// The largest absolute difference between two equally long value lists.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

/// A tiny IAB run for the resume tests: synthetic 16x16 data of 4 classes (48 training images),
/// width-4 networks, batch 16, crop + flip. Returns the training configuration, the loaded data
/// and the attack configuration.
fn tiny_iab_run(
    data_seed: u64,
    epochs: usize,
    mask_epochs: usize,
) -> (
    cleanse_core::train::TrainConfig,
    cleanse_core::data::TrainTest,
    AttackConfig,
) {
    use cleanse_core::data::augment::Augment;
    use cleanse_core::data::{DataSpec, DatasetKind};
    use cleanse_core::optim::Schedule;
    use cleanse_core::train::TrainConfig;
    let mut data = DataSpec::new(DatasetKind::Synthetic, None);
    data.synthetic = SyntheticConfig {
        train_size: 48,
        test_size: 16,
        num_classes: 4,
        side: 16,
        seed: data_seed,
    };
    let mut tc = TrainConfig::supplement(data.clone());
    tc.width = 4;
    tc.epochs = epochs;
    tc.batch_size = 16;
    tc.lr = 0.05;
    tc.schedule = Schedule::cosine(epochs);
    tc.augment = Augment::standard(true);
    let loaded = data.load().expect("data");
    let mut c = config(AttackKind::Iab);
    c.iab_width = 4;
    c.iab_mask_epochs = mask_epochs;
    c.poison_rate = 0.2;
    (tc, loaded, c)
}

/// An IAB run killed after its first epoch and resumed ends where an uninterrupted run does:
/// the mask network, the generator and its Adam state all come back from the checkpoint.
#[test]
fn a_resumed_iab_run_ends_where_an_uninterrupted_one_does() {
    use cleanse_core::attack::iab::IabHooks;
    use cleanse_core::data::augment::Augment;
    use cleanse_core::engine::Observer;
    use cleanse_core::engine::SilentObserver;
    use cleanse_core::train::run::train_with;
    let (tc, loaded, c) = tiny_iab_run(4, 3, 1);
    let hooks = || {
        IabHooks::new(
            Attack::new(c.clone(), &loaded.train).expect("attack"),
            16,
            Augment::standard(true),
            0,
        )
    };
    let selected =
        cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu).expect("cpu");
    let tmp = tempfile::tempdir().expect("tmp");
    let straight = tmp.path().join("straight");
    let full = train_with(
        &tc,
        &mut hooks(),
        &straight,
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect("straight");
    struct StopAfter;
    impl Observer for StopAfter {
        fn epoch(&mut self, r: &cleanse_core::report::EpochRecord) {
            if r.epoch == 1 {
                panic!("simulated kill after epoch 1");
            }
        }
    }
    let killed = tmp.path().join("killed");
    let (k, tc2, sel) = (killed.clone(), tc.clone(), selected.clone());
    let mut h = hooks();
    let crashed = std::thread::spawn(move || {
        let _ = train_with(&tc2, &mut h, &k, false, &sel, &mut StopAfter);
    })
    .join();
    assert!(crashed.is_err());
    assert!(
        !killed.join("iab_generator.bpk").exists(),
        "no final networks yet"
    );
    let resumed = train_with(
        &tc,
        &mut hooks(),
        &killed,
        true,
        &selected,
        &mut SilentObserver,
    )
    .expect("resume");
    let (a, b) = (&full.epochs[2], &resumed.epochs[2]);
    assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
    assert_eq!(a.asr, b.asr);
    assert_eq!(a.clean_acc, b.clean_acc);
    let x = tensor(random_images(4, 3, 16, 16, 12), [4, 3, 16, 16]);
    let ga = cleanse_core::attack::iab::IabNets::load(&straight, 3, 4, &dev()).expect("nets");
    let gb = cleanse_core::attack::iab::IabNets::load(&killed, 3, 4, &dev()).expect("nets");
    let (va, vb) = (values(ga.stamp(x.clone())), values(gb.stamp(x)));
    let worst = max_abs_diff(&va, &vb);
    assert!(worst < 1e-4, "resumed generator differs by {worst}");
}

/// An IAB run stopped during its mask pre-training resumes with `--resume`: the run's
/// `started.json` lets it resume before its first checkpoint, the mask pre-training continues
/// from its last saved epoch, and the networks end where an uninterrupted run's do.
#[test]
fn an_iab_run_stopped_during_mask_pretraining_resumes_there() {
    use cleanse_core::attack::iab::{IabHooks, IabNets, mask_checkpoint_epochs};
    use cleanse_core::data::augment::Augment;
    use cleanse_core::engine::SilentObserver;
    use cleanse_core::train::run::train_with;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (tc, loaded, c) = tiny_iab_run(5, 1, 3);
    let hooks = || {
        IabHooks::new(
            Attack::new(c.clone(), &loaded.train).expect("attack"),
            16,
            Augment::standard(true),
            0,
        )
    };
    let selected =
        cleanse_core::device::select(cleanse_core::device::DeviceChoice::Cpu).expect("cpu");
    let tmp = tempfile::tempdir().expect("tmp");
    let straight = tmp.path().join("straight");
    train_with(
        &tc,
        &mut hooks(),
        &straight,
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect("straight");

    let killed = tmp.path().join("killed");
    let (k, tc2, sel) = (killed.clone(), tc.clone(), selected.clone());
    let mut h = hooks();
    h.on_mask_epoch = Some(Box::new(|e, _, _| {
        if e == 1 {
            panic!("simulated kill after mask epoch 2");
        }
    }));
    let crashed = std::thread::spawn(move || {
        let _ = train_with(&tc2, &mut h, &k, false, &sel, &mut SilentObserver);
    })
    .join();
    assert!(crashed.is_err());
    let ckpt = killed.join("checkpoint");
    assert_eq!(mask_checkpoint_epochs(&ckpt, 3), Some(2));
    // Only the last mask epoch's files are kept.
    let mut files: Vec<String> = std::fs::read_dir(&ckpt)
        .expect("checkpoint dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iab-"))
        .collect();
    files.sort();
    assert_eq!(files, ["iab-mask-adam-e2.bin", "iab-mask-e2.bpk"]);
    assert!(ckpt.join("started.json").is_file());
    assert!(
        !ckpt.join("state.json").exists(),
        "stopped before any epoch"
    );
    assert!(!killed.join("iab_mask.bpk").exists(), "mask not finished");
    // A new run refuses the non-empty folder; --resume takes it up.
    let e = train_with(
        &tc,
        &mut hooks(),
        &killed,
        false,
        &selected,
        &mut SilentObserver,
    )
    .expect_err("not empty")
    .to_string();
    assert!(e.contains("--resume"), "{e}");
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let mut h = hooks();
    let s2 = seen.clone();
    h.on_mask_epoch = Some(Box::new(move |e, _, _| {
        s2.fetch_add(1, Ordering::SeqCst);
        assert!(e >= 2, "mask epoch {e} was run again");
    }));
    train_with(&tc, &mut h, &killed, true, &selected, &mut SilentObserver).expect("resume");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the third mask epoch ran"
    );
    assert_eq!(
        mask_checkpoint_epochs(&ckpt, 3),
        None,
        "mask checkpoints removed"
    );
    let x = tensor(random_images(4, 3, 16, 16, 13), [4, 3, 16, 16]);
    let a = IabNets::load(&straight, 3, 4, &dev()).expect("nets");
    let b = IabNets::load(&killed, 3, 4, &dev()).expect("nets");
    let (ma, mb) = (
        values(IabNets::mask_of(&a.mask, x.clone())),
        values(IabNets::mask_of(&b.mask, x.clone())),
    );
    let worst = max_abs_diff(&ma, &mb);
    assert!(worst < 1e-4, "resumed mask network differs by {worst}");
    let (va, vb) = (values(a.stamp(x.clone())), values(b.stamp(x)));
    let worst = max_abs_diff(&va, &vb);
    assert!(worst < 1e-4, "resumed run's trigger differs by {worst}");
}

/// IAB's generator upsamples with slices and sums (CubeCL has no backward for bilinear
/// `interpolate`): the result equals Burn's bilinear `interpolate` (PyTorch's `align_corners=False`)
/// on the CPU, including a 1-pixel input.
#[test]
fn iab_upsampling_matches_bilinear_interpolate() {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    use cleanse_core::attack::iab::upsample2x_bilinear;
    for shape in [[2, 3, 4, 5], [1, 2, 1, 1], [1, 1, 8, 2]] {
        let [_, _, h, w] = shape;
        let x = tensor(random_images(shape[0], shape[1], h, w, 7), shape);
        let ours = values(upsample2x_bilinear(x.clone()));
        let burn = values(interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([2 * h, 2 * w]),
        ));
        assert_eq!(ours.len(), burn.len());
        let worst = ours
            .iter()
            .zip(&burn)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "{shape:?}: max difference {worst}");
    }
}
