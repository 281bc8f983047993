//! CIFAR-10 in its official binary layout (`cifar-10-batches-bin`), or any directory of
//! `*.bin` files of 3,073-byte records (such as the bundled subset).

use super::{TrainTest, records};
use crate::{Error, Result};
use std::path::Path;

/// The ten CIFAR-10 class names, label order.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Reads training and test sets from `dir`. Class names come from `batches.meta.txt` when it is
/// there, else the standard names.
pub fn load_dir(dir: &Path) -> Result<TrainTest> {
    if !dir.is_dir() {
        return Err(Error::NoData {
            path: dir.into(),
            reason: "not a directory; expected the CIFAR-10 binary batches (data_batch_*.bin, test_batch.bin)".into(),
        });
    }
    let (train_files, test_files) = records::split_bin_files(dir)?;
    let names = class_names(dir);
    Ok(TrainTest {
        train: records::read_files(&train_files, 10, &names)?,
        test: records::read_files(&test_files, 10, &names)?,
        defender: None,
    })
}

fn class_names(dir: &Path) -> Vec<String> {
    let from_meta = std::fs::read_to_string(dir.join("batches.meta.txt"))
        .ok()
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|v| v.len() == 10);
    from_meta.unwrap_or_else(|| CLASS_NAMES.iter().map(|s| s.to_string()).collect())
}
