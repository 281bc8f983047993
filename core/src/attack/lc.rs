//! Label-Consistent attack: untargeted L-inf PGD on a clean model makes the target-class images
//! hard to classify from their content, so the model leans on the trigger instead.

use crate::data::ImageSet;
use crate::engine::eval::{images_tensor, labels_tensor};
use crate::model::Classifier;
use crate::model::loss::cross_entropy;
use burn::module::Module;
use burn::prelude::*;

/// PGD settings (method spec: eps 16/255, step 1.5/255, 100 steps, no random start).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pgd {
    pub eps: f32,
    pub step: f32,
    pub steps: usize,
    pub batch_size: usize,
}

/// Untargeted PGD on `images` against `model` (evaluated with its batch-norm statistics), from
/// the clean image (no random start), quantised to 8 bits at the end. Returns the planar
/// `u8` pixels of the adversarial images, in order.
pub fn pgd_untargeted(
    model: &Classifier,
    images: &ImageSet,
    pgd: &Pgd,
    device: &Device,
) -> Vec<u8> {
    let ad = device.clone().autodiff();
    // Gradients flow to the input only; batch norm uses its running statistics.
    let model = model.clone().train().freeze();
    let n = images.image_len();
    let mut out = Vec::with_capacity(images.pixels.len());
    let idx: Vec<usize> = (0..images.len()).collect();
    for chunk in idx.chunks(pgd.batch_size.max(1)) {
        let b = chunk.len();
        let mut host = Vec::with_capacity(b * n);
        for &i in chunk {
            host.extend(images.image(i).iter().map(|&v| v as f32 / 255.0));
        }
        let shape = [b, images.channels, images.height, images.width];
        let x0 = images_tensor(host, shape, device);
        let y = labels_tensor(
            chunk.iter().map(|&i| images.labels[i] as i64).collect(),
            &ad,
        );
        let lo = (x0.clone() - pgd.eps).clamp_min(0.0);
        let hi = (x0.clone() + pgd.eps).clamp_max(1.0);
        let mut x = x0;
        for _ in 0..pgd.steps {
            let xg = x.clone().autodiff().require_grad();
            let loss = cross_entropy(model.forward(xg.clone()), y.clone());
            let grads = loss.backward();
            let g = xg.grad(&grads).expect("input gradient");
            x = (x + g.sign() * pgd.step)
                .max_pair(lo.clone())
                .min_pair(hi.clone());
        }
        out.extend(super::trigger::to_u8(x));
    }
    out
}
