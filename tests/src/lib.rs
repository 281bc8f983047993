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
