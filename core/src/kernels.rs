//! Launching the hand-written WGSL kernels of `cleanse-shaders` on Burn's wgpu tensors.
//!
//! Each operation is a Burn backend extension implemented for the CubeCL backend, so it runs
//! inside Burn's fusion stream on the tensors' own device buffers. The public functions take
//! and return ordinary tensors; they must only be called where [`runs_wgsl`] says they run; the
//! callers fall back to the plain-tensor twins elsewhere. The trigger kernels are not
//! differentiable: they take the values of autodiff tensors and return constants (triggers act
//! on data). The distillation-loss kernel computes the loss and its gradient in one pass, and
//! [`kd_loss`] hands that gradient to autodiff.

use burn::backend::wgpu::{
    CubeBackend, CubeDim, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension, tensor::FloatTensor};
use burn::prelude::*;
use burn::tensor::{DType, Shape};
use cleanse_shaders::{Kernel, WORKGROUP};
use cubecl::CubeCount;
use cubecl::prelude::KernelId;
use cubecl::server::KernelArguments;

/// Whether the WGSL kernels run on `device`: a wgpu device whose runtime compiles WGSL. The CPU
/// and CUDA take the twins, and so does a wgpu device that compiles SPIR-V (a build with the
/// `spirv` feature on a Vulkan adapter that supports it: CubeCL refuses a WGSL source there and
/// fails the kernel's tensors with it). The runtime names its compiler (`wgpu<wgsl>`,
/// `wgpu<spirv>`, `wgpu<msl>`), read once the device's runtime is up.
pub fn runs_wgsl(device: &Device) -> bool {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Cube(d @ cubecl::Device::Wgpu(_)) => d.client().name() == "wgpu<wgsl>",
        _ => false,
    }
}

/// A kernel source for CubeCL, keyed by the kernel's name and a hash of its text.
#[derive(Clone, Debug)]
struct Wgsl(Kernel);

