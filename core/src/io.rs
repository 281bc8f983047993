//! Atomic file writes: a result or checkpoint is either the old file or the complete new one.

use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

/// The folder `path` lies in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, bytes, true)
}

/// [`write_atomic`] that never replaces a file: if `path` exists at the moment of the rename,
/// nothing is written and the error is [`Error::Io`] of kind `AlreadyExists`.
pub fn write_atomic_new(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, bytes, false)
}

fn write_via_temp(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let mut tmp =
        tempfile::NamedTempFile::new_in(parent_dir(path)).map_err(|e| Error::io(path, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    let persisted = match replace {
        true => tmp.persist(path),
        false => tmp.persist_noclobber(path),
    };
    persisted.map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::artifact(path, format!("cannot serialise: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::artifact(path, format!("invalid JSON: {e}")))
}

/// Creates `dir` (and parents), naming it in the error.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.json");
        write_json_atomic(&p, &vec![1, 2, 3]).expect("write");
        write_json_atomic(&p, &vec![4]).expect("rewrite");
        let v: Vec<i32> = read_json(&p).expect("read");
        assert_eq!(v, vec![4]);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
    }

    #[test]
    fn a_new_file_write_never_replaces_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.bin");
        write_atomic_new(&p, b"first").expect("new");
        let err = write_atomic_new(&p, b"second").expect_err("exists");
        assert!(
            matches!(&err, Error::Io { error, .. } if error.kind() == std::io::ErrorKind::AlreadyExists),
            "{err}"
        );
        assert_eq!(std::fs::read(&p).expect("read"), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn write_into_missing_dir_names_the_path() {
        let err = write_atomic(Path::new("/nonexistent-dir-xyz/f.bin"), b"x").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir-xyz/f.bin"),
            "{err}"
        );
    }
}
