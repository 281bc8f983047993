//! The project's own kernels for Burn's CPU backend (`flex`), reached through Burn's backend
//! extension mechanism with hand-written autodiff nodes. [`batch_norm`] and [`conv2d`] are the
//! places that decide: on a `flex` device the models' convolutions and batch norms run here
//! (natively and in the browser); elsewhere (GPU) Burn's own ops run.
//!
//! The convolution's forward and weight gradient are column matrices multiplied by the backend's
//! matrix product ([`conv`] module docs), and its input gradient Burn's, except where the direct
//! convolution ([`direct`]: 3x3, stride 1, channels in blocks of 8, planes of 8x8 and more with
//! AVX2 or in the browser's wasm with `simd128`, every plane with AVX-512) computes the forward
//! and the input gradient, and (AVX-512 with output channels in multiples of 16, or the browser)
//! the weight gradient.
//!
//! Burn's default batch norm on `flex` is a chain of about 25 tensor operations (swapped-axis
//! copies, broadcasts, separate reductions); here the training forward is two reading passes and
//! one writing pass, the backward two and one, and every per-channel sum is reduced in a fixed
//! order, so results do not depend on the thread count ([`batch_norm`] module docs).

pub mod batch_norm;
pub mod conv;
pub mod direct;

use batch_norm::Nchw;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension, tensor::FloatTensor,
};
use burn::nn::BatchNorm;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Shape, TensorData};
use conv::ConvGeometry;

