//! Checkpoint files: PyTorch's (`torch.save`: the zip format, the legacy format, full-model
//! pickles), read with Burn's store, and safetensors, read and written.

use super::state_dict::{NamedTensor, StateDict, Values};
use crate::{Error, Result};
use burn::store::pytorch_reader::{DType, PytorchReader};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Where a checkpoint dict usually keeps its state dict, tried in order when no key is given:
/// BackdoorBench's `attack_result.pt` keeps it under `model`.
pub const DEFAULT_KEYS: [&str; 3] = ["model", "state_dict", "net"];

/// How to read a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The key of the state dict inside the checkpoint (dotted for nested dicts); `None` tries
    /// [`DEFAULT_KEYS`], then the whole file.
    pub key: Option<String>,
    /// Name prefixes to replace, `(from, to)`, the first matching one per tensor, after the key
    /// and DataParallel's `module.` are taken off.
    pub renames: Vec<(String, String)>,
}

/// Whether `bytes` begin like a safetensors file: an 8-byte little-endian header length that
/// fits the file, then a JSON object.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n);
    n >= 2 && n <= (bytes.len() - 8) as u64 && bytes[8] == b'{'
}

fn f32s(name: &str, dtype: DType, bytes: &[u8], path: &Path) -> Result<Values> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match dtype {
        DType::F32 => Values::F32(
            chunks(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::F64 => Values::F32(
            chunks(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_ne_bytes(b) as f32
                })
                .collect(),
        ),
        DType::F16 => Values::F32(
            chunks(2)
                .map(|c| half::f16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        DType::BF16 => Values::F32(
            chunks(2)
                .map(|c| half::bf16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        DType::I64 => Values::I64(
            chunks(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    i64::from_ne_bytes(b)
                })
                .collect(),
        ),
        DType::I32 => Values::I64(
            chunks(4)
                .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        other => {
            return Err(Error::artifact(
                path,
                format!("tensor `{name}` has element type {other:?}; expected a float tensor"),
            ));
        }
    })
}

fn read_pytorch(path: &Path) -> Result<StateDict> {
    let reader = PytorchReader::new(path).map_err(|e| {
        Error::artifact(
            path,
            format!("not a PyTorch checkpoint (torch.save) or safetensors file: {e}"),
        )
    })?;
    let mut dict = StateDict::new();
    for (name, t) in reader.into_tensors() {
        let bytes = t
            .read()
            .map_err(|e| Error::artifact(path, format!("cannot read tensor `{name}`: {e}")))?;
        let values = f32s(&name, t.dtype(), &bytes, path)?;
        dict.insert(
            name,
            NamedTensor {
                shape: t.shape().to_vec(),
                values,
            },
        );
    }
    Ok(dict)
}

fn read_safetensors(bytes: &[u8], path: &Path) -> Result<StateDict> {
    use safetensors::Dtype as S;
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::artifact(path, format!("not a valid safetensors file: {e}")))?;
    let mut dict = StateDict::new();
    for (name, view) in file.tensors() {
        // safetensors stores little-endian; the pytorch reader hands out native-endian bytes.
        let le = |b: &[u8]| -> Vec<u8> {
            if cfg!(target_endian = "little") {
                b.to_vec()
            } else {
                let size = match view.dtype() {
                    S::F64 | S::I64 => 8,
                    S::F32 | S::I32 => 4,
                    _ => 2,
                };
                b.chunks_exact(size)
                    .flat_map(|c| c.iter().rev().copied())
                    .collect()
            }
        };
        let dtype = match view.dtype() {
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            other => {
                return Err(Error::artifact(
                    path,
                    format!("tensor `{name}` has element type {other:?}; expected a float tensor"),
                ));
            }
        };
        let values = f32s(&name, dtype, &le(view.data()), path)?;
        dict.insert(
            name,
            NamedTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(dict)
}

/// The top-level keys of a dict with dotted names, for messages.
fn tops(dict: &StateDict) -> String {
    let t: BTreeSet<&str> = dict
        .keys()
        .map(|k| k.split('.').next().unwrap_or(k))
        .collect();
    t.into_iter().take(12).collect::<Vec<_>>().join(", ")
}

/// The tensors under `key.` with the prefix taken off.
fn under(dict: &StateDict, key: &str) -> StateDict {
    let prefix = format!("{key}.");
    dict.iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Reads the state dict of a checkpoint file: a safetensors file (recognised by its header,
/// whatever its extension) or anything `torch.save` writes.
pub fn read_state_dict(path: &Path, options: &ReadOptions) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let all = if looks_like_safetensors(&bytes) {
        read_safetensors(&bytes, path)?
    } else {
        drop(bytes);
        read_pytorch(path)?
    };
    if all.is_empty() {
        return Err(Error::artifact(path, "holds no tensors"));
    }
    let mut dict = match &options.key {
        Some(key) => {
            let d = under(&all, key);
            if d.is_empty() {
                return Err(Error::artifact(
                    path,
                    format!(
                        "no tensors under key `{key}` (--key); its top-level names: {}",
                        tops(&all)
                    ),
                ));
            }
            d
        }
        None => DEFAULT_KEYS
            .iter()
            .map(|k| under(&all, k))
            .find(|d| !d.is_empty())
            .unwrap_or(all),
    };
    // nn.DataParallel saves every name under `module.`.
    if dict.keys().all(|k| k.starts_with("module.")) {
        dict = under(&dict, "module");
    }
    if !options.renames.is_empty() {
        let mut renamed = StateDict::new();
        for (k, v) in dict {
            let name = options
                .renames
                .iter()
                .find_map(|(from, to)| {
                    k.strip_prefix(from.as_str())
                        .map(|rest| format!("{to}{rest}"))
                })
                .unwrap_or(k);
            if renamed.insert(name.clone(), v).is_some() {
                return Err(Error::artifact(
                    path,
                    format!("two tensors are called `{name}` after --rename"),
                ));
            }
        }
        dict = renamed;
    }
    Ok(dict)
}

/// A safetensors file of `dict` (little-endian, as the format requires) with `metadata`.
pub fn safetensors_bytes(dict: &StateDict, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = dict
        .iter()
        .map(|(name, t)| match &t.values {
            Values::F32(v) => (
                name.clone(),
                safetensors::Dtype::F32,
                t.shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Values::I64(v) => (
                name.clone(),
                safetensors::Dtype::I64,
                t.shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config("export", format!("cannot lay out a tensor: {e}")))?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::config("export", format!("cannot write safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_and_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut d = StateDict::new();
        d.insert(
            "model.module.conv1.weight".into(),
            NamedTensor {
                shape: vec![2, 1],
                values: Values::F32(vec![1.5, -2.0]),
            },
        );
        d.insert(
            "model.module.bn1.num_batches_tracked".into(),
            NamedTensor {
                shape: vec![],
                values: Values::I64(vec![7]),
            },
        );
        d.insert(
            "epoch".into(),
            NamedTensor {
                shape: vec![],
                values: Values::I64(vec![3]),
            },
        );
        let path = dir.path().join("m.bin");
        std::fs::write(&path, safetensors_bytes(&d, HashMap::new()).expect("bytes")).expect("w");
        let read = read_state_dict(&path, &ReadOptions::default()).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(read["conv1.weight"].values, Values::F32(vec![1.5, -2.0]));
        assert_eq!(read["bn1.num_batches_tracked"].values, Values::I64(vec![7]));
        let renamed = read_state_dict(
            &path,
            &ReadOptions {
                key: Some("model".into()),
                renames: vec![("conv1.".into(), "stem.".into())],
            },
        )
        .expect("renamed");
        assert!(renamed.contains_key("stem.weight"));
        let e = read_state_dict(
            &path,
            &ReadOptions {
                key: Some("ema".into()),
                renames: vec![],
            },
        )
        .expect_err("no such key")
        .to_string();
        assert!(
            e.contains("no tensors under key `ema`") && e.contains("epoch, model"),
            "{e}"
        );
    }

    #[test]
    fn garbage_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut d = StateDict::new();
        d.insert(
            "w".into(),
            NamedTensor {
                shape: vec![64],
                values: Values::F32(vec![0.5; 64]),
            },
        );
        let good = safetensors_bytes(&d, HashMap::new()).expect("bytes");
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"hello, this is not a model".to_vec(),
            good[..good.len() - 9].to_vec(),
            good[..12].to_vec(),
            vec![0x80, 0x02, 0x8a, 0x0a],
            b"PK\x03\x04 broken zip".to_vec(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let path = dir.path().join(format!("bad{i}.pt"));
            std::fs::write(&path, bytes).expect("w");
            let e = read_state_dict(&path, &ReadOptions::default())
                .err()
                .unwrap_or_else(|| panic!("case {i} read"));
            assert!(e.to_string().contains(&format!("bad{i}.pt")), "{e}");
        }
        let e = read_state_dict(&dir.path().join("none.pt"), &ReadOptions::default())
            .expect_err("missing");
        assert!(e.to_string().contains("none.pt"), "{e}");
    }
}
