//! The CIFAR-10 binary record format: 1 label byte + 1,024 R + 1,024 G + 1,024 B bytes.
//!
//! Shared by the CIFAR-10 reader and the 32x32 GTSRB record files.

use super::ImageSet;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Side of a record image.
pub const SIDE: usize = 32;
/// Bytes per record: label + 3 planes of 32x32.
pub const RECORD_LEN: usize = 1 + 3 * SIDE * SIDE;

/// Parses the records of one file; `num_classes` bounds the label byte.
pub fn parse(path: &Path, bytes: &[u8], num_classes: usize) -> Result<(Vec<u8>, Vec<u16>)> {
    if bytes.is_empty() {
        return Err(Error::BadFile {
            path: path.into(),
            reason: "file is empty; expected records of 3,073 bytes".into(),
        });
    }
    if !bytes.len().is_multiple_of(RECORD_LEN) {
        return Err(Error::BadFile {
            path: path.into(),
            reason: format!(
                "size {} is not a multiple of the 3,073-byte record (1 label + 3x32x32 pixels); \
                 {} whole records and {} bytes left over: truncated or not a CIFAR-style file",
                bytes.len(),
                bytes.len() / RECORD_LEN,
                bytes.len() % RECORD_LEN
            ),
        });
    }
    let n = bytes.len() / RECORD_LEN;
    let mut pixels = Vec::with_capacity(n * (RECORD_LEN - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD_LEN).enumerate() {
        let label = rec[0] as usize;
        if label >= num_classes {
            return Err(Error::BadRecord {
                path: path.into(),
                record: i,
                reason: format!("label {label} out of range 0..{}", num_classes - 1),
            });
        }
        labels.push(label as u16);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((pixels, labels))
}

/// Reads several record files into one set, in the order given.
pub fn read_files(
    files: &[PathBuf],
    num_classes: usize,
    class_names: &[String],
) -> Result<ImageSet> {
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: SIDE,
        width: SIDE,
        num_classes,
        class_names: class_names.to_vec(),
    };
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        let (p, l) = parse(f, &bytes, num_classes)?;
        set.pixels.extend(p);
        set.labels.extend(l);
    }
    Ok(set)
}

/// The `*.bin` files of a directory split into (train, test) by name: a file whose name starts
/// with `test` is test data, every other `.bin` file training data. Sorted by name.
pub fn split_bin_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut train = Vec::new();
    let mut test = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("bin") || !p.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_lowercase();
        if name.starts_with("test") {
            test.push(p);
        } else if name != "batches.meta.bin" {
            train.push(p);
        }
    }
    train.sort();
    test.sort();
    if train.is_empty() || test.is_empty() {
        return Err(Error::NoData {
            path: dir.into(),
            reason: format!(
                "expected training `*.bin` files (e.g. data_batch_1.bin) and test files named \
                 `test*.bin`; found {} training and {} test files",
                train.len(),
                test.len()
            ),
        });
    }
    Ok((train, test))
}

/// Writes images as records (used by tests and by tools that export subsets).
pub fn encode(set: &ImageSet) -> Vec<u8> {
    assert_eq!((set.channels, set.height, set.width), (3, SIDE, SIDE));
    let mut out = Vec::with_capacity(set.len() * RECORD_LEN);
    for i in 0..set.len() {
        out.push(set.labels[i] as u8);
        out.extend_from_slice(set.image(i));
    }
    out
}
