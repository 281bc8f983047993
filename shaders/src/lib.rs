//! The hand-written WGSL kernels of cleanse (trigger stamping, blending, the SIG signal, the
//! bilinear warp, the distillation loss), as source constants.
//!
//! Conventions shared by every kernel, which the launcher in `cleanse-core` relies on:
//! - the entry point is `main`, `@workgroup_size(256, 1, 1)`, one invocation per output element,
//!   with the 1-D index folded over `x` and `y` (`gid.x + gid.y * num_workgroups.x * 256`);
//! - bindings are, in order, the input tensors, the output, then `info: array<u32>` whose first
//!   word is the number of output elements; floats in `info` are passed as their bit patterns;
//! - every storage buffer is `read_write` (tensors may share one device buffer), and each kernel
//!   guards its index itself (bounds checks are off in the wgpu runtime).

/// One kernel: its name, WGSL source and binding layout.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// Input tensor bindings before the output.
    pub inputs: usize,
}

/// Invocations per workgroup along `x`.
pub const WORKGROUP: u32 = 256;

/// Patch stamping (BadNets, LC).
pub const PATCH_STAMP: Kernel = Kernel {
    name: "patch_stamp",
    source: include_str!("wgsl/patch_stamp.wgsl"),
    inputs: 3,
};

/// Alpha blending (Blended).
pub const BLEND: Kernel = Kernel {
    name: "blend",
    source: include_str!("wgsl/blend.wgsl"),
    inputs: 2,
};

/// The SIG signal.
pub const SIG: Kernel = Kernel {
    name: "sig",
    source: include_str!("wgsl/sig.wgsl"),
    inputs: 1,
};

/// Bilinear grid sampling (WaNet).
pub const GRID_SAMPLE: Kernel = Kernel {
    name: "grid_sample",
    source: include_str!("wgsl/grid_sample.wgsl"),
    inputs: 2,
};

/// The cleanser's temperature-softmax KL loss with its gradient (forward and backward fused).
pub const KD_KL: Kernel = Kernel {
    name: "kd_kl",
    source: include_str!("wgsl/kd_kl.wgsl"),
    inputs: 2,
};

/// Every kernel this crate ships.
pub const KERNELS: &[Kernel] = &[PATCH_STAMP, BLEND, SIG, GRID_SAMPLE, KD_KL];

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates a kernel with naga and checks the launcher's conventions.
    fn validate(k: &Kernel) -> Result<(), String> {
        let src = k.source;
        let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))?;
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == "main")
            .ok_or("no `main` entry point")?;
        if ep.stage != naga::ShaderStage::Compute {
            return Err("`main` is not a compute shader".into());
        }
        if ep.workgroup_size != [WORKGROUP, 1, 1] {
            return Err(format!("workgroup size {:?}", ep.workgroup_size));
        }
        if src.contains("{{") {
            return Err("`{{` would be eaten by the template filler".into());
        }
        let bindings = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.binding.is_some())
            .count();
        if bindings != k.inputs + 2 {
            return Err(format!(
                "{bindings} bindings; expected {} inputs, the output and info",
                k.inputs
            ));
        }
        for (_, v) in module.global_variables.iter() {
            if let naga::AddressSpace::Storage { access } = v.space
                && !access.contains(naga::StorageAccess::STORE)
            {
                return Err(format!(
                    "binding `{}` must be read_write",
                    v.name.as_deref().unwrap_or("?")
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn every_kernel_is_valid_wgsl_with_the_launch_conventions() {
        assert_eq!(KERNELS.len(), 5);
        for k in KERNELS {
            if let Err(e) = validate(k) {
                panic!("{}: {e}", k.name);
            }
        }
    }

    #[test]
    fn a_broken_kernel_fails_validation() {
        let broken = Kernel {
            name: "broken",
            source: "@compute @workgroup_size(256, 1, 1) fn main() { let a: f32 = 1u; }",
            inputs: 0,
        };
        assert!(validate(&broken).is_err());
        let wrong_access = Kernel {
            name: "read_only",
            source: "@group(0) @binding(0) var<storage, read> x: array<f32>;\n@group(0) @binding(1) var<storage, read_write> out: array<f32>;\n@group(0) @binding(2) var<storage, read_write> info: array<u32>;\n@compute @workgroup_size(256, 1, 1) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < info[0]) { out[g.x] = x[g.x]; } }",
            inputs: 1,
        };
        let e = validate(&wrong_access).expect_err("read-only input");
        assert!(e.contains("read_write"), "{e}");
    }
}