/// Whether `device` is Burn's CPU backend (`flex`), autodiff or not.
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// The CPU kernels as a backend extension: implemented for `flex` and, with a hand-written
/// backward, for autodiff over it.
#[backend_extension(Flex, Autodiff)]
pub trait CpuKernels: Backend {
    /// Batch norm with the batch's own statistics: `(output, mean, biased variance)`.
    fn bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Batch norm with given statistics (evaluation), followed by a ReLU in the same pass when
    /// `then_relu`.
    fn bn_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        then_relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(a + b)` (the residual blocks' sum) in one pass.
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients of [`CpuKernels::bn_train`]: `(x, gamma, beta)`.
    fn bn_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// A 2-D convolution without bias (no dilation, one group: see [`conv2d`]).
    fn conv_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of [`CpuKernels::conv_forward`] with respect to its input.
    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of [`CpuKernels::conv_forward`] with respect to its weight.
    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

/// `t` in contiguous layout: the same buffer when it already is, else a copy (f32 only).
fn values(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the CPU kernels take f32 tensors");
    t.to_contiguous()
}

/// `t`'s values to overwrite in place, when `t` alone holds its buffer and is all of it, in
/// order (f32 only).
fn sole(t: &mut FlexTensor) -> Option<&mut [f32]> {
    let n = t.shape().num_elements();
    if t.dtype() != DType::F32 || t.layout().contiguous_offsets() != Some((0, n)) {
        return None;
    }
    t.try_storage_mut::<f32>().filter(|s| s.len() == n)
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn tensor(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// The NCHW layout of `x` (any rank >= 2: the dimensions after the channels are the plane).
fn layout(x: &FlexTensor) -> Nchw {
    let shape = x.shape();
    assert!(shape.num_dims() >= 2, "batch norm needs [N, C, ...]");
    Nchw {
        n: shape[0],
        c: shape[1],
        hw: shape.iter().skip(2).product(),
    }
}

/// The geometry of a convolution of `x` by `weight`.
fn geometry(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> ConvGeometry {
    let (xs, ws) = (x.shape(), weight.shape());
    assert!(
        xs.num_dims() == 4 && ws.num_dims() == 4 && xs[1] == ws[1],
        "a convolution of [N, C, H, W] by [C_out, C, KH, KW]: {xs:?} by {ws:?}"
    );
    assert!(
        options.groups == 1 && options.dilation == [1, 1],
        "the CPU convolution has one group and no dilation"
    );
    ConvGeometry {
        n: xs[0],
        ci: xs[1],
        h: xs[2],
        w: xs[3],
        co: ws[0],
        kh: ws[2],
        kw: ws[3],
        stride: options.stride,
        padding: options.padding,
    }
}

impl CpuKernels for Flex {
    fn bn_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, gamma, beta) = (values(&x), values(&gamma), values(&beta));
        let s = layout(&x);
        let (mean, var) = batch_norm::batch_stats(slice(&x), s);
        let out = batch_norm::normalize(
            slice(&x),
            s,
            slice(&gamma),
            slice(&beta),
            &mean,
            &var,
            epsilon,
            false,
        );
        let c = Shape::new([s.c]);
        (
            tensor(out, x.shape()),
            tensor(mean, c.clone()),
            tensor(var, c),
        )
    }

    fn bn_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        then_relu: bool,
    ) -> FlexTensor {
        let s = layout(&x);
        let mut x = x;
        let stats = [&gamma, &beta, &mean, &variance].map(values);
        let [g, b, m, v] = stats.each_ref().map(slice);
        // An input no one else holds (evaluation, where nothing keeps it for a backward pass)
        // is overwritten: no second buffer to allocate and zero.
        if let Some(xs) = sole(&mut x) {
            batch_norm::normalize_in_place(xs, s, g, b, m, v, epsilon, then_relu);
            return x;
        }
        let x = values(&x);
        let out = batch_norm::normalize(slice(&x), s, g, b, m, v, epsilon, then_relu);
        tensor(out, x.shape())
    }

    fn add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        assert_eq!(a.shape(), b.shape(), "add_relu: the shapes differ");
        let (mut a, b) = (a, values(&b));
        if let Some(av) = sole(&mut a) {
            batch_norm::add_relu_in_place(av, slice(&b));
            return a;
        }
        let a = values(&a);
        tensor(batch_norm::add_relu(slice(&a), slice(&b)), a.shape())
    }

    fn bn_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, dy) = (values(&x), values(&output_grad));
        let s = layout(&x);
        let (xg, gg, bg) = batch_norm::backward(
            slice(&x),
            slice(&dy),
            s,
            slice(&values(&gamma)),
            slice(&values(&mean)),
            slice(&values(&variance)),
            epsilon,
        );
        let c = Shape::new([s.c]);
        (tensor(xg, x.shape()), tensor(gg, c.clone()), tensor(bg, c))
    }

    fn conv_forward(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let (x, weight) = (values(&x), values(&weight));
        let g = geometry(&x, &weight, &options);
        let ([oh, ow], k, l) = (g.out(), g.rows(), g.cols());
        if direct::chosen(&g) {
            let y = direct::forward(slice(&x), slice(&weight), direct::shape_of(&g));
            return tensor(y, Shape::new([g.n, g.co, oh, ow]));
        }
        if direct::chosen_strided(&g) {
            let y = direct::forward_strided(slice(&x), slice(&weight), direct::shape_of(&g));
            return tensor(y, Shape::new([g.n, g.co, oh, ow]));
        }
        let w = Flex::float_reshape(weight, Shape::new([1, g.co, k]));
        let out_shape = Shape::new([g.n, g.co, oh, ow]);
        let mut out = Vec::with_capacity(g.n * g.co * l);
        for images in g.chunks(1) {
            let cols = conv::columns(slice(&x), &g, images.clone(), 1);
            let y = Flex::float_matmul(w.clone(), tensor(cols, Shape::new([images.len(), k, l])));
            if images.len() == g.n {
                return Flex::float_reshape(values(&y), out_shape);
            }
            out.extend_from_slice(slice(&values(&y)));
        }
        tensor(out, out_shape)
    }

    fn conv_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let (xv, weight) = (values(&x), values(&weight));
        let g = geometry(&xv, &weight, &options);
        if direct::chosen(&g) {
            let dy = values(&output_grad);
            let dx = direct::input_grad(slice(&dy), slice(&weight), direct::shape_of(&g));
            return tensor(dx, xv.shape());
        }
        // Elsewhere Burn's: a transposed convolution on flex, faster than a column version
        // (BENCHMARKS.md).
        Flex::conv2d_x_backward(xv, weight, output_grad, options)
    }

    fn conv_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let (x, dy) = (values(&x), values(&output_grad));
        let g = geometry(&x, &weight, &options);
        if direct::chosen_for_weight_grad(&g) {
            let dw = direct::weight_grad(slice(&x), slice(&dy), direct::shape_of(&g));
            return tensor(dw, weight.shape());
        }
        if direct::chosen_strided(&g) {
            let dw = direct::weight_grad_strided(slice(&x), slice(&dy), direct::shape_of(&g));
            return tensor(dw, weight.shape());
        }
        let (k, l) = (g.rows(), g.cols());
        let group = g.group();
        let mut dw = vec![0.0f32; g.co * k];
        for images in g.chunks(group) {
            // Whole groups in one batched product, a shorter last group in a second.
            let split = images.start + images.len() / group * group;
            for (part, members) in [
                (images.start..split, group),
                (split..images.end, images.end - split),
            ] {
                if part.is_empty() {
                    continue;
                }
                let groups = part.len() / members;
                let cols = conv::columns(slice(&x), &g, part.clone(), members);
                let rows = conv::group_rows(slice(&dy), &g, part, members);
                let cols = tensor(cols, Shape::new([groups, k, members * l]));
                let rows = tensor(rows, Shape::new([groups, g.co, members * l]));
                let parts = Flex::float_matmul(rows, Flex::float_swap_dims(cols, 1, 2));
                conv::add_images(&mut dw, slice(&values(&parts)));
            }
        }
        tensor(dw, weight.shape())
    }
}

/// The autodiff node of the training batch norm: the input and gamma are checkpointed, the batch
/// statistics kept as the forward computed them; the backward is [`batch_norm::backward`].
#[derive(Debug)]
struct BatchNormTrainNode;

impl<B: Backend + CpuKernels> Backward<B, 3> for BatchNormTrainNode {
    type State = (
        NodeId,
        NodeId,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        f64,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, mean, variance, epsilon) = ops.state;
        let x = cp.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let gamma = cp.retrieve_node_output::<B::FloatTensorPrimitive>(gamma_state);
        let (xg, gg, bg) = B::bn_train_backward(x, gamma, mean, variance, epsilon, grad);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, xg);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, gg);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, bg);
        }
    }
}

/// The autodiff node of the convolution: input and weight checkpointed; the backward is
/// [`CpuKernels::conv_input_grad`] and [`CpuKernels::conv_weight_grad`], each only when its
/// parent needs it.
#[derive(Debug)]
struct ConvNode;

impl<B: Backend + CpuKernels> Backward<B, 2> for ConvNode {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = cp.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = cp.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        if let Some(node) = node_x {
            let g = B::conv_input_grad(x.clone(), weight.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, g);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::conv_weight_grad(x, weight, grad, options));
        }
    }
}

type AdTensor<B, C> = FloatTensor<Autodiff<B, C>>;

impl<B: Backend + CpuKernels, C: CheckpointStrategy> CpuKernels for Autodiff<B, C> {
    fn bn_train(
        x: AdTensor<B, C>,
        gamma: AdTensor<B, C>,
        beta: AdTensor<B, C>,
        epsilon: f64,
    ) -> (AdTensor<B, C>, AdTensor<B, C>, AdTensor<B, C>) {
        let constant = <AdTensor<B, C>>::new;
        match BatchNormTrainNode
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let (out, mean, var) = B::bn_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                let state = (x_state, gamma_state, mean.clone(), var.clone(), epsilon);
                (prep.finish(state, out), constant(mean), constant(var))
            }
            OpsKind::UnTracked(prep) => {
                let (out, mean, var) = B::bn_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (prep.finish(out), constant(mean), constant(var))
            }
        }
    }

    /// Differentiable through Burn's own default (an evaluation-mode batch norm under autodiff
    /// is rare: a frozen layer in a model that is being differentiated).
    fn bn_eval(
        x: AdTensor<B, C>,
        gamma: AdTensor<B, C>,
        beta: AdTensor<B, C>,
        mean: AdTensor<B, C>,
        variance: AdTensor<B, C>,
        epsilon: f64,
        then_relu: bool,
    ) -> AdTensor<B, C> {
        let y = <Autodiff<B, C> as ModuleOps<Autodiff<B, C>>>::batch_norm(
            x, gamma, beta, mean, variance, epsilon,
        );
        match then_relu {
            true => <Autodiff<B, C> as ActivationOps<Autodiff<B, C>>>::relu(y),
            false => y,
        }
    }

    /// Differentiable through Burn's own ops (the models call it on autodiff devices only in
    /// evaluation mode, where it is rare: see [`add_relu`]).
    fn add_relu(a: AdTensor<B, C>, b: AdTensor<B, C>) -> AdTensor<B, C> {
        let sum = <Autodiff<B, C> as FloatTensorOps<Autodiff<B, C>>>::float_add(a, b);
        <Autodiff<B, C> as ActivationOps<Autodiff<B, C>>>::relu(sum)
    }

    fn bn_train_backward(
        _x: AdTensor<B, C>,
        _gamma: AdTensor<B, C>,
        _mean: AdTensor<B, C>,
        _variance: AdTensor<B, C>,
        _epsilon: f64,
        _output_grad: AdTensor<B, C>,
    ) -> (AdTensor<B, C>, AdTensor<B, C>, AdTensor<B, C>) {
        panic!("the batch-norm backward is not differentiable")
    }

    fn conv_forward(
        x: AdTensor<B, C>,
        weight: AdTensor<B, C>,
        options: ConvOptions<2>,
    ) -> AdTensor<B, C> {
        match ConvNode
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out =
                    B::conv_forward(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_state, weight_state, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv_forward(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }

    fn conv_input_grad(
        _x: AdTensor<B, C>,
        _weight: AdTensor<B, C>,
        _output_grad: AdTensor<B, C>,
        _options: ConvOptions<2>,
    ) -> AdTensor<B, C> {
        panic!("the convolution's backward is not differentiable")
    }

    fn conv_weight_grad(
        _x: AdTensor<B, C>,
        _weight: AdTensor<B, C>,
        _output_grad: AdTensor<B, C>,
        _options: ConvOptions<2>,
    ) -> AdTensor<B, C> {
        panic!("the convolution's backward is not differentiable")
    }
}

/// The model's batch norm: Burn's [`BatchNorm::forward`] semantics (training statistics only on
/// an autodiff device with the layer's training flag on; running statistics updated with the
/// biased batch variance, as Burn does), computed by [`CpuKernels`] on `flex` devices (natively
/// and in the browser, whose wasm is built with SIMD: BENCHMARKS.md, "In the browser") and by
/// Burn on the GPU.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !is_flex(&device) {
        return bn.forward(x);
    }
    if device.is_autodiff() && bn.training.is_enabled() {
        let (out, mean, var) = <Dispatch as CpuKernels>::bn_train(
            x.into_dispatch(),
            bn.gamma.val().into_dispatch(),
            bn.beta.val().into_dispatch(),
            bn.epsilon,
        );
        let (mean, var) = (
            Tensor::<1>::from_dispatch(mean),
            Tensor::<1>::from_dispatch(var),
        );
        let m = bn.momentum;
        let running_mean = bn.running_mean.value_sync().to_device(&device);
        let running_var = bn.running_var.value_sync().to_device(&device);
        let running_mean = running_mean
            .mul_scalar(1.0 - m)
            .add(mean.detach().mul_scalar(m));
        let running_var = running_var
            .mul_scalar(1.0 - m)
            .add(var.detach().mul_scalar(m));
        bn.running_mean.update(running_mean.detach());
        bn.running_var.update(running_var.detach());
        return Tensor::from_dispatch(out);
    }
    running_batch_norm(bn, x, false)
}

/// `relu(batch_norm(bn, x))`: where the batch norm uses its running statistics on a `flex`
/// device without autodiff (evaluating, inference), one pass over the activations instead of
/// two, with the same bits; elsewhere the two ops.
pub fn batch_norm_relu<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if !fuses_here(&x.device()) {
        return relu(batch_norm(bn, x));
    }
    running_batch_norm(bn, x, true)
}

/// Whether the fused evaluation ops run on `device`: on `flex`, without autodiff.
fn fuses_here(device: &Device) -> bool {
    is_flex(device) && !device.is_autodiff()
}

/// The evaluation batch norm of [`CpuKernels::bn_eval`] (`then_relu`: with the ReLU fused).
fn running_batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>, then_relu: bool) -> Tensor<D> {
    let device = x.device();
    let out = <Dispatch as CpuKernels>::bn_eval(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        bn.running_mean.value().to_device(&device).into_dispatch(),
        bn.running_var.value().to_device(&device).into_dispatch(),
        bn.epsilon,
        then_relu,
    );
    Tensor::from_dispatch(out)
}

/// `relu(a + b)`, the residual blocks' sum: in one pass on a native `flex` device without
/// autodiff (evaluating, inference), with the same bits as the two ops; elsewhere the two ops.
pub fn add_relu(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    if !fuses_here(&a.device()) {
        return relu(a + b);
    }
    Tensor::from_dispatch(<Dispatch as CpuKernels>::add_relu(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// The model's 2-D convolution: Burn's [`Conv2d::forward`], computed by [`CpuKernels`] on `flex`
/// devices (natively and in the browser, where the demo's epoch measured about 20% faster with it,
/// BENCHMARKS.md) when the layer has one group, no dilation and explicit or no padding (every
/// layer of the project's models), by Burn elsewhere: in f16 or bf16 inside
/// [`crate::precision::autocast`] (input and weight cast down, output cast back to f32).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([(0, 0), (0, 0)]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([(top, bottom), (left, right)]),
        PaddingConfig2d::Same => None,
    };
    if !is_flex(&device)
        && let (Some(dtype), Some(padding)) = (crate::precision::conv_dtype(), padding)
    {
        // Reduced precision (inside `precision::autocast`, GPUs only): input and weight cast
        // down, the output cast back to f32; the casts carry the gradients back in f32.
        let options =
            ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
        let out = burn::tensor::module::conv2d(
            x.cast(dtype),
            conv.weight.val().cast(dtype),
            None,
            options,
        )
        .cast(FloatDType::F32);
        return with_bias(conv, out);
    }
    let Some(padding) =
        padding.filter(|_| is_flex(&device) && conv.groups == 1 && conv.dilation == [1, 1])
    else {
        return conv.forward(x);
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, [1, 1], 1);
    let out = Tensor::<4>::from_dispatch(<Dispatch as CpuKernels>::conv_forward(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        options,
    ));
    with_bias(conv, out)
}

/// `out` plus the convolution's bias, when it has one.
fn with_bias(conv: &Conv2d, out: Tensor<4>) -> Tensor<4> {
    match &conv.bias {
        Some(b) => {
            let c = b.dims()[0];
            out + b.val().reshape([1, c, 1, 1])
        }
        None => out,
    }
}
