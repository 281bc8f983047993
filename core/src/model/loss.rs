//! The classification loss and the count of correct predictions.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Mean cross-entropy of `logits` `[N, K]` against class indices `labels` `[N]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
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
}
