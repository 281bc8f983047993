//! Every reader of outside bytes under a property-based fuzzer (proptest, stable Rust): CIFAR/GTSRB
//! binary records, the GTSRB ground-truth CSV, images as image folders and GTSRB hold them (PNG,
//! binary and ASCII PPM, JPEG), `report.json`, `model.json` and `model.bpk`, `attack.json` and
//! WaNet's `warp_grid.f32`, a checkpoint's `state.json`, `split.json`, the SGD state file, and
//! PyTorch checkpoints (torch.save's zip and legacy formats, safetensors) as `cleanse import` reads
//! them.
//!
//! Each reader gets arbitrary inputs and mutations of a valid sample (bytes overwritten or
//! bit-flipped, inputs cut, bytes or telling tokens such as huge numbers inserted, spans removed or
//! duplicated); the JSON and CSV readers also get character-level mutations of the valid text,
//! which keep it UTF-8. Any input must give a value or an error: never a panic, and never an
//! allocation beyond a cap of 1 GiB above what the process holds when the target starts. The
//! valid samples come from a tiny WaNet run trained here, once, on synthetic data.
//!
//! - `CLEANSE_FUZZ_CASES`: cases per target (default 256), shared out between arbitrary inputs
//!   (a quarter) and mutations of the sample.
//! - `CLEANSE_FUZZ_SEED`: the seed (default 0); the same seed tries the same inputs.
//! - `CLEANSE_FUZZ_TRACE=1`: prints every input (hex, first 200 bytes) before it is tried, to find
//!   the input that ran into the allocation cap.
//!
//! The cap is a global allocator ([`cap::Cap`]): an allocation beyond it fails and the process
//! aborts, which fails this test loudly. Because the allocator counts the whole process, the
//! targets run one after the other inside the one `#[test]` of this file (its own test binary):
//! tests running on other threads would count against the cap and make it meaningless. The
//! name of each target is written to stderr directly, not through `eprintln!` (which the test
//! harness captures and loses when the process aborts), so an abort names its target.

