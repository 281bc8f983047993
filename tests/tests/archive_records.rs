//! Every report in the results archive (`results/`) reads back with this build: its defense
//! record as a member of the defense family, whatever the version of the settings' layout that
//! wrote it, and a finished run's settings compare equal to themselves re-written, so that a
//! restored run is found complete rather than run again.

use cleanse_core::defend::Defense;
use cleanse_core::report::Report;
use std::path::{Path, PathBuf};

fn reports(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("archive folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            reports(&path, out);
        } else if path.file_name().is_some_and(|n| n == "report.json") {
            out.push(path);
        }
    }
}

#[test]
fn every_archived_defense_record_reads_as_a_member_of_the_family() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let mut found = Vec::new();
    reports(&root, &mut found);
    let mut defenses = 0;
    for path in &found {
        let text = std::fs::read_to_string(path).expect("report");
        let report = Report::from_json(&path.display().to_string(), &text).expect("reads");
        let Some(record) = &report.defense else {
            continue;
        };
        let defense =
            Defense::of_record(record).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(defense.suspect(), record.suspect, "{}", path.display());
        assert_eq!(
            Defense::canonical(&record.config),
            defense.record_value(),
            "{}: the settings as recorded and as this build writes them",
            path.display()
        );
        defenses += 1;
    }
    // The archive holds defense runs (the quick protocol's seven at least): a test that found
    // none would check nothing.
    assert!(
        defenses >= 7,
        "{defenses} defense reports under {}",
        root.display()
    );
}
