//! `cleanse`: train, attack, defend and evaluate backdoored image classifiers.

/// `println!` that ignores a closed standard output (its reader, e.g. `head`, went away): the
/// run goes on and finishes instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that ignores a closed standard output.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that ignores a closed standard error.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod attack;
mod batch;
mod bench;
mod defend;
mod export;
mod gallery;
mod import;
mod progress;
mod protocol;
mod tsne;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cleanse_core::data::augment::Augment;
use cleanse_core::data::synthetic::SyntheticConfig;
use cleanse_core::data::{DataSpec, DatasetKind};
use cleanse_core::device::{self, DeviceChoice};
use cleanse_core::model::Architecture;
use cleanse_core::optim::Schedule;
use cleanse_core::precision::Precision;
use cleanse_core::train::TrainConfig;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "cleanse",
    version,
    about = "Backdoor attacks, defenses and the distillation cleanser on Burn"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a classifier (clean) and write model, checkpoints and report.json into --out.
    Train(TrainArgs),
    /// Train a backdoored classifier with one of the six attacks (the held-out split stays clean).
    Attack(attack::AttackArgs),
    /// Remove a backdoor from a model.
    #[command(subcommand)]
    Defend(defend::DefendCommand),
    /// Clean accuracy and attack success rate of a model, against a saved attack.
    Eval(attack::EvalArgs),
    /// A model trained elsewhere (PyTorch .pt/.pth or safetensors) as a run directory that
    /// every command accepts.
    Import(import::ImportArgs),
    /// A run's model as a safetensors file PyTorch's load_state_dict accepts.
    Export(export::ExportArgs),
    /// Throughput of each WGSL kernel (triggers, distillation loss) against its plain-tensor twin.
    BenchKernels(bench::KernelBenchArgs),
    /// One clean image and its poisoned versions under all six attacks, with magnified residuals.
    Triggers(gallery::TriggersArgs),
    /// t-SNE map of penultimate features of clean and triggered test images (PNG + JSON).
    Tsne(tsne::TsneArgs),
    /// A Markdown table (clean accuracy, ASR) of the runs under the given directories.
    Summarize(SummarizeArgs),
    /// Many runs in one process (shares compiled GPU kernels): a file of command lines.
    Batch(batch::BatchArgs),
    /// An experiment from a spec file: run it (or a shard), tabulate it, or queue it on Slurm.
    #[command(subcommand)]
    Protocol(protocol::ProtocolCommand),
    /// List the compute devices this machine offers and the one `--device auto` picks.
    Devices,
    /// Measure training and inference throughput of ResNet-18 on random data.
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum DatasetArg {
    Cifar10,
    Gtsrb,
    Folder,
    Synthetic,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ModelArg {
    /// CIFAR ResNet-18 (3x3 stem, no max-pool): the paper's model for 32x32 images.
    Resnet18,
    /// PreAct-ResNet-18 (BackdoorBench's default).
    PreactResnet18,
    /// torchvision's ResNet-18 (7x7 stride-2 stem, max-pool), for ImageNet-size images.
    Resnet18Imagenet,
}

impl From<DatasetArg> for DatasetKind {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Cifar10 => DatasetKind::Cifar10,
            DatasetArg::Gtsrb => DatasetKind::Gtsrb,
            DatasetArg::Folder => DatasetKind::Folder,
            DatasetArg::Synthetic => DatasetKind::Synthetic,
        }
    }
}

impl From<ModelArg> for Architecture {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Resnet18 => Architecture::Resnet18,
            ModelArg::PreactResnet18 => Architecture::PreactResnet18,
            ModelArg::Resnet18Imagenet => Architecture::Resnet18Imagenet,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ScheduleArg {
    Multistep,
    Cosine,
    Constant,
}

#[derive(Clone, Copy, Debug, ValueEnum, Default)]
pub(crate) enum DeviceArg {
    #[default]
    Auto,
    Wgpu,
    Cpu,
    /// Burn's CUDA backend (a build with `--features cuda`).
    Cuda,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Wgpu => DeviceChoice::Wgpu,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, Default)]
