//! Classifiers: the CIFAR ResNet-18 of the method spec, PreAct-ResNet-18 (BackdoorBench's
//! default) and the ImageNet ResNet-18 (torchvision's layout, for ImageNet-size images), each
//! with a width multiplier, behind one [`Classifier`] that normalises its input.

pub mod blocks;
pub mod fingerprint;
pub mod init;
pub mod loss;
pub mod preact_resnet;
pub mod resnet;

use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use preact_resnet::PreActResNet18;
pub use resnet::{ResNet18, Stem};

/// Per-channel input normalisation `(x - mean) / std`, the one place images leave `[0,1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// CIFAR-10 statistics (method spec).
    pub fn cifar10() -> Self {
        Normalization {
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.247, 0.243, 0.261],
        }
    }
    /// No change (GTSRB in the method spec: mean 0, std 1).
    pub fn identity() -> Self {
        Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }
    /// ImageNet statistics, for image folders.
    pub fn imagenet() -> Self {
        Normalization {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Checks that every mean is finite and every std finite and positive.
    pub fn validate(&self) -> crate::Result<()> {
        let ok = self.mean.iter().all(|m| m.is_finite())
            && self.std.iter().all(|s| s.is_finite() && *s > 0.0);
        if !ok {
            return Err(crate::Error::config(
                "normalization",
                format!(
                    "means must be finite and stds finite and positive; got mean {:?}, std {:?}",
                    self.mean, self.std
                ),
            ));
        }
        Ok(())
    }

    /// Applies the normalisation to `[N, 3, H, W]` images.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        if *self == Normalization::identity() {
            return x;
        }
        let device = x.device();
        let mean = Tensor::<1>::from_floats(self.mean, &device).reshape([1, 3, 1, 1]);
        let inv_std =
            Tensor::<1>::from_floats(self.std.map(|s| 1.0 / s), &device).reshape([1, 3, 1, 1]);
        (x - mean) * inv_std
    }
}

/// Which architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// CIFAR ResNet-18 (method spec).
    Resnet18,
    /// PreAct-ResNet-18 (BackdoorBench's default).
    PreactResnet18,
    /// ImageNet ResNet-18: torchvision's `resnet18` (7x7 stride-2 stem, max-pool).
    Resnet18Imagenet,
}

impl Architecture {
    /// Every architecture, in the order an import tries them.
    pub const ALL: [Architecture; 3] = [
        Architecture::Resnet18,
        Architecture::PreactResnet18,
        Architecture::Resnet18Imagenet,
    ];

    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Resnet18 => "resnet18",
            Architecture::PreactResnet18 => "preact-resnet18",
            Architecture::Resnet18Imagenet => "resnet18-imagenet",
        }
    }

    /// The stem's convolution kernel side (the one shape that tells the ResNet-18s apart).
    pub fn stem_kernel(self) -> usize {
        self.stem().kernel()
    }

    /// The stem: what it does to the image's side before the first stage.
    pub fn stem(self) -> Stem {
        match self {
            Architecture::Resnet18 | Architecture::PreactResnet18 => Stem::Cifar,
            Architecture::Resnet18Imagenet => Stem::Imagenet,
        }
    }
}

/// The widest network any command builds (`--width`, `--iab-width`).
///
/// Parameters and activations grow with the square of the width: 512 (8x the standard ResNet-18)
/// is already about 700 M parameters, so anything above is a typo that would otherwise end in an
/// allocation failure with a backtrace.
pub const MAX_WIDTH: usize = 512;

/// The most classes a model may have: labels are stored as `u16`.
pub const MAX_CLASSES: usize = u16::MAX as usize;

/// Checks a width setting: `1..=MAX_WIDTH`.
pub fn check_width(name: &str, width: usize) -> crate::Result<()> {
    if width == 0 || width > MAX_WIDTH {
        return Err(crate::Error::config(
            name,
            format!("must be in 1..={MAX_WIDTH}; got {width}"),
        ));
    }
    Ok(())
}

