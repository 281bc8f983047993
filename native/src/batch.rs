//! `cleanse batch FILE`: many runs in one process, one after another. On a GPU every process
//! compiles the kernels of its model again; a batch compiles them once and shares them.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub(crate) struct BatchArgs {
    /// A file of cleanse command lines, one per line, without the program name (blank lines and
    /// lines starting with `#` are skipped; words are separated by spaces, no quoting). Each
    /// line needs `--out`. Runs whose output is complete with the line's settings are skipped (a
    /// finished run of other settings is an error, and kept); unfinished ones resume.
    file: PathBuf,
    /// Start no new run after this many seconds.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Only check the file: parse every line and print what would run.
    #[arg(long)]
    dry_run: bool,
}

/// One line of a batch file.
#[derive(Debug)]
struct Line {
    number: usize,
    words: Vec<String>,
    out: PathBuf,
}

fn parse(file: &Path, text: &str) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains(['"', '\'', '\\']) {
            bail!(
                "{}:{number}: quotes and backslashes are not supported (words are separated by spaces)",
                file.display()
            );
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if matches!(words[0].as_str(), "batch" | "cleanse") {
            bail!(
                "{}:{number}: expected a command without the program name (train, attack, defend, ...), got `{}`",
                file.display(),
                words[0]
            );
        }
        let out = words
            .iter()
            .position(|w| w == "--out")
            .and_then(|i| words.get(i + 1))
            .map(PathBuf::from)
            .with_context(|| format!("{}:{number}: no `--out PATH`", file.display()))?;
        // Every line must parse before anything runs.
        crate::parse_command(words.clone()).map_err(|e| {
            anyhow::anyhow!(
                "{}:{number}: {}",
                file.display(),
                e.render().to_string().trim()
            )
        })?;
        lines.push(Line { number, words, out });
    }
    Ok(lines)
}

/// What a batch does with a line whose output already exists.
#[derive(Debug, PartialEq)]
pub(crate) enum State {
    Fresh,
    Complete,
    Resume,
}

pub(crate) fn state(out: &Path) -> State {
    if out.extension().is_some_and(|e| e == "png") {
        // `tsne` writes its JSON last.
        return if out.with_extension("json").is_file() {
            State::Complete
        } else {
            State::Fresh
        };
    }
    let report = out.join("report.json");
    if let Ok(text) = std::fs::read_to_string(&report)
        && let Ok(r) = cleanse_core::report::Report::from_json("", &text)
        && r.status == cleanse_core::report::RunStatus::Complete
    {
        return State::Complete;
    }
    if cleanse_core::engine::checkpoint::resumable(&out.join("checkpoint")) {
        State::Resume
    } else {
        State::Fresh
    }
}

/// Whether the command of `words` compares the settings of a finished run in its `--out` with
/// its own (`train`, `attack`, `defend`: their run folder records the configuration): it does
/// nothing for the same settings and refuses other ones. For the other commands a complete
/// output is taken as done.
pub(crate) fn runs_check_their_folder(words: &[String]) -> bool {
    matches!(
        words.first().map(String::as_str),
        Some("train" | "attack" | "defend")
    )
}

pub(crate) fn run(a: &BatchArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading batch file {}", a.file.display()))?;
    let lines = parse(&a.file, &text)?;
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let (mut done, mut skipped) = (0, 0);
    for line in &lines {
        let mut words = line.words.clone();
        let complete = state(&line.out) == State::Complete;
        match state(&line.out) {
            State::Complete if !runs_check_their_folder(&words) => {
                errln!(
                    "batch: line {}: complete already ({})",
                    line.number,
                    line.out.display()
                );
                skipped += 1;
                continue;
            }
            State::Resume if !words.iter().any(|w| w == "--resume") => {
                words.push("--resume".into())
            }
            _ => {}
        }
        if let Some(limit) = a.stop_after
            && t0.elapsed().as_secs() >= limit
        {
            errln!(
                "batch: stopping after {} s; lines from {} on are left (they resume on the next call)",
                t0.elapsed().as_secs(),
                line.number
            );
            break;
        }
        if complete {
            errln!(
                "batch: line {}: finished in {}; compared with its settings when the batch runs",
                line.number,
                line.out.display()
            );
        } else {
            errln!("batch: line {}: cleanse {}", line.number, words.join(" "));
        }
        if a.dry_run {
            continue;
        }
        let started = Instant::now();
        match crate::run_command(words) {
            Ok(()) => {
                done += 1;
                errln!(
                    "batch: line {} finished in {:.0} s",
                    line.number,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) if crate::protocol::is_complete(&e) => {
                errln!(
                    "batch: line {}: complete already ({}, the same settings)",
                    line.number,
                    line.out.display()
                );
                skipped += 1;
            }
            Err(e) => {
                errln!("batch: line {} FAILED: {e:#}", line.number);
                failed.push(line.number);
            }
        }
    }
    errln!(
        "batch: {done} run, {skipped} complete already, {} failed, {:.0} s",
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("{}: lines {failed:?} failed", a.file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_before_anything_runs() {
        let f = Path::new("jobs.txt");
        let ok = parse(
            f,
            "# comment\n\ntrain --dataset synthetic --out /tmp/x\n  defend kd --model /tmp/x --out /tmp/y  \n",
        )
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].number, 4);
        assert_eq!(ok[1].out, PathBuf::from("/tmp/y"));
        for (text, needle) in [
            ("train --dataset synthetic", "jobs.txt:1: no `--out PATH`"),
            ("\ntrain --bogus 1 --out /x", "jobs.txt:2:"),
            ("cleanse train --out /x", "without the program name"),
            ("train --out \"/a b\"", "quotes"),
        ] {
            let e = parse(f, text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn outputs_are_classified() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = tmp.path().join("run");
        assert_eq!(state(&run), State::Fresh);
        std::fs::create_dir_all(run.join("checkpoint")).expect("mkdir");
        std::fs::write(run.join("checkpoint").join("state.json"), "{}").expect("write");
        assert_eq!(state(&run), State::Resume);
        let png = tmp.path().join("map.png");
        assert_eq!(state(&png), State::Fresh);
        std::fs::write(png.with_extension("json"), "{}").expect("write");
        assert_eq!(state(&png), State::Complete);
    }
}