pub(crate) enum PrecisionArg {
    /// f32 everywhere.
    #[default]
    F32,
    /// Convolutions in f16 with dynamic loss scaling (GPUs with f16 arithmetic).
    F16,
    /// Convolutions in bfloat16 (CUDA).
    Bf16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// The training arithmetic, for the commands that train.
#[derive(Args, Debug, Clone)]
pub(crate) struct PrecisionArgs {
    /// f16 / bf16: the convolutions in reduced precision, the weights, batch norms, loss and
    /// optimiser in f32 (GPUs only; f16 scales the loss).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
}

impl PrecisionArgs {
    /// The device of `device` set to train in this precision, or why it cannot.
    pub fn select(&self, device: &DeviceArgs) -> Result<device::Selected> {
        Ok(device.select()?.with_precision(self.precision.into())?)
    }
}

/// Device and thread flags shared by every command that computes.
#[derive(Args, Debug, Clone)]
pub(crate) struct DeviceArgs {
    /// auto: wgpu on a hardware GPU when there is one, else the CPU backend.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// CPU threads for the CPU backend and data loading (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl DeviceArgs {
    pub fn select(&self) -> Result<device::Selected> {
        // The thread pool is global: set once per process (a batch sets it on its first line).
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        // Far above any machine's cores; a larger number is a typo that would spawn that many
        // OS threads.
        const MAX_THREADS: usize = 1024;
        if self.threads > MAX_THREADS {
            anyhow::bail!(
                "--threads {}: expected 0 (all cores) to {MAX_THREADS}",
                self.threads
            );
        }
        if self.threads > 0 {
            let set = *THREADS.get_or_init(|| {
                match rayon::ThreadPoolBuilder::new()
                    .num_threads(self.threads)
                    .build_global()
                {
                    Ok(()) => self.threads,
                    Err(_) => rayon::current_num_threads(),
                }
            });
            if set != self.threads {
                anyhow::bail!(
                    "--threads {}: this process already runs {set} threads (in a batch, give every line the same --threads)",
                    self.threads
                );
            }
        }
        Ok(device::select(self.device.into())?)
    }
}

/// Defaults are the supplement's values (ResNet-18, 200 epochs, batch 128, lr 0.1,
/// MultiStep [100,150] x0.1, momentum 0.9, weight decay 5e-4, crop 4 + flip, 10% held out).
#[derive(Args, Debug, Clone)]
pub(crate) struct TrainArgs {
    #[arg(long, value_enum)]
    dataset: DatasetArg,
    /// Data directory (not needed for synthetic data).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModelArg::Resnet18)]
    model: ModelArg,
    /// Base width of the ResNet (64 = standard; 8 or 16 for quick runs).
    #[arg(long, default_value_t = 64)]
    width: usize,
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Multistep)]
    schedule: ScheduleArg,
    /// MultiStep milestones (epochs); default: 1/2 and 3/4 of --epochs (100,150 for 200),
    /// none at epoch 0.
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<usize>>,
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of the training set held out for the defender.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Hold out this many images of every class instead of a fraction (the supplement's
    /// ImageNet-10 split: 300 of each class).
    #[arg(long, value_name = "N", conflicts_with_all = ["holdout", "defender_per_class", "defender_fraction"])]
    holdout_per_class: Option<usize>,
    /// Take the defender's data from the test set instead: N images of each class (one fixed
    /// choice), the rest of the test set evaluates; nothing is held out of the training set (the
    /// supplement's GTSRB protocol).
    #[arg(long, value_name = "N", conflicts_with = "holdout")]
    defender_per_class: Option<usize>,
    /// Take the defender's data from the test set as this fraction of every class instead (one
    /// fixed choice, in proportion to class size; the authors' GTSRB split is 0.398), the rest of
    /// the test set evaluates; nothing is held out of the training set.
    #[arg(long, value_name = "F", conflicts_with_all = ["holdout", "defender_per_class"])]
    defender_fraction: Option<f64>,
    /// Zero padding of the random crop (0 disables cropping).
    #[arg(long, default_value_t = 4)]
    crop_padding: usize,
    /// Disable horizontal flips (always off for GTSRB).
    #[arg(long)]
    no_flip: bool,
    /// Side length images are resized to (image folders, official GTSRB).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Synthetic data: training images.
    #[arg(long, default_value_t = 512)]
    synthetic_train: usize,
    /// Synthetic data: test images.
    #[arg(long, default_value_t = 128)]
    synthetic_test: usize,
    #[arg(long, default_value_t = 256)]
    eval_batch_size: usize,
    /// Evaluate after every Nth epoch and after the last (the trained model does not depend on
    /// it, only the report's curve does).
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
    #[command(flatten)]
    pub(crate) precision: PrecisionArgs,
    /// Output directory; must be new or empty unless --resume.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
}

