//! What running a protocol's runs has in common, in this process or in a pool of them: the
//! command line that brings a run to completion, the tally of outcomes, the archiving of a
//! finished run.

use super::archive::Archive;
use super::plan::{Role, Run};
use crate::batch::{State, state};
use std::path::Path;
use std::time::Duration;

/// What became of a shard's runs.
#[derive(Default)]
pub(super) struct Tally<'a> {
    pub done: usize,
    pub skipped: usize,
    pub failed: Vec<&'a str>,
    /// Not run because a run they need failed (or was itself not run).
    pub blocked: Vec<&'a str>,
    /// Finished, but could not be written into the results archive.
    pub unarchived: Vec<&'a str>,
}

impl<'a> Tally<'a> {
    /// Whether `r` needs a run that failed or was not run; if so, `r` is counted (and reported)
    /// as not run.
    pub fn blocks(&mut self, r: &'a Run) -> bool {
        let need = r
            .needs
            .iter()
            .find(|n| self.failed.contains(&n.as_str()) || self.blocked.contains(&n.as_str()));
        if let Some(n) = need {
            errln!("protocol: {}: not run, it needs {n}, which failed", r.name);
            self.blocked.push(&r.name);
        }
        need.is_some()
    }
}

/// Writes the finished run `r` into `archive` (if any), saying so; a failure is reported and
/// counted, and the other runs go on.
pub(super) fn archive_run<'a>(
    archive: Option<&Archive>,
    r: &'a Run,
    out: &Path,
    took: Option<Duration>,
    tally: &mut Tally<'a>,
) {
    let Some(archive) = archive else {
        return;
    };
    match archive.add(r, out, took) {
        Ok(m) => errln!(
            "protocol: {}: archived into {} ({} files)",
            r.name,
            archive.root().join(&r.name).display(),
            m.files.len()
        ),
        Err(e) => {
            errln!("protocol: {}: NOT ARCHIVED: {e:#}", r.name);
            tally.unarchived.push(&r.name);
        }
    }
}

/// Says that another process holds `r`'s folder and this one waits for it.
pub(super) fn announce_held(r: &Run) {
    errln!(
        "protocol: {}: another process is running it; waiting",
        r.name
    );
}

/// The command line (without the program's name) that brings `r` to completion in `dir`:
/// `--resume` where it stopped, `--force` for a map drawn but not saved; `None` for a map that
/// is complete. A finished run's command is given as it is: the run compares its settings with
/// the ones it finished with ([`crate::batch::runs_check_their_folder`]) and does nothing when
/// they are the same.
pub(super) fn command_words(r: &Run, dir: &Path) -> Option<Vec<String>> {
    let mut words = r.words.clone();
    match state(dir) {
        State::Complete if r.role == Role::Map => return None,
        State::Complete => {}
        State::Resume => words.push("--resume".into()),
        // A map whose picture was written but not its JSON (stopped in between) is redrawn.
        State::Fresh if r.role == Role::Map && dir.exists() => words.push("--force".into()),
        State::Fresh => {}
    }
    words.extend(["--out".to_string(), dir.display().to_string()]);
    Some(words)
}
