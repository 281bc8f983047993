//! `cleanse protocol run|table|slurm`: an experiment grid from a spec file (`protocols/*.toml`):
//! data set, attacks, defenses and the models per attack; every (model, defense) pair one run
//! directory with a stable name.

mod archive;
mod exec;
mod plan;
mod pool;
mod runner;
mod slurm;
mod spec;
mod table;

pub(crate) use runner::is_complete;

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `s` quoted for a POSIX shell (single quotes; a quote inside becomes `'\''`).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as one shell word: as it is when it holds only characters no shell gives a meaning to,
/// else quoted ([`shell_quote`]).
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain { s.to_string() } else { shell_quote(s) }
}

/// The exit status of a command whose run directory another live process holds (`EX_TEMPFAIL`
/// of sysexits.h: try again later).
pub(crate) const BUSY_EXIT: i32 = 75;

/// The exit status of a command that found its folder holding a finished run of the same
/// settings, when a `protocol run --jobs` pool started it ([`POOL_CHILD`] set): nothing was
/// run, which the pool counts apart from a run it made. Elsewhere that is a plain success.
pub(crate) const COMPLETE_EXIT: i32 = 79;

/// Set in the environment of the processes a pool starts.
pub(crate) const POOL_CHILD: &str = "CLEANSE_POOL_CHILD";

/// The exit status for the error `e`: [`BUSY_EXIT`] when it says another process holds the run
/// directory, 1 otherwise.
pub(crate) fn exit_status(e: &anyhow::Error) -> i32 {
    if runner::is_busy(e) { BUSY_EXIT } else { 1 }
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProtocolCommand {
    /// Run a protocol (or one shard of it): complete runs are skipped, unfinished ones resume,
    /// a failing run is reported and the others go on.
    Run(RunArgs),
    /// The supplement's table (means and standard deviations over the models) of each protocol
    /// run into an output folder, as tables/<protocol>.md, .csv and .json there.
    Table(TableArgs),
    /// Write (and with --submit, submit) a Slurm job array running the protocol's shards, and the
    /// table as a job that waits for it.
    Slurm(SlurmArgs),
    /// Write the protocol's runs that are complete in --out into a results archive (and, with
    /// --unfinished, the checkpoints of those still going, so another machine continues them).
    Archive(ArchiveArgs),
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The protocol spec (TOML).
    spec: PathBuf,
    /// The output folder: one run directory per (model, defense) pair, and protocol.json.
    #[arg(long)]
    out: PathBuf,
    /// Run only shard INDEX of COUNT (e.g. 0/4): every COUNT-th attack model with its defenses.
    #[arg(long, value_parser = runner::parse_shard, default_value = "0/1")]
    shard: (usize, usize),
    /// Runs at a time, each in a process of its own with its output in OUT/logs/<run>.log (a
    /// GPU with memory to spare, or one core per run with `threads = 1` in the spec); a run
    /// starts as soon as the runs it needs are complete. 1: one after another in this process.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Seconds between looks at a run another process holds (at least 1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    poll_seconds: u64,
    /// Only check the spec and print the shard's command lines.
    #[arg(long)]
    dry_run: bool,
    /// Only these rows (attack names, comma-separated): their models and defenses, before the
    /// split into shards.
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    /// Only these columns (defense names, comma-separated), with the teachers they need, in the
    /// order of the spec: e.g. the cleanser's column before the others.
    #[arg(long, value_delimiter = ',')]
    defenses: Vec<String>,
    /// A results archive (e.g. results/<spec name>): its runs are restored into --out before
    /// anything runs (a complete run is not run again; an unfinished one resumes), and every run
    /// that finishes is written into it. Created when missing.
    #[arg(long)]
    archive: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct TableArgs {
    /// The output folder of `cleanse protocol run`, or a results archive (every file is checked
    /// against its manifest first).
    out: PathBuf,
    /// After each table, the machine kind (arithmetic), commit, epochs and hours of every run.
    #[arg(long)]
    provenance: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ArchiveArgs {
    /// The protocol spec (TOML).
    spec: PathBuf,
    /// The output folder the protocol runs in.
    #[arg(long)]
    out: PathBuf,
    /// The results archive to write into (created when missing).
    #[arg(long)]
    archive: PathBuf,
    /// Also the checkpoints of unfinished runs (a snapshot of a live run's last finished epoch),
    /// replacing an older unfinished entry: the next `protocol run --archive` resumes them.
    #[arg(long)]
    unfinished: bool,
}

#[derive(Args, Debug)]
pub(crate) struct SlurmArgs {
    /// The protocol spec (TOML).
    spec: PathBuf,
    /// The output folder (on a file system every node sees); the scripts go to OUT/slurm/.
    #[arg(long)]
    out: PathBuf,
    /// Array tasks (shards).
    #[arg(long, default_value_t = 4)]
    tasks: usize,
    #[arg(long)]
    partition: Option<String>,
    /// Generic resources per task, e.g. gpu:1.
    #[arg(long)]
    gres: Option<String>,
    /// Time limit per task, e.g. 24:00:00.
    #[arg(long)]
    time: Option<String>,
    #[arg(long, default_value_t = 4)]
    cpus_per_task: usize,
    /// Memory per task, e.g. 16G.
    #[arg(long)]
    mem: Option<String>,
    /// A further #SBATCH option, verbatim (repeatable), e.g. --sbatch=--account=lab.
    #[arg(long = "sbatch", allow_hyphen_values = true)]
    extra: Vec<String>,
    /// Runs at a time in each task, each in a process of its own (`protocol run --jobs`): for
    /// a node whose GPU has memory for several models.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// A results archive every task restores from and writes into (`protocol run --archive`).
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Submit at once (runs OUT/slurm/submit.sh).
    #[arg(long)]
    submit: bool,
}

pub(crate) fn run(cmd: &ProtocolCommand) -> Result<()> {
    match cmd {
        ProtocolCommand::Run(a) => runner::run(
            &a.spec,
            &a.out,
            &runner::RunOptions {
                shard: a.shard,
                jobs: a.jobs,
                poll: Duration::from_secs(a.poll_seconds),
                dry_run: a.dry_run,
                attacks: &a.attacks,
                defenses: &a.defenses,
                archive: a.archive.as_deref(),
            },
        ),
        ProtocolCommand::Table(a) => table::run(&a.out, a.provenance),
        ProtocolCommand::Archive(a) => {
            runner::archive_existing(&a.spec, &a.out, &a.archive, a.unfinished)
        }
        ProtocolCommand::Slurm(a) => slurm::run(
            &a.spec,
            &a.out,
            &slurm::SlurmSettings {
                tasks: a.tasks,
                partition: a.partition.clone(),
                gres: a.gres.clone(),
                time: a.time.clone(),
                cpus_per_task: a.cpus_per_task,
                mem: a.mem.clone(),
                extra: a.extra.clone(),
                jobs: a.jobs,
                archive: a.archive.clone(),
            },
            a.submit,
        ),
    }
}