impl TrainArgs {
    pub(crate) fn config(&self) -> TrainConfig {
        let kind: DatasetKind = self.dataset.into();
        let mut data = DataSpec::new(kind, self.data.clone());
        data.image_size = self.image_size;
        data.defender_per_class = self.defender_per_class;
        data.defender_fraction = self.defender_fraction;
        data.synthetic = SyntheticConfig {
            train_size: self.synthetic_train,
            test_size: self.synthetic_test,
            seed: self.seed,
            ..SyntheticConfig::default()
        };
        let mut c = TrainConfig::supplement(data);
        c.architecture = self.model.into();
        c.width = self.width;
        c.epochs = self.epochs;
        c.batch_size = self.batch_size;
        c.lr = self.lr;
        c.schedule = match self.schedule {
            ScheduleArg::Multistep => Schedule::Multistep {
                milestones: self
                    .milestones
                    .clone()
                    .unwrap_or_else(|| Schedule::default_milestones(self.epochs)),
                gamma: self.gamma,
            },
            ScheduleArg::Cosine => Schedule::cosine(self.epochs),
            ScheduleArg::Constant => Schedule::Constant,
        };
        c.sgd.momentum = self.momentum;
        c.sgd.weight_decay = self.weight_decay;
        c.seed = self.seed;
        c.holdout_per_class = self.holdout_per_class;
        c.holdout = if c.data.defender_from_test() || c.holdout_per_class.is_some() {
            0.0
        } else {
            self.holdout
        };
        c.augment = Augment {
            crop_padding: self.crop_padding,
            flip: !self.no_flip && kind.allows_flip(),
        };
        c.eval_batch_size = self.eval_batch_size;
        c.eval_every = self.eval_every;
        c
    }
}

pub(crate) fn describe_device(selected: &device::Selected) -> String {
    describe_device_info(&selected.info)
}

/// A device as people read it: the adapter for wgpu, the thread count for the CPU.
pub(crate) fn describe_device_info(info: &device::DeviceInfo) -> String {
    let where_ = match (&info.adapter, info.backend) {
        (Some(a), _) => format!("wgpu on {} ({}, {})", a.name, a.device_type, a.api),
        (None, device::Backend::Cuda) => "cuda (device 0)".to_string(),
        (None, _) => format!("cpu (flex, {} threads)", info.cpu_threads),
    };
    match info.precision {
        Precision::F32 => where_,
        p => format!("{where_}, convolutions in {p}"),
    }
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let config = args.config();
    let selected = args.precision.select(&args.device)?;
    errln!("device: {}", describe_device(&selected));
    let mut bars = progress::Bars::new();
    let report = cleanse_core::train::train(&config, &args.out, args.resume, &selected, &mut bars)
        .with_context(|| format!("training into {}", args.out.display()))?;
    bars.finish();
    let acc = report.final_metrics.map(|f| f.clean_acc).unwrap_or(0.0);
    outln!(
        "clean_acc {:.4} after {} epochs; report: {}",
        acc,
        report.epochs.len(),
        args.out.join("report.json").display()
    );
    Ok(())
}

#[derive(Args, Debug)]
struct SummarizeArgs {
    /// Run directories, or directories holding run directories at any depth (up to 8 levels,
    /// e.g. a protocol's output folder or a results archive).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Print the supplement's layout instead: one row per attack, clean accuracy and ASR with no
    /// defense and after each defense (`*`: run still in progress).
    #[arg(long)]
    by_defense: bool,
}

fn find_reports(dir: &std::path::Path, depth: usize, out: &mut Vec<PathBuf>) {
    let report = dir.join("report.json");
    if report.is_file() {
        out.push(report);
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // Links are not followed (they could lead round in a circle); checkpoints hold no reports.
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "checkpoint")
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        find_reports(&d, depth - 1, out);
    }
}

fn run_summarize(a: &SummarizeArgs) -> Result<()> {
    use cleanse_core::report::Report;
    use cleanse_core::table::{AttackDefenseTable, SummaryRow, markdown_table};
    let mut files = Vec::new();
    for r in &a.runs {
        if !r.exists() {
            anyhow::bail!("{}: no such file or directory", r.display());
        }
        find_reports(r, 8, &mut files);
    }
    if files.is_empty() {
        anyhow::bail!("no report.json under {:?}", a.runs);
    }
    let mut reports = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
        let report =
            Report::from_json(&f.display().to_string(), &text).map_err(anyhow::Error::msg)?;
        let name = f
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        reports.push((name, report));
    }
    if a.by_defense {
        let table = AttackDefenseTable::build(reports.iter().map(|(n, r)| (n.as_str(), r)));
        out!("{}", table.markdown());
        for note in &table.notes {
            errln!("note: {note}");
        }
    } else {
        let rows: Vec<SummaryRow> = reports.iter().map(|(n, r)| SummaryRow::of(n, r)).collect();
        out!("{}", markdown_table(&rows));
    }
    Ok(())
}

