//! Data readers on the bundled real data and on broken copies of it.

use cleanse_core::data::{DataSpec, DatasetKind, cifar10, gtsrb, split};
use cleanse_tests::shared_data;
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn cifar10_subset_matches_published_sanity_values() {
    let data = cifar10::load_dir(&shared_data().join("cifar10-subset")).expect("read");
    assert_eq!(data.train.len(), 4000);
    assert_eq!(data.test.len(), 1000);
    assert_eq!(
        data.train.class_counts(),
        vec![396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    );
    assert_eq!(
        data.test.class_counts(),
        vec![103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    );
    // From the subset's README (official CIFAR-10 values).
    assert_eq!(&data.train.labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(&data.test.labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert_eq!(
        &data.train.image(0)[..10],
        &[59, 43, 50, 68, 98, 119, 139, 145, 149, 149]
    );
    assert_eq!(&data.test.image(0)[..5], &[158, 159, 165, 166, 160]);
    assert_eq!(data.train.class_names[6], "frog");
}

#[test]
fn gtsrb_subset_reads_43_balanced_classes() {
    let data = gtsrb::load_dir(&shared_data().join("gtsrb32-subset"), 32).expect("read");
    assert_eq!(data.train.len(), 4300);
    assert_eq!(data.test.len(), 3000);
    assert_eq!(data.train.num_classes, 43);
    assert_eq!(data.train.class_counts(), vec![100; 43]);
    assert!(
        data.train.class_names[0].to_lowercase().contains("speed"),
        "{}",
        data.train.class_names[0]
    );
    // GTSRB forbids flips; CIFAR allows them.
    assert!(!DatasetKind::Gtsrb.allows_flip());
    assert!(DatasetKind::Cifar10.allows_flip());
}

#[test]
fn truncated_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    copy_dir(&shared_data().join("cifar10-subset"), dir.path());
    let victim = dir.path().join("data_batch_1_part2.bin");
    let bytes = std::fs::read(&victim).expect("read");
    std::fs::write(&victim, &bytes[..bytes.len() - 100]).expect("write");
    let err = cifar10::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("data_batch_1_part2.bin"), "{err}");
    assert!(err.contains("3,073"), "{err}");
}

#[test]
fn label_out_of_range_names_file_and_record() {
    let dir = tempfile::tempdir().expect("tmp");
    copy_dir(&shared_data().join("cifar10-subset"), dir.path());
    let victim = dir.path().join("test_batch_part0.bin");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[17 * 3073] = 12;
    std::fs::write(&victim, &bytes).expect("write");
    let err = cifar10::load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("test_batch_part0.bin")
            && err.contains("record 17")
            && err.contains("label 12"),
        "{err}"
    );
    // The same byte is a valid GTSRB label (43 classes): the bound follows the data set.
    let as_gtsrb = cleanse_core::data::records::parse(&victim, &bytes[..3073 * 20], 43)
        .expect("valid for 43 classes");
    assert_eq!(as_gtsrb.1[17], 12);
}

#[test]
fn missing_and_empty_paths_are_clear_errors() {
    let err = DataSpec::new(DatasetKind::Cifar10, Some("/no/such/cifar".into()))
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/cifar"), "{err}");
    let empty = tempfile::tempdir().expect("tmp");
    let err = cifar10::load_dir(empty.path()).unwrap_err().to_string();
    assert!(err.contains("test*.bin"), "{err}");
    let err = DataSpec::new(DatasetKind::Cifar10, None)
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("data"), "{err}");
}

