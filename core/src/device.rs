//! Picking the compute device: one function, [`select`], decides for every command.

use crate::precision::Precision;
use crate::{Error, Result};
use burn::prelude::Device;
use burn::tensor::DeviceKind;
use serde::{Deserialize, Serialize};

/// What the user asked for (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// wgpu on a hardware GPU adapter when there is one, else the CPU backend.
    #[default]
    Auto,
    /// wgpu on whatever adapter it finds (a software Vulkan driver included).
    Wgpu,
    /// Burn's pure-Rust CPU backend (`flex`).
    Cpu,
    /// Burn's CUDA backend on the first NVIDIA GPU (a build with the `cuda` feature:
    /// `scripts/setup-cuda.sh`).
    Cuda,
}

/// The backend that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Wgpu,
    Flex,
    Cuda,
}

/// One graphics adapter as wgpu reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub name: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// Vulkan, Metal, Dx12, Gl, BrowserWebGpu.
    pub api: String,
    pub driver: String,
}

impl AdapterInfo {
    /// Whether this is real GPU hardware (not a software rasteriser such as lavapipe).
    pub fn is_hardware(&self) -> bool {
        matches!(
            self.device_type.as_str(),
            "DiscreteGpu" | "IntegratedGpu" | "VirtualGpu"
        )
    }
}

/// The device a run uses, with what the report records about it.
#[derive(Clone, Debug)]
pub struct Selected {
    pub device: Device,
    pub info: DeviceInfo,
}

/// What a report records about the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub requested: DeviceChoice,
    pub backend: Backend,
    /// The wgpu adapter, for the wgpu backend.
    pub adapter: Option<AdapterInfo>,
    /// Threads of the CPU pool (flex backend and data loading).
    pub cpu_threads: usize,
    /// The training arithmetic (`--precision`; reports before it existed: f32).
    #[serde(default)]
    pub precision: Precision,
}

impl Selected {
    /// The device training in `precision`, when it can: the CPU backend computes in f32 only;
    /// WGSL and Vulkan have no bf16 arithmetic; f16 needs the adapter's `shader-f16`. The error
    /// names `--precision` and why.
    pub fn with_precision(mut self, precision: Precision) -> Result<Selected> {
        if let Some(dtype) = precision.reduced() {
            let refuse = |reason: String| {
                Err(Error::config(
                    "precision",
                    format!("`{}`: {reason}", precision.name()),
                ))
            };
            match self.info.backend {
                Backend::Flex => {
                    return refuse(
                        "the CPU backend computes in f32 (its kernels are f32; reduced precision \
                         is for GPUs): use --precision f32, or --device wgpu or cuda"
                            .into(),
                    );
                }
                Backend::Wgpu if precision == Precision::Bf16 => {
                    return refuse(
                        "WGSL and Vulkan have no bf16 arithmetic: use f16 on wgpu, or bf16 with \
                         --device cuda"
                            .into(),
                    );
                }
                _ if !self.device.supports_dtype(dtype) => {
                    let adapter = match &self.info.adapter {
                        Some(a) => format!(" ({} offers no `shader-f16`)", a.name),
                        None => String::new(),
                    };
                    return refuse(format!(
                        "this device has no {} arithmetic{adapter}",
                        precision.name()
                    ));
                }
                _ => {}
            }
        }
        self.info.precision = precision;
        Ok(self)
    }

    /// The training arithmetic.
    pub fn precision(&self) -> Precision {
        self.info.precision
    }
}

/// Every adapter wgpu can open on this machine, hardware first.
pub fn list_adapters() -> Vec<AdapterInfo> {
    let instance = wgpu::Instance::default();
    let adapters =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let mut out: Vec<AdapterInfo> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            AdapterInfo {
                name: i.name,
                device_type: format!("{:?}", i.device_type),
                api: format!("{:?}", i.backend),
                driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
            }
        })
        .collect();
    out.sort_by_key(|a| !a.is_hardware());
    out
}

const INSTALL_HINT: &str = "install a GPU driver with Vulkan support, or Mesa's software Vulkan \
     driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`), or use `--device cpu`";

/// Chooses and opens the device for `choice`. `auto` picks wgpu only on hardware adapters.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    let cpu_threads = rayon::current_num_threads();
    let flex = || Selected {
        device: Device::flex(),
        info: DeviceInfo {
            requested: choice,
            backend: Backend::Flex,
            adapter: None,
            cpu_threads,
            precision: Precision::F32,
        },
    };
    let wgpu_on = |adapter: AdapterInfo| {
        let kind = match adapter.device_type.as_str() {
            "Cpu" => DeviceKind::Cpu,
            _ => DeviceKind::DefaultDevice,
        };
        Selected {
            device: Device::wgpu(kind),
            info: DeviceInfo {
                requested: choice,
                backend: Backend::Wgpu,
                adapter: Some(adapter),
                cpu_threads,
                precision: Precision::F32,
            },
        }
    };
    match choice {
        DeviceChoice::Cpu => Ok(flex()),
        DeviceChoice::Wgpu => {
            let adapters = list_adapters();
            let Some(first) = adapters.into_iter().next() else {
                return Err(Error::Device {
                    device: "wgpu".into(),
                    reason: format!("no graphics adapter found; {INSTALL_HINT}"),
                });
            };
            Ok(wgpu_on(first))
        }
        DeviceChoice::Cuda => cuda(choice, cpu_threads),
        DeviceChoice::Auto => match list_adapters().into_iter().find(AdapterInfo::is_hardware) {
            Some(a) => Ok(wgpu_on(a)),
            None => Ok(flex()),
        },
    }
}

/// The first CUDA device, in a build with the `cuda` feature. The CUDA runtime loads the NVIDIA
/// driver's `libcuda.so.1` on first use and panics in its own thread when it is missing: looked
/// for first in the dynamic linker's usual folders and `LD_LIBRARY_PATH`, for an error instead.
#[cfg(feature = "cuda")]
fn cuda(choice: DeviceChoice, cpu_threads: usize) -> Result<Selected> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/compat",
            "/usr/lib/wsl/lib",
        ]
        .map(std::path::PathBuf::from),
    );
    let found = dirs
        .iter()
        .any(|d| d.join("libcuda.so.1").exists() || d.join("libcuda.so").exists());
    if !found {
        return Err(Error::Device {
            device: "cuda".into(),
            reason: "the NVIDIA driver's libcuda.so.1 is not in LD_LIBRARY_PATH or the usual \
                     library folders: install the driver, or use --device wgpu or cpu"
                .into(),
        });
    }
    Ok(Selected {
        device: Device::cuda(0),
        info: DeviceInfo {
            requested: choice,
            backend: Backend::Cuda,
            adapter: None,
            cpu_threads,
            precision: Precision::F32,
        },
    })
}

/// Without the `cuda` feature: an error saying how to get it.
#[cfg(not(feature = "cuda"))]
fn cuda(_choice: DeviceChoice, _cpu_threads: usize) -> Result<Selected> {
    Err(Error::Device {
        device: "cuda".into(),
        reason: "this build has no CUDA backend: build with `--features cuda` after \
                 `bash scripts/setup-cuda.sh` (or use --device wgpu)"
            .into(),
    })
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(Error::config(
                "device",
                format!("`{s}`: expected auto, wgpu, cpu or cuda"),
            )),
        }
    }
}