use burn::optim::GradientsParams;
use burn::prelude::{Device, Int, Tensor, TensorData};
use cap::Cap;
use cleanse_core::attack::{
    Attack, AttackConfig, AttackHooks, AttackKind, attack_success_rate, files as attack_files,
};
use cleanse_core::data::augment::Augment;
use cleanse_core::data::folder::decode_resized;
use cleanse_core::data::gtsrb::parse_gt_csv;
use cleanse_core::data::records;
use cleanse_core::data::split::SplitFile;
use cleanse_core::data::synthetic::SyntheticConfig;
use cleanse_core::data::{DataSpec, DatasetKind, ImageSet};
use cleanse_core::defend::suspect::load_attack;
use cleanse_core::device::{DeviceChoice, select};
use cleanse_core::engine::SilentObserver;
use cleanse_core::engine::checkpoint::{OptimizerState, load_state};
use cleanse_core::engine::files;
use cleanse_core::engine::run_files::RunFiles;
use cleanse_core::engine::run_files::load_model;
use cleanse_core::io::read_json;
use cleanse_core::model::loss::cross_entropy;
use cleanse_core::model::{Classifier, param_sizes};
use cleanse_core::optim::{Schedule, Sgd, SgdConfig};
use cleanse_core::report::Report;
use cleanse_core::train::TrainConfig;
use cleanse_core::train::run::train_with;
use image::ImageEncoder;
use proptest::arbitrary::any;
use proptest::prop_oneof;
use proptest::strategy::{BoxedStrategy, Strategy};
use proptest::test_runner::{
    Config as RunnerConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use std::alloc::System;
use std::collections::HashMap;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// What a target may allocate above what the process holds when it starts.
const HEADROOM: usize = 1 << 30;

/// Side of the sample run's images.
const SIDE: usize = 8;
/// Classes of the sample run.
const CLASSES: usize = 4;

/// The longest span a mutation removes or duplicates.
const MAX_SPAN: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Settings from the environment.

fn cases() -> u32 {
    match std::env::var("CLEANSE_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .expect("CLEANSE_FUZZ_CASES must be a whole number of cases"),
        Err(_) => 256,
    }
}

fn base_seed() -> u64 {
    match std::env::var("CLEANSE_FUZZ_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .expect("CLEANSE_FUZZ_SEED must be a whole number"),
        Err(_) => 0,
    }
}

fn trace_inputs() -> bool {
    std::env::var("CLEANSE_FUZZ_TRACE").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// One line on the process's stderr, past the test harness's capture (lost on an abort).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

// ---------------------------------------------------------------------------------------------
// The allocation cap.

/// Caps allocation at [`HEADROOM`] above the current use until dropped.
struct AllocationCap;

impl AllocationCap {
    fn new() -> Self {
        ALLOC
            .set_limit(ALLOC.allocated().saturating_add(HEADROOM))
            .expect("a limit above what is allocated");
        AllocationCap
    }
}

impl Drop for AllocationCap {
    fn drop(&mut self) {
        let _ = ALLOC.set_limit(usize::MAX);
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// A unit of input: a byte, or a character of text.
trait Unit: Clone + std::fmt::Debug + 'static {
    /// The unit with bit `bit % 8` flipped (a character that stays a character).
    fn flip(&self, bit: u8) -> Self;
}

impl Unit for u8 {
    fn flip(&self, bit: u8) -> Self {
        self ^ (1u8 << (bit % 8))
    }
}

impl Unit for char {
    fn flip(&self, bit: u8) -> Self {
        char::from_u32(*self as u32 ^ (1u32 << (bit % 8))).unwrap_or(*self)
    }
}

/// One change to a valid sample. Positions are taken modulo the current length.
#[derive(Clone, Debug)]
enum Edit<T> {
    Set(usize, T),
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<T>),
    Remove(usize, usize),
    /// Copies the span at `.0` of length `.1` to position `.2`.
    Duplicate(usize, usize, usize),
}

/// Applies `edits` in order to a copy of `valid`.
fn mutate<T: Unit>(valid: &[T], changes: &[Edit<T>]) -> Vec<T> {
    let mut v = valid.to_vec();
    for e in changes {
        let n = v.len();
        match e {
            Edit::Set(at, x) => {
                if n > 0 {
                    v[at % n] = x.clone();
                }
            }
            Edit::Flip(at, bit) => {
                if n > 0 {
                    let i = at % n;
                    v[i] = v[i].flip(*bit);
                }
            }
            Edit::Truncate(at) => v.truncate(at % (n + 1)),
            Edit::Insert(at, xs) => {
                let tail = v.split_off(at % (n + 1));
                v.extend(xs.iter().cloned());
                v.extend(tail);
            }
            Edit::Remove(at, len) => {
                if n > 0 {
                    let i = at % n;
                    let l = 1 + len % (n - i).min(MAX_SPAN);
                    let tail = v.split_off(i + l);
                    v.truncate(i);
                    v.extend(tail);
                }
            }
            Edit::Duplicate(from, len, to) => {
                if n > 0 {
                    let i = from % n;
                    let l = 1 + len % (n - i).min(MAX_SPAN);
                    let span = v[i..i + l].to_vec();
                    let tail = v.split_off(to % (n + 1));
                    v.extend(span);
                    v.extend(tail);
                }
            }
        }
    }
    v
}

/// Text that readers of numbers, JSON, CSV and PPM headers treat specially.
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "255",
    "3073",
    "65535",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "1000000000",
    "0.5",
    "-0",
    "1e308",
    "1e400",
    "-1e400",
    "NaN",
    "null",
    "true",
    "false",
    "\"\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":",
    ",",
    ":",
    ";",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\n",
    "\r\n",
    "\u{0}",
    "\u{e9}",
    "\u{feff}",
    "Filename",
    "ClassId",
    "P3",
    "P6",
    "#",
    "\"type\":\"patch\",",
    "\"type\":\"blend\",",
    "\"kind\":\"iab\",",
    "\"trigger\":null,",
    "\"architecture\":\"preact-resnet18\",",
];

/// Numbers that readers of binary lengths and counts treat specially (written as `u64` or `u32`).
const NUMBERS: &[u64] = &[
    0,
    1,
    3,
    4,
    7,
    8,
    255,
    256,
    3072,
    3073,
    65535,
    65536,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX - 7,
    u64::MAX,
];

fn byte_insertions() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 1..16),
        2 => proptest::sample::select(TOKENS).prop_map(|t: &str| t.as_bytes().to_vec()),
        1 => proptest::sample::select(NUMBERS).prop_map(|n: u64| n.to_le_bytes().to_vec()),
        1 => proptest::sample::select(NUMBERS).prop_map(|n: u64| (n as u32).to_le_bytes().to_vec()),
    ]
    .boxed()
}

