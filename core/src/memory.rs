//! The memory a training run needs, estimated before it starts, and the memory the process can
//! get: a run that cannot fit is refused with the setting to lower, instead of ending in an
//! allocation failure, which aborts the process without a word about why.
//!
//! The estimate is of the CPU backend's resident memory at the peak of a training step, from
//! measurements of `cleanse train` (release build, synthetic 32x32 data, one epoch, `/usr/bin/time`
//! peak resident size): at width 16 and 64, batches of 64 and 256, every image of a batch adds
//! 24 floats per unit of width per pixel (what autodiff keeps for the backward pass, the
//! convolutions' column buffers and the gradients in flight; 6.2 MB per 32x32 image at width
//! 64, 1.5 MB at width 16), over a base of 34 MB at width 16 (the program, which is running when
//! the check is made, so it is not counted again). Under an address-space limit (`ulimit -v`)
//! each further CPU thread also reserves an allocator arena (64 MiB on glibc): a width-16 run
//! with batches of 128 ran under limits that left 236 MiB beyond what was mapped at the check on
//! one thread (not 212), 334 MiB on two (not 285).
//!
//! The estimate is a floor, not a promise: the data set (held as bytes, 3 KB per 32x32 image),
//! the evaluation's batches and a method's own buffers come on top. It catches the settings
//! that cannot work (a batch or a width far beyond the machine) before any work starts.

use crate::model::{Architecture, ModelConfig, Stem};
use crate::{Error, Result};

/// Floats an image of a training batch keeps per unit of width per pixel (measured; see the
/// module's notes).
const ACTIVATION_FLOATS: u64 = 24;

/// Address space each CPU thread reserves for its allocator arena (glibc's 64 MiB heaps).
const ARENA_BYTES: u64 = 64 << 20;

/// The threads whose arenas the estimate counts.
const MAX_ARENAS: usize = 4;

/// One part of a run's memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// What it is, for the message.
    pub what: String,
    pub bytes: u64,
}

/// The memory a run needs, part by part.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub parts: Vec<Part>,
}

impl Need {
    /// The memory of a training step of a `model` on batches of `batch` images `side` pixels
    /// square (the ImageNet stem's stages see a quarter of the side), with `copies` copies of the weights (the weights, their gradients and the
    /// optimiser's state; a defense's teacher or masks add more).
    pub fn training(model: &ModelConfig, side: usize, batch: usize, copies: usize) -> Need {
        let params = parameters(model);
        let w = model.width as u64;
        let stem = model.architecture.stem();
        let stage_side = side.div_ceil(stem.reduction()) as u64;
        let mut floats = ACTIVATION_FLOATS * w * stage_side * stage_side;
        if stem == Stem::Imagenet {
            // Counted, not measured: at half the side, the stem convolution's column buffer
            // (3 x 7 x 7 per pixel) and about six floats per channel (its output, the BN's and
            // ReLU's, their gradients).
            let half = side.div_ceil(2) as u64;
            floats += (6 * w + 3 * 49) * half * half;
        }
        let per_image = floats * 4;
        Need {
            parts: vec![
                Part {
                    what: format!(
                        "{copies} copies of the {:.1} M weights (model, gradients, optimiser)",
                        params as f64 / 1e6
                    ),
                    bytes: params * 4 * copies as u64,
                },
                Part {
                    what: format!(
                        "a training batch of {batch} images of {side}x{side} at width {}",
                        model.width
                    ),
                    bytes: per_image.saturating_mul(batch as u64),
                },
            ],
        }
    }

    /// All parts together.
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.bytes))
    }

    /// Refuses the run when it needs more than `limit` allows (with `threads` CPU threads),
    /// naming the settings in `lower` (e.g. `--batch-size or --width`) as the way out.
    pub fn check_against(&self, limit: &Limit, threads: usize, lower: &str) -> Result<()> {
        let mut need = self.total();
        if limit.address_space {
            // glibc makes new arenas while there is room and shares old ones after: the first
            // few threads' arenas beyond the main one are what a tight limit meets.
            let arenas = threads.min(MAX_ARENAS).saturating_sub(1) as u64;
            need = need.saturating_add(ARENA_BYTES * arenas);
        }
        if need <= limit.bytes {
            return Ok(());
        }
        let largest = self
            .parts
            .iter()
            .max_by_key(|p| p.bytes)
            .expect("a need has parts");
        Err(Error::config(
            "memory",
            format!(
                "the run needs at least {} ({}: {}) and this process can get {} ({}); lower {lower}",
                gib(need),
                largest.what,
                gib(largest.bytes),
                gib(limit.bytes),
                limit.source
            ),
        ))
    }

    /// [`Need::check_against`] the limit this process has now (none known: no check).
    pub fn check(&self, threads: usize, lower: &str) -> Result<()> {
        match Limit::now() {
            Some(limit) => self.check_against(&limit, threads, lower),
            None => Ok(()),
        }
    }
}