/// The number of elements of each float tensor of `module`, by its dotted path (the names
/// optimisers keep their state under).
pub fn param_sizes<M: Module>(module: &M) -> std::collections::BTreeMap<String, usize> {
    struct Sizes {
        path: Vec<String>,
        sizes: std::collections::BTreeMap<String, usize>,
    }
    impl burn::module::ModuleVisitor for Sizes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.sizes
                .insert(self.path.join("."), param.lazy_shape().num_elements());
        }
    }
    let mut v = Sizes {
        path: Vec::new(),
        sizes: Default::default(),
    };
    module.visit(&mut v);
    v.sizes
}

/// Everything needed to rebuild a classifier before loading its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// Width of the first stage; 64 is the standard ResNet-18.
    pub width: usize,
    pub num_classes: usize,
    pub normalization: Normalization,
}

impl ModelConfig {
    /// Checks width, classes and normalisation before anything is allocated.
    pub fn validate(&self) -> crate::Result<()> {
        check_width("width", self.width)?;
        if !(2..=MAX_CLASSES).contains(&self.num_classes) {
            return Err(crate::Error::config(
                "num_classes",
                format!("must be in 2..={MAX_CLASSES}; got {}", self.num_classes),
            ));
        }
        self.normalization.validate()
    }

    /// Builds a classifier initialised from `seed` alone ([`init::SeededInit`]): the same
    /// weights on every device and in every thread.
    pub fn init_seeded(&self, device: &Device, seed: u64) -> Classifier {
        self.init(device).map(&mut init::SeededInit::new(seed))
    }

    /// Builds a classifier with Burn's own initialisation (a template to load weights into).
    pub fn init(&self, device: &Device) -> Classifier {
        let net = match self.architecture {
            Architecture::Resnet18 | Architecture::Resnet18Imagenet => {
                Network::Resnet18(ResNet18::new(
                    self.architecture.stem(),
                    self.width,
                    self.num_classes,
                    device,
                ))
            }
            Architecture::PreactResnet18 => {
                Network::PreactResnet18(PreActResNet18::new(self.width, self.num_classes, device))
            }
        };
        Classifier {
            net,
            normalization: self.normalization.clone(),
        }
    }
}

/// The outputs of a forward pass that defenses and plots need besides the logits.
#[derive(Debug, Clone)]
pub struct Features {
    /// Outputs of the four residual stages, `[N, w*2^i, H/(r*2^i), W/(r*2^i)]` with `r` the
    /// stem's reduction (1, or 4 for the ImageNet stem).
    pub stages: [Tensor<4>; 4],
    /// Pooled penultimate features, `[N, 8w]`.
    pub penultimate: Tensor<2>,
    /// Class scores, `[N, K]`.
    pub logits: Tensor<2>,
}

/// The networks, one variant per layout (both ResNet-18 stems are [`ResNet18`]). A classifier
/// holds one network, so the size difference between the variants (ResNet-18's extra stem BN)
/// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    Resnet18(ResNet18),
    PreactResnet18(PreActResNet18),
}

/// A classifier over images in `[0,1]`.
#[derive(Module, Debug)]
pub struct Classifier {
    pub net: Network,
    #[module(skip)]
    pub normalization: Normalization,
}