fn char_insertions() -> BoxedStrategy<Vec<char>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<char>(), 1..8),
        2 => proptest::sample::select(TOKENS).prop_map(|t: &str| t.chars().collect::<Vec<char>>()),
    ]
    .boxed()
}

/// One to seven edits with units from `unit` and insertions from `insert`.
fn edits<T: Unit>(
    unit: BoxedStrategy<T>,
    insert: BoxedStrategy<Vec<T>>,
) -> BoxedStrategy<Vec<Edit<T>>> {
    let one = prop_oneof![
        4 => (any::<usize>(), unit).prop_map(|(i, x)| Edit::<T>::Set(i, x)),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::<T>::Flip(i, b)),
        1 => any::<usize>().prop_map(Edit::<T>::Truncate),
        3 => (any::<usize>(), insert).prop_map(|(i, xs)| Edit::<T>::Insert(i, xs)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Edit::<T>::Remove(i, n)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(f, n, t)| Edit::<T>::Duplicate(f, n, t)),
    ];
    proptest::collection::vec(one, 1..8).boxed()
}

// ---------------------------------------------------------------------------------------------
// The runner.

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A runner for `cases` cases whose inputs depend only on the seed, the target and the phase.
fn runner(target: &str, phase: &str, cases: u32) -> TestRunner {
    let config = RunnerConfig {
        cases,
        failure_persistence: None,
        // Enough to cut a failing input down; bounded, since every try may load a model.
        max_shrink_iters: 512,
        ..RunnerConfig::default()
    };
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&base_seed().to_le_bytes());
    seed[8..16].copy_from_slice(&fnv(target).to_le_bytes());
    seed[16..24].copy_from_slice(&fnv(phase).to_le_bytes());
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// The first 200 bytes of `input` in hex, and as text where it is text.
fn describe(input: &[u8]) -> String {
    let head = &input[..input.len().min(200)];
    let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
    let more = if input.len() > head.len() { "..." } else { "" };
    format!(
        "{} bytes: hex {hex}{more}; as text {:?}{more}",
        input.len(),
        String::from_utf8_lossy(head)
    )
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Runs `check` on one input; a panic becomes a failed case naming the target.
fn run_case(target: &str, input: &[u8], check: &dyn Fn(&[u8])) -> Result<(), TestCaseError> {
    if trace_inputs() {
        say(&format!("fuzz {target}: trying {}", describe(input)));
    }
    catch_unwind(AssertUnwindSafe(|| check(input))).map_err(|payload| {
        TestCaseError::fail(format!("{target} panicked: {}", panic_message(&*payload)))
    })
}

/// Runs one phase of a target: `cases` inputs drawn from `strategy` and made into bytes by
/// `input_of`; panics naming the target and the smallest failing input found.
fn run_phase<S: Strategy>(
    target: &str,
    phase: &str,
    cases: u32,
    strategy: S,
    input_of: &dyn Fn(&S::Value) -> Vec<u8>,
    check: &dyn Fn(&[u8]),
) {
    if cases == 0 {
        return;
    }
    let result = runner(target, phase, cases).run(&strategy, |value| {
        run_case(target, &input_of(&value), check)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => panic!(
            "fuzz target `{target}` ({phase}): {reason}; smallest failing input, {}",
            describe(&input_of(&value))
        ),
        Err(TestError::Abort(reason)) => {
            panic!("fuzz target `{target}` ({phase}): aborted: {reason}")
        }
    }
}

/// Fuzzes a reader of bytes: arbitrary byte strings, then mutations of `valid`.
fn fuzz(name: &str, valid: &[u8], check: impl Fn(&[u8])) {
    fuzz_inner(name, valid, None, &check);
}

/// Fuzzes a reader of text: as [`fuzz`], and character-level mutations of `valid` (still UTF-8).
fn fuzz_text(name: &str, valid: &str, check: impl Fn(&[u8])) {
    fuzz_inner(name, valid.as_bytes(), Some(valid), &check);
}

fn fuzz_inner(name: &str, valid: &[u8], text: Option<&str>, check: &dyn Fn(&[u8])) {
    // A quarter arbitrary inputs (text readers: half bytes, half text), the rest mutations of
    // the sample (text readers: half byte-level, half character-level).
    let total = cases();
    let arbitrary = total / 4;
    let mutated = total - arbitrary;
    let (arbitrary_bytes, arbitrary_text, mutated_bytes, mutated_text) = match text {
        Some(_) => (
            arbitrary - arbitrary / 2,
            arbitrary / 2,
            mutated - mutated / 2,
            mutated / 2,
        ),
        None => (arbitrary, 0, mutated, 0),
    };
    say(&format!(
        "fuzz {name}: {total} cases, allocation capped at 1 GiB above {} MiB",
        ALLOC.allocated() >> 20
    ));
    let _cap = AllocationCap::new();
    run_phase(
        name,
        "arbitrary bytes",
        arbitrary_bytes,
        proptest::collection::vec(any::<u8>(), 0..4096),
        &|v: &Vec<u8>| v.clone(),
        check,
    );
    run_phase(
        name,
        "arbitrary text",
        arbitrary_text,
        proptest::collection::vec(any::<char>(), 0..1024),
        &|v: &Vec<char>| v.iter().collect::<String>().into_bytes(),
        check,
    );
    run_phase(
        name,
        "mutated bytes",
        mutated_bytes,
        edits(any::<u8>().boxed(), byte_insertions()),
        &|e: &Vec<Edit<u8>>| mutate(valid, e),
        check,
    );
    if let Some(text) = text {
        let valid_chars: Vec<char> = text.chars().collect();
        run_phase(
            name,
            "mutated text",
            mutated_text,
            edits(any::<char>().boxed(), char_insertions()),
            &|e: &Vec<Edit<char>>| {
                mutate(&valid_chars, e)
                    .into_iter()
                    .collect::<String>()
                    .into_bytes()
            },
            check,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The sample run and in-memory run files.

/// A tiny WaNet run (WaNet has a binary side file) and what fuzzing its files needs.
struct Sample {
    /// Keeps the run directory alive.
    _dir: tempfile::TempDir,
    /// The files of the run directory by name.
    run: HashMap<String, Vec<u8>>,
    /// The files of its checkpoint directory by name.
    checkpoint: HashMap<String, Vec<u8>>,
    /// The name of the optimiser state file in `checkpoint`.
    optimizer_file: String,
    /// The data set's training and test parts.
    train: ImageSet,
    test: ImageSet,
}

fn read_files(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("list the sample run")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                std::fs::read(&p).expect("read a file of the sample run"),
            )
        })
        .collect()
}

impl Sample {
    fn make() -> Sample {
        let mut data = DataSpec::new(DatasetKind::Synthetic, None);
        data.synthetic = SyntheticConfig {
            train_size: 48,
            test_size: 16,
            num_classes: CLASSES,
            side: SIDE,
            seed: 3,
        };
        let mut tc = TrainConfig::supplement(data.clone());
        tc.width = 2;
        tc.epochs = 1;
        tc.batch_size = 16;
        tc.eval_batch_size = 16;
        tc.lr = 0.05;
        tc.schedule = Schedule::cosine(1);
        tc.augment = Augment::NONE;
        let loaded = data.load().expect("synthetic data");
        let mut c = AttackConfig::supplement(AttackKind::Wanet, DatasetKind::Synthetic);
        c.wanet_k = 2;
        let attack = Attack::new(c, &loaded.train).expect("a WaNet attack");
        let mut hooks =
            AttackHooks::new(attack, None, data.kind.allows_flip()).expect("WaNet hooks");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = dir.path().join("run");
        let cpu = select(DeviceChoice::Cpu).expect("the CPU device");
        train_with(&tc, &mut hooks, &out, false, &cpu, &mut SilentObserver)
            .expect("the tiny WaNet run");
        let ckpt = out.join(files::CHECKPOINT_DIR);
        let state = load_state(&ckpt).expect("the sample's checkpoint state");
        Sample {
            run: read_files(&out),
            checkpoint: read_files(&ckpt),
            optimizer_file: state.optimizer_file,
            train: loaded.train,
            test: loaded.test,
            _dir: dir,
        }
    }

    fn run_file(&self, name: &str) -> &[u8] {
        self.run
            .get(name)
            .unwrap_or_else(|| panic!("the sample run has no {name}"))
    }

    fn run_text(&self, name: &str) -> &str {
        std::str::from_utf8(self.run_file(name)).expect("a UTF-8 file")
    }
}

/// A run's files in memory, one of them replaced by the input under test.
struct Files<'a> {
    run: &'a HashMap<String, Vec<u8>>,
    replaced: &'a str,
    bytes: &'a [u8],
}

impl RunFiles for Files<'_> {
    fn read(&self, name: &str) -> cleanse_core::Result<Option<Vec<u8>>> {
        if name == self.replaced {
            return Ok(Some(self.bytes.to_vec()));
        }
        Ok(self.run.get(name).cloned())
    }

    fn path(&self, name: &str) -> PathBuf {
        Path::new("fuzz-run").join(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Valid samples of the formats the run does not write.

fn records_sample() -> Vec<u8> {
    let n = 3;
    let set = ImageSet {
        pixels: (0..n * (records::RECORD_LEN - 1))
            .map(|i| (i * 7 % 256) as u8)
            .collect(),
        labels: vec![0, 3, 9],
        channels: 3,
        height: records::SIDE,
        width: records::SIDE,
        num_classes: 10,
        class_names: (0..10).map(|c| format!("class {c}")).collect(),
    };
    records::encode(&set)
}

const GT_CSV: &str = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n\
00000_00000.ppm;29;30;5;6;24;25;1\n\
00000_00001.ppm;30;30;5;5;25;25;1\r\n\
00000_00002.ppm;31;32;6;6;26;27;42\n";

/// A 5x7 RGB image.
fn tiny_image() -> image::RgbImage {
    image::RgbImage::from_fn(5, 7, |x, y| {
        image::Rgb([(x * 50) as u8, (y * 35) as u8, ((x + y) * 20) as u8])
    })
}

fn png_sample() -> Vec<u8> {
    let img = tiny_image();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), 5, 7, image::ExtendedColorType::Rgb8)
        .expect("encode PNG");
    out
}

fn ppm_sample(encoding: image::codecs::pnm::SampleEncoding) -> Vec<u8> {
    use image::codecs::pnm::{PnmEncoder, PnmSubtype};
    let img = tiny_image();
    let mut out = Vec::new();
    PnmEncoder::new(&mut out)
        .with_subtype(PnmSubtype::Pixmap(encoding))
        .write_image(img.as_raw(), 5, 7, image::ExtendedColorType::Rgb8)
        .expect("encode PPM");
    out
}

fn jpeg_sample() -> Vec<u8> {
    let img = tiny_image();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut out)
        .write_image(img.as_raw(), 5, 7, image::ExtendedColorType::Rgb8)
        .expect("encode JPEG");
    out
}

