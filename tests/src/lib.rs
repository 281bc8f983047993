//! Helpers shared by the cross-crate integration tests.

use std::path::PathBuf;

/// The shared data directory (`../shared/data` beside the repository), or `CLEANSE_SHARED_DATA`.
pub fn shared_data() -> PathBuf {
    if let Ok(p) = std::env::var("CLEANSE_SHARED_DATA") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidate = root.join("../../shared/data");
    assert!(
        candidate.is_dir(),
        "bundled data not found at {}; set CLEANSE_SHARED_DATA to the shared/data directory",
        candidate.display()
    );
    candidate
}

/// Asserts that `got`, a golden run's lines, is one of the `recorded` tables (one per kind of
/// arithmetic the runs have been recorded on), printing it either way so a new table can be
/// recorded from the log.
pub fn assert_golden(recorded: &[&[&str]], got: &[String]) {
    let table = got.join("\n");
    eprintln!("golden values:\n{table}");
    let same = |t: &&[&str]| t.iter().copied().eq(got.iter().map(String::as_str));
    assert!(
        recorded.iter().any(same),
        "golden values changed (none of the recorded tables); got:\n{table}"
    );
}