impl Classifier {
    /// Logits of `[N, 3, H, W]` images in `[0,1]`.
    ///
    /// # Shapes
    /// - input: `[N, 3, H, W]`
    /// - output: `[N, K]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.features(images).logits
    }

    /// Number of trainable parameters (weights and biases; batch-norm running statistics are
    /// state, not parameters, as in PyTorch's `parameters()`).
    pub fn num_trainable_params(&self) -> usize {
        param_sizes(self)
            .iter()
            .filter(|(path, _)| {
                !path
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .starts_with("running_")
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// The last stage's output, the pooled (post-ReLU) penultimate features and the logits,
    /// from the third stage's output `s3` (`features(x).stages[2]`): what changes when only the
    /// last stage or the classifier changes (Fine-Pruning's search).
    pub fn tail(&self, s3: Tensor<4>) -> (Tensor<4>, Tensor<2>, Tensor<2>) {
        match &self.net {
            Network::Resnet18(m) => m.tail(s3),
            Network::PreactResnet18(m) => m.tail(s3),
        }
    }

    /// Every batch normalisation of the network with the stage it belongs to (0: the stem; 1-4:
    /// the residual stages), in a fixed order: the stem's, then each block's in forward order (a
    /// ResNet block's shortcut BN after its second).
    pub fn batch_norms_mut(&mut self) -> Vec<(usize, &mut burn::nn::BatchNorm)> {
        let mut v: Vec<(usize, &mut burn::nn::BatchNorm)> = Vec::new();
        match &mut self.net {
            Network::Resnet18(m) => {
                v.push((0, &mut m.stem_bn));
                let stages = [&mut m.layer1, &mut m.layer2, &mut m.layer3, &mut m.layer4];
                for (s, blocks) in stages.into_iter().enumerate() {
                    for b in blocks.iter_mut() {
                        v.extend(b.batch_norms_mut().into_iter().map(|bn| (s + 1, bn)));
                    }
                }
            }
            Network::PreactResnet18(m) => {
                let stages = [&mut m.layer1, &mut m.layer2, &mut m.layer3, &mut m.layer4];
                for (s, blocks) in stages.into_iter().enumerate() {
                    for b in blocks.iter_mut() {
                        v.extend(b.batch_norms_mut().into_iter().map(|bn| (s + 1, bn)));
                    }
                }
            }
        }
        v
    }

    /// The network with its batch norms using their running statistics (`false`: frozen, as in
    /// PyTorch's `eval()`, also on a training copy whose weights still train) or batch
    /// statistics on a training copy (`true`, the default).
    pub fn with_batch_norm_training(mut self, training: bool) -> Self {
        for (_, bn) in self.batch_norms_mut() {
            bn.training = bn.training.clone().with_value(training);
        }
        self
    }

    /// Channels of the last stage's output (the classifier's inputs).
    pub fn tail_width(&self) -> usize {
        match &self.net {
            Network::Resnet18(m) => m.fc.weight.val().dims()[0],
            Network::PreactResnet18(m) => m.fc.weight.val().dims()[0],
        }
    }

    /// Stage outputs, penultimate features and logits.
    pub fn features(&self, images: Tensor<4>) -> Features {
        let x = self.normalization.apply(images);
        match &self.net {
            Network::Resnet18(m) => m.features(x),
            Network::PreactResnet18(m) => m.features(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(architecture: Architecture, width: usize, num_classes: usize) -> ModelConfig {
        ModelConfig {
            architecture,
            width,
            num_classes,
            normalization: Normalization::cifar10(),
        }
    }

    #[test]
    fn resnet18_full_width_has_the_standard_parameter_count() {
        let device = Device::flex();
        // Burn's `num_params` also counts the BN running mean and variance (9,600 values).
        let m = cfg(Architecture::Resnet18, 64, 10).init(&device);
        assert_eq!(m.num_params() - m.num_trainable_params(), 9_600);
        // 11,159,232 conv + 9,600 BN + 5,130 fc = 11,173,962: the CIFAR ResNet-18 with 10 classes (kuangliu / BackdoorBench).
        assert_eq!(
            cfg(Architecture::Resnet18, 64, 10)
                .init(&device)
                .num_trainable_params(),
            11_173_962
        );
        // PreAct-ResNet-18 (BackdoorBench's layout): same convs, BN only before each block's
        // convs, none on shortcuts or after the last block: 11,159,232 conv + 6,784 BN + 5,130 fc
        // = 11,171,146, the parameter count of BackdoorBench's PreActResNet18 with 10 classes.
        assert_eq!(
            cfg(Architecture::PreactResnet18, 64, 10)
                .init(&device)
                .num_trainable_params(),
            11_171_146
        );
        // torchvision's resnet18 with 1,000 classes: 11,689,512 parameters.
        assert_eq!(
            cfg(Architecture::Resnet18Imagenet, 64, 1000)
                .init(&device)
                .num_trainable_params(),
            11_689_512
        );
    }

    #[test]
    fn the_imagenet_stem_quarters_the_side() {
        let device = Device::flex();
        let model = cfg(Architecture::Resnet18Imagenet, 4, 10).init(&device);
        let f = model.features(Tensor::zeros([1, 3, 64, 64], &device));
        assert_eq!(f.stages[0].dims(), [1, 4, 16, 16]);
        assert_eq!(f.stages[3].dims(), [1, 32, 2, 2]);
        assert_eq!(f.logits.dims(), [1, 10]);
        // Odd sides round as PyTorch's do: 7x7/2 pad 3 then 3x3/2 pad 1 (57 -> 29 -> 15).
        let f = model.features(Tensor::zeros([1, 3, 57, 57], &device));
        assert_eq!(f.stages[0].dims(), [1, 4, 15, 15]);
    }

    #[test]
    fn feature_shapes_at_narrow_width() {
        let device = Device::flex();
        for arch in [Architecture::Resnet18, Architecture::PreactResnet18] {
            let model = cfg(arch, 8, 43).init(&device);
            let f = model.features(Tensor::zeros([2, 3, 32, 32], &device));
            assert_eq!(f.stages[0].dims(), [2, 8, 32, 32]);
            assert_eq!(f.stages[1].dims(), [2, 16, 16, 16]);
            assert_eq!(f.stages[2].dims(), [2, 32, 8, 8]);
            assert_eq!(f.stages[3].dims(), [2, 64, 4, 4]);
            assert_eq!(f.penultimate.dims(), [2, 64]);
            assert_eq!(f.logits.dims(), [2, 43]);
        }
    }

    #[test]
    fn seeded_init_is_reproducible_and_follows_the_spec() {
        let device = Device::flex();
        let c = cfg(Architecture::Resnet18, 8, 10);
        let a = c.init_seeded(&device, 3);
        let b = c.init_seeded(&device, 3);
        let other = c.init_seeded(&device, 4);
        let w = |m: &Classifier| -> Vec<f32> {
            let Network::Resnet18(r) = &m.net else {
                panic!("resnet")
            };
            r.layer3[0]
                .conv1
                .weight
                .val()
                .into_data()
                .try_to_vec()
                .expect("f32")
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&other));
        // Kaiming normal, fan-out: std = sqrt(2 / (out * k * k)) = sqrt(2 / (32 * 9)).
        let v = w(&a);
        let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        let expect = 2.0 / (32.0 * 9.0);
        assert!(
            (var / expect - 1.0).abs() < 0.1,
            "variance {var} vs {expect}"
        );
        let Network::Resnet18(r) = &a.net else {
            panic!("resnet")
        };
        let fc: Vec<f32> = r.fc.weight.val().into_data().try_to_vec().expect("f32");
        let bound = 1.0 / (64f32).sqrt();
        assert!(fc.iter().all(|x| x.abs() <= bound));
        let gamma: Vec<f32> = r.stem_bn.gamma.val().into_data().try_to_vec().expect("f32");
        assert!(gamma.iter().all(|g| *g == 1.0));
    }

    #[test]
    fn normalization_matches_formula() {
        let device = Device::flex();
        let x = Tensor::<4>::ones([1, 3, 1, 1], &device);
        let y: Vec<f32> = Normalization::cifar10()
            .apply(x)
            .into_data()
            .try_to_vec()
            .expect("f32");
        let n = Normalization::cifar10();
        for (c, v) in y.iter().enumerate() {
            assert!((v - (1.0 - n.mean[c]) / n.std[c]).abs() < 1e-5);
        }
    }
}