fn run_devices() -> Result<()> {
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        outln!(
            "wgpu adapters: none (install a Vulkan driver, e.g. mesa-vulkan-drivers, to use --device wgpu)"
        );
    }
    for a in &adapters {
        outln!(
            "wgpu adapter: {} [{}] via {} {}{}",
            a.name,
            a.device_type,
            a.api,
            a.driver,
            if a.is_hardware() { "" } else { " (software)" }
        );
    }
    let auto = device::select(DeviceChoice::Auto)?;
    outln!(
        "--device auto -> {}",
        match auto.info.adapter {
            Some(a) => format!("wgpu ({})", a.name),
            None => format!("cpu (flex, {} threads)", auto.info.cpu_threads),
        }
    );
    Ok(())
}

/// Runs the command that `matches` holds.
/// A command line (without the program name) parsed as `cleanse` parses its own.
pub(crate) fn parse_command(
    words: impl IntoIterator<Item = String>,
) -> std::result::Result<clap::ArgMatches, clap::Error> {
    <Cli as clap::CommandFactory>::command()
        .try_get_matches_from(std::iter::once("cleanse".to_string()).chain(words))
}

/// Checks the settings of a planned command line (parsed into `matches`) as its run would before
/// any work, the target class against the data set's `classes` where they are known (`None`:
/// an image folder, counted when read): the reason it would be refused, as `--flag: reason`.
pub(crate) fn check_planned(
    matches: &clap::ArgMatches,
    classes: Option<usize>,
) -> std::result::Result<(), String> {
    let named = |e: cleanse_core::Error| match e {
        cleanse_core::Error::Config { name, reason } => format!("--{name}: {reason}"),
        e => e.to_string(),
    };
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(matches).map_err(|e| e.to_string())?;
    match &cli.command {
        Command::Train(a) => a.config().validate().map_err(named),
        Command::Attack(a) => {
            let sub = matches
                .subcommand_matches("attack")
                .ok_or("attack arguments")?;
            let (train, attack) = a.configs(sub);
            train.validate().map_err(named)?;
            attack
                .validate(classes.unwrap_or(cleanse_core::model::MAX_CLASSES))
                .map_err(named)
        }
        Command::Defend(c) => defend::planned_defense(c)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(named),
        _ => Ok(()),
    }
}

/// The table label a command line's finished run would report (`BadNets 10%` for an attack,
/// `I-BAU` or `KD init single:3` for a defense), from its flags alone; `None` for other commands
/// or lines that do not parse.
pub(crate) fn planned_label(words: &[String]) -> Option<String> {
    // A planned line has no --out yet (the runner adds the run's directory).
    let out = ["--out".to_string(), "planned".to_string()];
    let matches = parse_command(words.iter().cloned().chain(out)).ok()?;
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).ok()?;
    match &cli.command {
        Command::Attack(a) => {
            let (_, attack) = a.configs(matches.subcommand_matches("attack")?);
            let json = serde_json::to_value(attack).ok()?;
            Some(cleanse_core::table::attack_label(&json))
        }
        Command::Defend(c) => defend::planned_label(c),
        _ => None,
    }
}

/// Runs a command line (without the program name) in this process.
pub(crate) fn run_command(words: impl IntoIterator<Item = String>) -> Result<()> {
    dispatch(&parse_command(words)?)
}

pub(crate) fn dispatch(matches: &clap::ArgMatches) -> Result<()> {
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(matches)?;
    match &cli.command {
        Command::Train(a) => run_train(a),
        Command::Devices => run_devices(),
        Command::Bench(a) => bench::run(a),
        Command::Attack(a) => attack::run_attack(a, matches),
        Command::Eval(a) => attack::run_eval(a),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
        Command::Defend(c) => defend::run(c),
        Command::Triggers(a) => gallery::run(a),
        Command::Summarize(a) => run_summarize(a),
        Command::Tsne(a) => tsne::run(a),
        Command::BenchKernels(a) => bench::run_kernels(a),
        Command::Batch(a) => batch::run(a),
        Command::Protocol(c) => protocol::run(c),
    }
}

fn main() {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    if let Err(e) = dispatch(&matches) {
        if protocol::is_complete(&e) {
            // A finished run of these very settings: nothing to do is a success.
            errln!("{}", e.root_cause());
            if std::env::var_os(protocol::POOL_CHILD).is_some() {
                std::process::exit(protocol::COMPLETE_EXIT);
            }
            return;
        }
        errln!("error: {e:#}");
        std::process::exit(protocol::exit_status(&e));
    }
}