/// `bytes` for a message: GiB with one decimal under 10, whole GiB above, MiB under 1 GiB.
pub fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 10.0 {
        format!("{g:.0} GiB")
    } else if g >= 1.0 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The trainable parameters of `model`: its convolutions, batch norms and classifier (the
/// layouts of `model::resnet` and `model::preact_resnet`, which a test compares with).
pub fn parameters(model: &ModelConfig) -> u64 {
    let w = model.width as u64;
    // The stem, then four stages of two blocks; a stage after the first halves the image,
    // doubles the channels and has a 1x1 shortcut convolution.
    let k = model.architecture.stem_kernel() as u64;
    let mut convs = 3 * k * k * w;
    let mut norms_channels = match model.architecture {
        Architecture::Resnet18 | Architecture::Resnet18Imagenet => w,
        Architecture::PreactResnet18 => 0,
    };
    let mut c_in = w;
    for stage in 0..4u32 {
        let c = w << stage;
        convs += 9 * c_in * c + 3 * 9 * c * c;
        norms_channels += match model.architecture {
            // After every convolution.
            Architecture::Resnet18 | Architecture::Resnet18Imagenet => 4 * c,
            // Before each block's two convolutions.
            Architecture::PreactResnet18 => c_in + 3 * c,
        };
        if c_in != c {
            convs += c_in * c;
            if model.architecture != Architecture::PreactResnet18 {
                norms_channels += c;
            }
        }
        c_in = c;
    }
    let classes = model.num_classes as u64;
    convs + 2 * norms_channels + c_in * classes + classes
}

/// The most memory this process can get, and what sets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub bytes: u64,
    /// For the message: `ulimit -v`, the cgroup's `memory.max`, or the machine's available memory.
    pub source: String,
    /// The limit counts address space (reservations too), not resident memory.
    pub address_space: bool,
}

impl Limit {
    /// The tightest of: the address-space limit less what is mapped already, the cgroup's
    /// memory limit less its use, the machine's available memory. `None` where none can be read
    /// (the browser, other systems).
    pub fn now() -> Option<Limit> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut found = Vec::new();
        if let (Some(limits), Some(status)) = (read("/proc/self/limits"), read("/proc/self/status"))
            && let Some(l) = address_space_left(&limits, &status)
        {
            found.push(l);
        }
        if let Some(l) = cgroup_left(read) {
            found.push(l);
        }
        if let Some(l) = read("/proc/meminfo").and_then(|m| available(&m)) {
            found.push(l);
        }
        found.into_iter().min_by_key(|l| l.bytes)
    }
}

/// The number after `key` in `text` (a `/proc` file's `Key: value kB` lines), in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// From `/proc/self/limits` and `/proc/self/status`: the address space left under `ulimit -v`.
fn address_space_left(limits: &str, status: &str) -> Option<Limit> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft: u64 = line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?; // "unlimited" does not parse: no limit
    let mapped = kib_field(status, "VmSize:")?;
    Some(Limit {
        bytes: soft.saturating_sub(mapped),
        source: format!(
            "the address-space limit (ulimit -v) of {} less the {} mapped already",
            gib(soft),
            gib(mapped)
        ),
        address_space: true,
    })
}

/// From `/proc/meminfo`: the memory the machine can give without swapping.
fn available(meminfo: &str) -> Option<Limit> {
    let bytes = kib_field(meminfo, "MemAvailable:")?;
    Some(Limit {
        bytes,
        source: "the machine's available memory".into(),
        address_space: false,
    })
}