impl KernelSource for Wgsl {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.0.source)
    }

    fn id(&self) -> KernelId {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.name.hash(&mut h);
        self.0.source.hash(&mut h);
        KernelId::new::<Self>().info(h.finish())
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Launches `kernel` with `inputs`, a fresh output of `out_shape`, and `info` (whose first word
/// must be the output's element count).
fn launch(kernel: Kernel, inputs: Vec<CubeTensor>, out_shape: Shape, info: Vec<u32>) -> CubeTensor {
    let inputs: Vec<CubeTensor> = inputs.into_iter().map(into_contiguous).collect();
    let first = &inputs[0];
    assert_eq!(first.dtype, DType::F32, "WGSL kernels take f32 tensors");
    let client = first.client.clone();
    let device = first.device.clone();
    let n = out_shape.num_elements();
    let out = CubeTensor::new_contiguous(
        client.clone(),
        device,
        out_shape,
        client.empty(n.max(1) * 4),
        DType::F32,
    );
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_le_bytes()).collect();
    let info = client.create_from_slice(&bytes);
    let groups = (n as u32).div_ceil(WORKGROUP).max(1);
    let (gx, gy) = if groups <= 65_535 {
        (groups, 1)
    } else {
        (65_535, groups.div_ceil(65_535))
    };
    let mut buffers: Vec<_> = inputs.iter().map(|t| t.handle.clone().binding()).collect();
    buffers.push(out.handle.clone().binding());
    buffers.push(info.binding());
    client.launch(
        Box::new(SourceKernel::new(Wgsl(kernel), CubeDim::new_1d(WORKGROUP))),
        CubeCount::Static(gx, gy, 1),
        KernelArguments::new().with_buffers(buffers),
    );
    out
}

fn kd_kl_shape(student: &Shape) -> Shape {
    Shape::new([student[0], student[1] + 1])
}

fn grid_sample_shape(x: &Shape, grid: &Shape) -> Shape {
    Shape::new([x[0], x[1], grid[1], grid[2]])
}

/// The trigger kernels as a backend extension.
#[backend_extension(Cube, Fusion)]
pub trait TriggerKernels: Backend {
    #[fusion(dtype = x, shape = x)]
    fn stamp_patch(
        x: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pattern: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    #[fusion(dtype = x, shape = x)]
    fn blend(x: FloatTensor<Self>, pattern: FloatTensor<Self>, alpha: f32) -> FloatTensor<Self>;

    #[fusion(dtype = x, shape = x)]
    fn sig(x: FloatTensor<Self>, delta: f32, frequency: f32) -> FloatTensor<Self>;

    #[fusion(shape = grid_sample_shape(x, grid), dtype = x)]
    fn grid_sample(x: FloatTensor<Self>, grid: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `[N, K+1]`: the gradient of the distillation loss in the first `K` columns, each row's
    /// share of the loss in the last.
    #[fusion(shape = kd_kl_shape(student), dtype = student)]
    fn kd_kl(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        temperature: f32,
    ) -> FloatTensor<Self>;
}

fn dims4(t: &CubeTensor) -> [usize; 4] {
    let s = t.meta.shape();
    [s[0], s[1], s[2], s[3]]
}

impl TriggerKernels for CubeBackend {
    fn stamp_patch(x: CubeTensor, mask: CubeTensor, pattern: CubeTensor) -> CubeTensor {
        let [n, c, h, w] = dims4(&x);
        let shape = x.meta.shape().clone();
        let info = vec![(n * c * h * w) as u32, (c * h * w) as u32, (h * w) as u32];
        launch(
            cleanse_shaders::PATCH_STAMP,
            vec![x, mask, pattern],
            shape,
            info,
        )
    }

    fn blend(x: CubeTensor, pattern: CubeTensor, alpha: f32) -> CubeTensor {
        let [n, c, h, w] = dims4(&x);
        let shape = x.meta.shape().clone();
        let info = vec![(n * c * h * w) as u32, (c * h * w) as u32, alpha.to_bits()];
        launch(cleanse_shaders::BLEND, vec![x, pattern], shape, info)
    }

    fn sig(x: CubeTensor, delta: f32, frequency: f32) -> CubeTensor {
        let [n, c, h, w] = dims4(&x);
        let shape = x.meta.shape().clone();
        let info = vec![
            (n * c * h * w) as u32,
            w as u32,
            delta.to_bits(),
            frequency.to_bits(),
        ];
        launch(cleanse_shaders::SIG, vec![x], shape, info)
    }

    fn grid_sample(x: CubeTensor, grid: CubeTensor) -> CubeTensor {
        let [n, c, h, w] = dims4(&x);
        let [_, ho, wo, _] = dims4(&grid);
        let info = vec![
            (n * c * ho * wo) as u32,
            c as u32,
            h as u32,
            w as u32,
            ho as u32,
            wo as u32,
        ];
        launch(
            cleanse_shaders::GRID_SAMPLE,
            vec![x, grid],
            Shape::new([n, c, ho, wo]),
            info,
        )
    }

    fn kd_kl(student: CubeTensor, teacher: CubeTensor, temperature: f32) -> CubeTensor {
        let s = student.meta.shape().clone();
        let (n, k) = (s[0], s[1]);
        assert_eq!(
            teacher.meta.shape()[..],
            s[..],
            "teacher and student logits differ in shape"
        );
        let info = vec![
            (n * (k + 1)) as u32,
            k as u32,
            (1.0 / temperature).to_bits(),
            (1.0 / n.max(1) as f32).to_bits(),
        ];
        launch(
            cleanse_shaders::KD_KL,
            vec![student, teacher],
            Shape::new([n, k + 1]),
            info,
        )
    }
}

/// Runs a kernel on the values of its inputs and returns the result on the input's device kind
/// (autodiff inputs get an autodiff constant back).
fn on_values<const D: usize, const E: usize, const O: usize>(
    x: Tensor<D>,
    others: Vec<Tensor<E>>,
    f: impl FnOnce(Vec<burn::backend::DispatchTensor>) -> burn::backend::DispatchTensor,
) -> Tensor<O> {
    let autodiff = x.device().is_autodiff();
    let mut args = vec![x.inner().into_dispatch()];
    args.extend(others.into_iter().map(|t| t.inner().into_dispatch()));
    let out = Tensor::<O>::from_dispatch(f(args));
    if autodiff { out.autodiff() } else { out }
}

/// `x (1 - m) + p m`; `mask` `[1,1,H,W]`, `pattern` `[1,C,H,W]`.
pub fn stamp_patch(x: Tensor<4>, mask: Tensor<4>, pattern: Tensor<4>) -> Tensor<4> {
    on_values(x, vec![mask, pattern], |mut a| {
        let p = a.pop().expect("pattern");
        let m = a.pop().expect("mask");
        let x = a.pop().expect("x");
        <Dispatch as TriggerKernels>::stamp_patch(x, m, p)
    })
}

/// `(1 - alpha) x + alpha p`; `pattern` `[1,C,H,W]`.
pub fn blend(x: Tensor<4>, pattern: Tensor<4>, alpha: f32) -> Tensor<4> {
    on_values(x, vec![pattern], |mut a| {
        let p = a.pop().expect("pattern");
        let x = a.pop().expect("x");
        <Dispatch as TriggerKernels>::blend(x, p, alpha)
    })
}

/// `clamp(x + d sin(2 pi j f / W), 0, 1)`.
pub fn sig(x: Tensor<4>, delta: f32, frequency: f32) -> Tensor<4> {
    on_values::<4, 4, 4>(x, vec![], |mut a| {
        let x = a.pop().expect("x");
        <Dispatch as TriggerKernels>::sig(x, delta, frequency)
    })
}

/// Bilinear `grid_sample` (align_corners, zero padding); `grid` `[N,Ho,Wo,2]`.
pub fn grid_sample(x: Tensor<4>, grid: Tensor<4>) -> Tensor<4> {
    on_values(x, vec![grid], |mut a| {
        let g = a.pop().expect("grid");
        let x = a.pop().expect("x");
        <Dispatch as TriggerKernels>::grid_sample(x, g)
    })
}

/// The cleanser's distillation loss `mean_n KL(softmax(t/T) || softmax(s/T))` by the fused WGSL
/// kernel (the twin is [`crate::defend::kd::kd_loss`]). The kernel returns the loss and its
/// gradient with respect to the student's logits `G`; the result is
/// `loss + sum(s * G) - detach(sum(s * G))`, whose value is the loss and whose gradient is `G`,
/// so autodiff carries the kernel's gradient into the student. The teacher gets no gradient.
pub fn kd_loss(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [n, k] = student.dims();
    let out: Tensor<2> = on_values(student.clone(), vec![teacher], |mut a| {
        let t = a.pop().expect("teacher");
        let s = a.pop().expect("student");
        <Dispatch as TriggerKernels>::kd_kl(s, t, temperature as f32)
    });
    let grad = out.clone().slice([0..n, 0..k]);
    let loss = out.slice([0..n, k..k + 1]).sum();
    let linear = (student * grad).sum();
    loss + linear.clone() - linear.detach()
}