// ---------------------------------------------------------------------------------------------
// The readers as the fuzzer calls them.

/// An image file at `path` read as image folders and GTSRB read theirs.
fn image_reader(path: PathBuf) -> impl Fn(&[u8]) {
    move |input: &[u8]| {
        std::fs::write(&path, input).expect("write the fuzzed image");
        if let Ok(pixels) = decode_resized(&path, SIDE) {
            assert_eq!(
                pixels.len(),
                3 * SIDE * SIDE,
                "planar RGB at the asked size"
            );
        }
    }
}

/// `model.json` and `model.bpk` through `load_model`; a loaded model must run.
fn model_reader<'a>(
    run: &'a HashMap<String, Vec<u8>>,
    replaced: &'a str,
    device: &'a Device,
) -> impl Fn(&[u8]) + 'a {
    move |input: &[u8]| {
        let files = Files {
            run,
            replaced,
            bytes: input,
        };
        if let Ok((config, model)) = load_model(&files, device) {
            let logits = model.forward(Tensor::<4>::zeros([1, 3, SIDE, SIDE], device));
            assert_eq!(logits.dims(), [1, config.num_classes]);
            let _ = logits.into_data();
        }
    }
}

/// `attack.json` and `warp_grid.f32` through `load_attack`; an attack that fits the data (as the
/// suspect loader checks) must stamp images and measure an ASR.
fn attack_reader<'a>(
    sample: &'a Sample,
    model: &'a Classifier,
    replaced: &'a str,
    device: &'a Device,
) -> impl Fn(&[u8]) + 'a {
    move |input: &[u8]| {
        let files = Files {
            run: &sample.run,
            replaced,
            bytes: input,
        };
        let Ok(Some((attack, backdoor))) = load_attack(&files, device) else {
            return;
        };
        if attack.image_shape != [3, SIDE, SIDE] || attack.num_classes != CLASSES {
            return;
        }
        let x = backdoor.apply(Tensor::<4>::zeros([2, 3, SIDE, SIDE], device));
        assert_eq!(x.dims(), [2, 3, SIDE, SIDE]);
        let _ = x.into_data();
        if attack.trigger.is_some() {
            let _ = attack_success_rate(model, &attack, &sample.test, 64, device);
        }
    }
}