#[test]
fn holdout_is_stratified_disjoint_and_seeded() {
    let data = cifar10::load_dir(&shared_data().join("cifar10-subset")).expect("read");
    let s = split::holdout(&data.train, 0.1, 0).expect("split");
    assert_eq!(s.held_out.len(), 400);
    assert_eq!(s.keep.len(), 3600);
    let held = data.train.subset(&s.held_out);
    for (c, n) in held.class_counts().iter().enumerate() {
        let expect = data.train.class_counts()[c] as f64 * 0.1;
        assert!(
            (*n as f64 - expect).abs() <= 1.0,
            "class {c}: {n} vs {expect}"
        );
    }
    let mut all: Vec<usize> = s.keep.iter().chain(&s.held_out).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..4000).collect::<Vec<_>>());
    assert_eq!(s, split::holdout(&data.train, 0.1, 0).expect("again"));
    assert_ne!(
        s.held_out,
        split::holdout(&data.train, 0.1, 1)
            .expect("seed 1")
            .held_out
    );
    assert!(split::holdout(&data.train, 1.5, 0).is_err());
}

#[test]
fn per_class_slice_takes_exactly_n_per_class() {
    let data = gtsrb::load_dir(&shared_data().join("gtsrb32-subset"), 32).expect("read");
    let s = split::per_class_slice(&data.train, 10, 3).expect("slice");
    assert_eq!(data.train.subset(&s.held_out).class_counts(), vec![10; 43]);
    assert_eq!(s.keep.len(), 4300 - 430);
    let err = split::per_class_slice(&data.train, 101, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fewer than the 101"), "{err}");
}

/// The ImageNet-10 split: N images of every class of the training set held out, the rest kept;
/// a class with fewer than N, or nothing left to train on, is an error naming the flag.
#[test]
fn per_class_holdout_holds_out_n_of_every_class() {
    let data = gtsrb::load_dir(&shared_data().join("gtsrb32-subset"), 32).expect("read");
    let s = split::per_class_holdout(&data.train, 7, 0).expect("holdout");
    assert_eq!(data.train.subset(&s.held_out).class_counts(), vec![7; 43]);
    assert_eq!(s.keep.len() + s.held_out.len(), data.train.len());
    assert_eq!(
        s,
        split::per_class_holdout(&data.train, 7, 0).expect("again")
    );
    assert_ne!(
        s.held_out,
        split::per_class_holdout(&data.train, 7, 1)
            .expect("seed 1")
            .held_out
    );
    let err = split::per_class_holdout(&data.train, 101, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holdout-per-class") && err.contains("fewer than the 101"),
        "{err}"
    );
    let err = split::per_class_holdout(&data.train, 100, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("leaves 0 training images"), "{err}");
}

/// The authors' GTSRB split: a fraction of every class of the test set, in proportion to class
/// size, a fixed choice per seed; the rest evaluates.
#[test]
fn fraction_per_class_takes_a_share_of_every_class() {
    let data = gtsrb::load_dir(&shared_data().join("gtsrb32-subset"), 32).expect("read");
    let test = &data.test;
    let s = split::fraction_per_class(test, 0.398, 0).expect("split");
    let counts = test.class_counts();
    let taken = test.subset(&s.held_out).class_counts();
    for (c, (&n, &t)) in counts.iter().zip(&taken).enumerate() {
        assert_eq!(t, (0.398 * n as f64).round() as usize, "class {c} of {n}");
        assert!(t < n, "class {c} keeps an evaluation image");
    }
    assert_eq!(s.keep.len() + s.held_out.len(), test.len());
    assert!(s.keep.iter().all(|i| s.held_out.binary_search(i).is_err()));
    // One fixed choice per seed; another seed draws other images of the same counts.
    assert_eq!(s, split::fraction_per_class(test, 0.398, 0).expect("again"));
    let other = split::fraction_per_class(test, 0.398, 1).expect("seed 1");
    assert_ne!(other.held_out, s.held_out);
    assert_eq!(test.subset(&other.held_out).class_counts(), taken);
    for bad in [0.0, 1.0, -0.2, 1.5, f64::NAN] {
        let e = split::fraction_per_class(test, bad, 0)
            .expect_err("out of range")
            .to_string();
        assert!(e.contains("strictly between 0 and 1"), "{bad}: {e}");
    }
    // A fraction that takes a whole class leaves it nothing to evaluate on.
    let e = split::fraction_per_class(test, 0.999, 0)
        .expect_err("a whole class")
        .to_string();
    assert!(e.contains("leaves none to evaluate"), "{e}");
}
