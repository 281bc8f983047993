//! A model's fingerprint: one number that changes when any bit of any weight does, so that two
//! runs (or two builds, or the command line and the browser) can be compared bit for bit.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

/// FNV-1a (64-bit) over the little-endian bits of every float parameter of `model`, in module
/// order (batch-norm running statistics included).
pub fn weights_fingerprint<M: Module>(model: &M) -> u64 {
    struct Fnv(u64);
    impl ModuleVisitor for Fnv {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            for v in p.val().into_data().iter::<f32>() {
                for b in v.to_bits().to_le_bytes() {
                    self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    model.visit(&mut h);
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Architecture, ModelConfig, Normalization};

    #[test]
    fn the_fingerprint_follows_every_bit_of_the_weights() {
        let device = Device::flex();
        let config = ModelConfig {
            architecture: Architecture::Resnet18,
            width: 2,
            num_classes: 3,
            normalization: Normalization::cifar10(),
        };
        let a = config.init_seeded(&device, 1);
        assert_eq!(weights_fingerprint(&a), weights_fingerprint(&a.clone()));
        let b = config.init_seeded(&device, 2);
        assert_ne!(weights_fingerprint(&a), weights_fingerprint(&b));
    }
}
