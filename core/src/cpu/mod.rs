//! The project's own kernels for Burn's CPU backend (`flex`), reached through Burn's backend
//! extension mechanism with a hand-written autodiff node. [`batch_norm`] is the one place that
//! decides: on a native `flex` device the model's batch norms run here, elsewhere (GPU, browser)
//! Burn's own op runs.
//!
//! Burn's default batch norm on `flex` is a chain of about 25 tensor operations (swapped-axis
//! copies, broadcasts, separate reductions); here the training forward is two reading passes and
//! one writing pass, the backward two and one, and every per-channel sum is reduced in a fixed
//! order, so results do not depend on the thread count ([`batch_norm`] module docs).

pub mod batch_norm;

use batch_norm::Nchw;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension, tensor::FloatTensor,
};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::{DType, Shape, TensorData};

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

    /// Batch norm with given statistics (evaluation).
    fn bn_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Gradients of [`CpuKernels::bn_train`]: `(x, gamma, beta)`.
    fn bn_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `t` in contiguous layout: the same buffer when it already is, else a copy (f32 only).
fn values(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the CPU kernels take f32 tensors");
    t.to_contiguous()
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
    ) -> FlexTensor {
        let x = values(&x);
        let s = layout(&x);
        let out = batch_norm::normalize(
            slice(&x),
            s,
            slice(&values(&gamma)),
            slice(&values(&beta)),
            slice(&values(&mean)),
            slice(&values(&variance)),
            epsilon,
        );
        tensor(out, x.shape())
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
    ) -> AdTensor<B, C> {
        <Autodiff<B, C> as burn::backend::ops::ModuleOps<Autodiff<B, C>>>::batch_norm(
            x, gamma, beta, mean, variance, epsilon,
        )
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
}

/// The model's batch norm: Burn's [`BatchNorm::forward`] semantics (training statistics only on
/// an autodiff device with the layer's training flag on; running statistics updated with the
/// biased batch variance, as Burn does), computed by [`CpuKernels`] on native `flex` devices and
/// by Burn elsewhere: on the GPU, and in the browser, where the demo's epoch measured 12% slower
/// with these kernels than with Burn's op (BENCHMARKS.md, "In the browser").
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if cfg!(target_arch = "wasm32") || !is_flex(&device) {
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
    let out = <Dispatch as CpuKernels>::bn_eval(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        bn.running_mean.value().to_device(&device).into_dispatch(),
        bn.running_var.value().to_device(&device).into_dispatch(),
        bn.epsilon,
    );
    Tensor::from_dispatch(out)
}