/// The SGD state through `Sgd::load_bytes`; loaded buffers must take a step.
fn sgd_reader<'a>(template: &'a Classifier, ad: &'a Device) -> impl Fn(&[u8]) + 'a {
    move |input: &[u8]| {
        let mut sgd = Sgd::new(SgdConfig::default());
        if sgd
            .load_bytes(Path::new("checkpoint/sgd-e1.bin"), input, ad)
            .is_err()
        {
            return;
        }
        let model = template.clone();
        // What `checkpoint::load_with_optimizer` checks before a resumed run steps.
        if sgd.check_sizes(&param_sizes(&model)).is_some() {
            return;
        }
        let logits = model.forward(Tensor::<4>::zeros([1, 3, SIDE, SIDE], ad));
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), ad);
        let grads = GradientsParams::from_grads(cross_entropy(logits, labels).backward(), &model);
        let _stepped = sgd.step(0.01, model, grads);
        let _ = sgd.to_bytes();
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_reader_of_outside_bytes_gives_a_value_or_an_error() {
    let sample = Sample::make();
    let device = Device::flex();
    let tmp = tempfile::tempdir().expect("a temporary directory");

    fuzz(
        "CIFAR/GTSRB records",
        &records_sample(),
        |input: &[u8]| {
            for classes in [10, 43] {
                let path = Path::new("data_batch_1.bin");
                if let Ok((pixels, labels)) = records::parse(path, input, classes) {
                    assert_eq!(pixels.len(), labels.len() * (records::RECORD_LEN - 1));
                    assert!(labels.iter().all(|&l| usize::from(l) < classes));
                }
            }
        },
    );

    fuzz_text("GTSRB GT CSV", GT_CSV, |input: &[u8]| {
        // The reader reads the file as UTF-8 first; other bytes are an error before parsing.
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = parse_gt_csv(Path::new("GT-00001.csv"), text);
        }
    });

    fuzz(
        "PNG image",
        &png_sample(),
        image_reader(tmp.path().join("fuzz.png")),
    );
    fuzz(
        "PPM image (binary)",
        &ppm_sample(image::codecs::pnm::SampleEncoding::Binary),
        image_reader(tmp.path().join("fuzz.ppm")),
    );
    fuzz(
        "PPM image (ASCII)",
        &ppm_sample(image::codecs::pnm::SampleEncoding::Ascii),
        image_reader(tmp.path().join("fuzz-ascii.ppm")),
    );
    fuzz(
        "JPEG image",
        &jpeg_sample(),
        image_reader(tmp.path().join("fuzz.jpg")),
    );

    fuzz_text(
        "report.json",
        sample.run_text(files::REPORT),
        |input: &[u8]| {
            if let Ok(text) = std::str::from_utf8(input) {
                let _ = Report::from_json("report.json", text);
            }
            // How a resumed run reads its report.
            let _ = serde_json::from_slice::<Report>(input);
        },
    );

    fuzz_text(
        "model.json",
        sample.run_text(files::MODEL_CONFIG),
        model_reader(&sample.run, files::MODEL_CONFIG, &device),
    );
    fuzz(
        "model.bpk",
        sample.run_file(files::MODEL),
        model_reader(&sample.run, files::MODEL, &device),
    );

    let (config, model) = load_model(
        &Files {
            run: &sample.run,
            replaced: "",
            bytes: &[],
        },
        &device,
    )
    .expect("the sample's model");
    fuzz_text(
        "attack.json",
        sample.run_text(attack_files::ATTACK),
        attack_reader(&sample, &model, attack_files::ATTACK, &device),
    );
    fuzz(
        "warp_grid.f32",
        sample.run_file(attack_files::WARP_GRID),
        attack_reader(&sample, &model, attack_files::WARP_GRID, &device),
    );

    let ckpt = tmp.path().join("checkpoint");
    std::fs::create_dir_all(&ckpt).expect("a checkpoint directory");
    let state = std::str::from_utf8(
        sample
            .checkpoint
            .get("state.json")
            .expect("the sample's checkpoint state"),
    )
    .expect("UTF-8 state");
    fuzz_text("checkpoint state.json", state, |input: &[u8]| {
        std::fs::write(ckpt.join("state.json"), input).expect("write the fuzzed state");
        let _ = load_state(&ckpt);
    });

    let split_path = tmp.path().join(files::SPLIT);
    fuzz_text(
        "split.json",
        sample.run_text(files::SPLIT),
        |input: &[u8]| {
            std::fs::write(&split_path, input).expect("write the fuzzed split file");
            if let Ok(split) = read_json::<SplitFile>(&split_path) {
                // As the suspect loader and `load_holdout` cut the defender's images.
                if let Ok(held) = split.held_out_of(&sample.train, &split_path) {
                    assert_eq!(held.image_len(), sample.train.image_len());
                }
            }
        },
    );

    let ad = Device::flex().autodiff();
    let template = config.init_seeded(&ad, 0);
    fuzz(
        "SGD state",
        sample
            .checkpoint
            .get(&sample.optimizer_file)
            .expect("the sample's optimiser state"),
        sgd_reader(&template, &ad),
    );

    // Checkpoints from PyTorch (`cleanse import`): torch.save's zip and legacy formats and
    // safetensors, read and, when they read, imported and run.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch");
    for (name, file) in [
        ("torch.save zip checkpoint", "preact-bcu.pth"),
        ("torch.save legacy checkpoint", "preact-bb-legacy.pt"),
        ("safetensors checkpoint", "preact-bb.safetensors"),
    ] {
        let valid = std::fs::read(fixtures.join(file)).expect("a torch fixture");
        let path = tmp.path().join(file);
        fuzz(name, &valid, checkpoint_reader(path, &device));
    }
}

/// A PyTorch or safetensors checkpoint through `cleanse import`'s reader and converter; a model
/// that imports must run.
fn checkpoint_reader(path: PathBuf, device: &Device) -> impl Fn(&[u8]) + '_ {
    use cleanse_core::interop::files::{ReadOptions, read_state_dict};
    use cleanse_core::interop::{ImportOptions, import};
    move |input: &[u8]| {
        std::fs::write(&path, input).expect("write the input");
        let Ok(dict) = read_state_dict(&path, &ReadOptions::default()) else {
            return;
        };
        let options = ImportOptions {
            architecture: None,
            naming: None,
            width: None,
            num_classes: None,
            normalization: cleanse_core::model::Normalization::cifar10(),
        };
        if let Ok(imported) = import(&dict, &options, &path) {
            let logits = imported
                .model
                .forward(Tensor::<4>::zeros([1, 3, SIDE, SIDE], device));
            assert_eq!(logits.dims(), [1, imported.config.num_classes]);
        }
    }
}
