//! Result files written beside runs (`eval --out`, pictures, benchmark results): never one of a
//! run directory's own files, and never an existing file unless the user says `--force`.

use crate::attack::files as attack_files;
use crate::engine::run_dir::files;
use crate::{Error, Result};
use std::path::Path;

/// The files a run directory owns: replacing one breaks the run (a changed report makes
/// `summarize` reject it; a changed model no longer matches its report).
pub const RUN_FILES: [&str; 10] = [
    files::REPORT,
    files::MODEL,
    files::MODEL_CONFIG,
    files::SPLIT,
    files::LOCK,
    attack_files::ATTACK,
    attack_files::WARP_GRID,
    attack_files::IAB_GENERATOR,
    attack_files::IAB_MASK,
    crate::attack::triggered::FILE,
];

/// The folders a run directory owns.
pub const RUN_FOLDERS: [&str; 2] = [files::CHECKPOINT_DIR, files::LC_CLEAN_MODEL];

/// Whether `dir` is a run directory (it holds a model, a report or a checkpoint).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(files::MODEL_CONFIG).is_file()
        || dir.join(files::REPORT).is_file()
        || dir.join(files::CHECKPOINT_DIR).is_dir()
}

/// Why `path` belongs to a run directory, if it does: it is one of [`RUN_FILES`] of a run
/// directory, or lies inside one of its [`RUN_FOLDERS`]. Symbolic links and `..` are resolved
/// first, so another spelling of the same file is caught too.
pub fn run_file_reason(path: &Path) -> Option<String> {
    let parent = crate::io::parent_dir(path).canonicalize().ok()?;
    let name = path.file_name()?.to_str()?;
    if RUN_FILES.contains(&name) && is_run_dir(&parent) {
        return Some(format!(
            "`{name}` is a file of the run directory {}",
            parent.display()
        ));
    }
    let mut dir: Option<&Path> = Some(&parent);
    while let Some(d) = dir {
        if let (Some(n), Some(run)) = (d.file_name().and_then(|n| n.to_str()), d.parent())
            && RUN_FOLDERS.contains(&n)
            && is_run_dir(run)
        {
            return Some(format!(
                "it is inside `{n}/` of the run directory {}",
                run.display()
            ));
        }
        dir = d.parent();
    }
    None
}

/// Checks, before any work, that `path` (given with `--flag`) may be written: never a run
/// directory's own file, not a directory, and not an existing file unless `force`.
pub fn check_output(path: &Path, flag: &str, force: bool) -> Result<()> {
    let refuse = |reason: String| Error::config(flag, format!("{}: {reason}", path.display()));
    if let Some(reason) = run_file_reason(path) {
        return Err(refuse(format!(
            "refusing to write it: {reason}; write results elsewhere"
        )));
    }
    if path.is_dir() {
        return Err(refuse("is a directory; expected a file name".into()));
    }
    if !force && (path.exists() || path.symlink_metadata().is_ok()) {
        return Err(refuse(
            "exists; pass --force to replace it, or choose another file".into(),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically after [`check_output`]. Without `force` the file is
/// created only if it still does not exist at the moment of the rename (a file made meanwhile
/// by someone else is not replaced).
pub fn write_output(path: &Path, bytes: &[u8], flag: &str, force: bool) -> Result<()> {
    check_output(path, flag, force)?;
    if force {
        return crate::io::write_atomic(path, bytes);
    }
    crate::io::write_atomic_new(path, bytes).map_err(|e| match e {
        Error::Io { error, .. } if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Error::config(
                flag,
                format!(
                    "{}: created by someone else meanwhile; not replaced (pass --force to replace it)",
                    path.display()
                ),
            )
        }
        e => e,
    })
}

/// [`write_output`] of `value` as pretty JSON.
pub fn write_output_json<T: serde::Serialize>(
    path: &Path,
    value: &T,
    flag: &str,
    force: bool,
) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::artifact(path, format!("cannot serialise: {e}")))?;
    bytes.push(b'\n');
    write_output(path, &bytes, flag, force)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn run_dir(root: &Path) -> PathBuf {
        let run = root.join("run");
        std::fs::create_dir_all(run.join(files::CHECKPOINT_DIR)).expect("mkdir");
        std::fs::write(run.join(files::REPORT), b"{}").expect("report");
        std::fs::write(run.join(files::MODEL_CONFIG), b"{}").expect("model.json");
        run
    }

    #[test]
    fn run_files_are_never_written_even_with_force() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = run_dir(tmp.path());
        for p in [
            run.join(files::REPORT),
            run.join(files::SPLIT),
            run.join(files::CHECKPOINT_DIR).join("x.json"),
            run.join("checkpoint/../report.json"),
        ] {
            let err = write_output(&p, b"x", "out", true).expect_err("refused");
            assert!(err.to_string().contains("refusing"), "{err}");
        }
        assert_eq!(
            std::fs::read(run.join(files::REPORT)).expect("read"),
            b"{}",
            "the run's report is untouched"
        );
        // A file of another name beside the run's files is fine.
        write_output(&run.join("eval.json"), b"x", "out", false).expect("beside the run");
    }

    #[test]
    fn existing_files_need_force() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("result.json");
        write_output_json(&p, &[1], "out", false).expect("new");
        let err = write_output_json(&p, &[2], "out", false).expect_err("exists");
        assert!(
            err.to_string().contains("--force") && err.to_string().contains("`out`"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "[\n  1\n]\n");
        write_output_json(&p, &[2], "out", true).expect("forced");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "[\n  2\n]\n");
        let err = write_output(tmp.path(), b"x", "out", true).expect_err("a directory");
        assert!(err.to_string().contains("directory"), "{err}");
    }
}