/// The memory left in this process's cgroup (v2) and its ancestors under their `memory.max`:
/// for each limited level, the limit less what is used there other than reclaimable file cache.
fn cgroup_left(read: impl Fn(&str) -> Option<String>) -> Option<Limit> {
    let own = read("/proc/self/cgroup")?;
    let mut path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .to_string();
    let mut tightest: Option<Limit> = None;
    loop {
        let dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
        // "max" does not parse: no limit at this level.
        let max = read(&format!("{dir}/memory.max")).and_then(|m| m.trim().parse::<u64>().ok());
        if let Some(max) = max {
            let current: u64 = read(&format!("{dir}/memory.current"))
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(0);
            let cache = read(&format!("{dir}/memory.stat"))
                .and_then(|stat| {
                    stat.lines()
                        .find_map(|l| l.strip_prefix("file ")?.trim().parse::<u64>().ok())
                })
                .unwrap_or(0);
            let used = current.saturating_sub(cache);
            let left = Limit {
                bytes: max.saturating_sub(used),
                source: format!(
                    "the cgroup's memory.max of {} less the {} in use",
                    gib(max),
                    gib(used)
                ),
                address_space: false,
            };
            if tightest.as_ref().is_none_or(|t| left.bytes < t.bytes) {
                tightest = Some(left);
            }
        }
        if path.len() <= 1 {
            return tightest;
        }
        // Up to the parent ("/job/42" -> "/job" -> "/").
        let cut = path.rfind('/').unwrap_or(0).max(1);
        path.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Normalization;

    fn model(architecture: Architecture, width: usize, num_classes: usize) -> ModelConfig {
        ModelConfig {
            architecture,
            width,
            num_classes,
            normalization: Normalization::cifar10(),
        }
    }

    #[test]
    fn parameters_are_the_models_own() {
        let device = burn::prelude::Device::flex();
        for arch in Architecture::ALL {
            for (width, classes) in [(4, 10), (16, 43), (64, 10)] {
                let m = model(arch, width, classes);
                assert_eq!(
                    parameters(&m),
                    m.init(&device).num_trainable_params() as u64,
                    "{arch:?} width {width}"
                );
            }
        }
    }

    #[test]
    fn the_estimate_grows_with_batch_and_width_and_meets_the_measurements() {
        let small = Need::training(&model(Architecture::Resnet18, 16, 10), 32, 128, 3);
        // Measured: 230 MB resident at width 16, batch 128, of which 34 MB before training.
        let mb = small.total() as f64 / 1e6;
        assert!((180.0..230.0).contains(&mb), "{mb} MB");
        let wide = Need::training(&model(Architecture::Resnet18, 64, 10), 32, 256, 3);
        // Measured: 1.75 GB resident at width 64, batch 256, of which 0.12 GB before training.
        let gb = wide.total() as f64 / 1e9;
        assert!((1.55..1.8).contains(&gb), "{gb} GB");
    }

    #[test]
    fn a_run_beyond_the_limit_is_refused_naming_the_setting() {
        let need = Need::training(&model(Architecture::Resnet18, 64, 10), 32, 4096, 3);
        let limit = Limit {
            bytes: 8 << 30,
            source: "the machine's available memory".into(),
            address_space: false,
        };
        let e = need
            .check_against(&limit, 2, "--batch-size or --width")
            .expect_err("26 GB in 8")
            .to_string();
        assert!(e.contains("a training batch of 4096 images"), "{e}");
        assert!(
            e.contains("8.0 GiB (the machine's available memory)"),
            "{e}"
        );
        assert!(e.contains("lower --batch-size or --width"), "{e}");
        let fits = Need::training(&model(Architecture::Resnet18, 16, 10), 32, 128, 3);
        fits.check_against(&limit, 2, "--batch-size").expect("fits");
        // Under an address-space limit the threads' arenas count too.
        let tight = Limit {
            bytes: 240 << 20,
            source: "ulimit -v".into(),
            address_space: true,
        };
        fits.check_against(&tight, 1, "x")
            .expect("fits on one thread");
        assert!(fits.check_against(&tight, 2, "x").is_err());
    }

    #[test]
    fn limits_are_read_from_the_proc_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max address space         419430400            unlimited            bytes     \n";
        let status = "Name:\tcleanse\nVmPeak:\t  200000 kB\nVmSize:\t  102400 kB\n";
        let l = address_space_left(limits, status).expect("limited");
        assert_eq!(l.bytes, 419_430_400 - 102_400 * 1024);
        assert!(l.address_space && l.source.contains("ulimit -v"));
        let unlimited = limits.replace("419430400", "unlimited");
        assert_eq!(address_space_left(&unlimited, status), None);
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(available(meminfo).expect("read").bytes, 20_000_000 * 1024);
        // The job's own limit, its file cache not counted as used.
        let files = |p: &str| -> Option<String> {
            match p {
                "/proc/self/cgroup" => Some("0::/job/42\n".into()),
                "/sys/fs/cgroup/job/42/memory.max" => Some("1073741824\n".into()),
                "/sys/fs/cgroup/job/42/memory.current" => Some("83741824\n".into()),
                "/sys/fs/cgroup/job/42/memory.stat" => {
                    Some("anon 73741824\nfile 10000000\nkernel 0\n".into())
                }
                _ => None,
            }
        };
        assert_eq!(cgroup_left(files).expect("cgroup").bytes, 1_000_000_000);
        // No limit on the job, one on its parent.
        let parent = |p: &str| match p {
            "/sys/fs/cgroup/job/42/memory.max" => Some("max\n".to_string()),
            "/sys/fs/cgroup/job/memory.max" => Some("536870912\n".to_string()),
            "/sys/fs/cgroup/job/memory.current" => Some("36870912\n".to_string()),
            other => files(other),
        };
        assert_eq!(cgroup_left(parent).expect("parent").bytes, 500_000_000);
        let unlimited = |p: &str| match p {
            "/sys/fs/cgroup/job/42/memory.max" => Some("max\n".to_string()),
            other => files(other),
        };
        assert_eq!(cgroup_left(unlimited), None);
        // This machine has some limit it can read.
        assert!(Limit::now().is_some_and(|l| l.bytes > 0));
    }
}
