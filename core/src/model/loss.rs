//! The classification loss and the count of correct predictions.

use burn::prelude::*;

/// The smallest `exp(logit - max logit)` a class keeps in [`cross_entropy`]: below it a class's
/// probability counts as zero. Far under what `f32` resolves beside the largest class's 1 (2^-24),
/// so the loss is unchanged for up to 2^15 classes; what it changes is the gradient, whose
/// entries for such classes would otherwise be of the order of `exp(-gap)`: at logit gaps above
/// about 87 they are subnormal, and every layer's backward pass then runs on subnormal numbers,
/// which x86 CPUs compute several times slower (BENCHMARKS.md: I-BAU's first rounds).
pub const KEPT_PROBABILITY: f32 = 1.0 / (1u64 << 40) as f32;

/// Mean cross-entropy of `logits` `[N, K]` against class indices `labels` `[N]`: Burn's
/// `log_softmax` (the same ops, so the same bits), with the classes whose relative probability
/// is under [`KEPT_PROBABILITY`] left out of the normalising sum (their gradient is 0).
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let max = logits.clone().detach().max_dim(1);
    let shifted = logits - max;
    let exp = shifted.clone().exp();
    let kept = exp.clone().greater_equal_elem(KEPT_PROBABILITY).float();
    let logp = shifted - (exp * kept).sum_dim(1).log();
    logp.gather(1, labels.reshape([n, 1])).mean().neg()
}

/// Number of rows of `logits` whose arg-max equals `labels`.
pub fn count_correct(logits: Tensor<2>, labels: Tensor<1, Int>) -> usize {
    let [n, _] = logits.dims();
    let pred = logits.argmax(1).reshape([n]);
    pred.equal(labels).int().sum().into_scalar::<i64>() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::log_softmax;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], &device);
        let labels = Tensor::<1, Int>::from_ints([2, 0], &device);
        let got: f32 = cross_entropy(logits.clone(), labels.clone()).into_scalar();
        // -log softmax: row 0 class 2 = log(e^1+e^2+e^3) - 3; row 1 = log 3.
        let r0 = ((1f32).exp() + (2f32).exp() + (3f32).exp()).ln() - 3.0;
        let r1 = (3f32).ln();
        assert!((got - (r0 + r1) / 2.0).abs() < 1e-5, "{got}");
        assert_eq!(count_correct(logits, labels), 2);
    }

    /// The loss is Burn's `log_softmax` bit for bit, and classes far below the row's largest get
    /// a gradient of exactly 0 where `log_softmax`'s is subnormal.
    #[test]
    fn classes_out_of_reach_get_no_gradient_and_the_loss_keeps_its_bits() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let rows = [
            [1.0, 2.0, 3.0, -4.0],
            [0.3, -0.2, 0.5, 0.1],
            [0.0, 87.0, 0.5, 1.0],
        ];
        let labels = Tensor::<1, Int>::from_ints([2, 0, 1], &ad);
        let logits = Tensor::<2>::from_floats(rows, &ad).require_grad();
        let loss = cross_entropy(logits.clone(), labels.clone());
        let plain = log_softmax(logits.clone(), 1)
            .gather(1, labels.reshape([3, 1]))
            .mean()
            .neg();
        let (a, b): (f32, f32) = (loss.clone().into_scalar(), plain.clone().into_scalar());
        assert_eq!(a.to_bits(), b.to_bits());
        let grad = |l: Tensor<1>| -> Vec<f32> {
            logits
                .grad(&l.backward())
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let (g, p) = (grad(loss), grad(plain));
        // Row 2's classes 0, 2 and 3 sit 87, 86.5 and 86 under class 1: exp(-87) / 3 is
        // subnormal with log_softmax.
        assert!(p[8] != 0.0 && p[8].abs() < f32::MIN_POSITIVE, "{}", p[8]);
        for (i, (x, y)) in g.iter().zip(&p).enumerate() {
            match [8, 10, 11].contains(&i) {
                true => assert_eq!(*x, 0.0, "entry {i}"),
                false => assert_eq!(x.to_bits(), y.to_bits(), "entry {i}"),
            }
        }
    }
}
