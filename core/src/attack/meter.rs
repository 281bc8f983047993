//! Measuring an attack success rate: the test images whose label the attack changes (labelled
//! with its target, [`super::poison::asr_set`]) and the trigger stamped on them.

use super::Backdoor;
use super::poison::triggered_accuracy;
use crate::data::ImageSet;
use crate::model::Classifier;
use burn::prelude::*;
use std::sync::Arc;

/// Measures the ASR of models against one trigger.
#[derive(Clone)]
pub struct AsrMeter {
    /// The triggered images' clean versions, labelled with the attack's target.
    pub set: Arc<ImageSet>,
    pub backdoor: Backdoor,
    /// Evaluation batch size.
    pub batch_size: usize,
    device: Device,
}

impl AsrMeter {
    pub fn new(set: Arc<ImageSet>, backdoor: Backdoor, batch_size: usize, device: &Device) -> Self {
        AsrMeter {
            set,
            backdoor,
            batch_size,
            device: device.clone(),
        }
    }

    /// The fraction of the triggered images `model` (an evaluation copy) sends to the target.
    pub fn asr(&self, model: &Classifier) -> f64 {
        triggered_accuracy(
            model,
            &self.set,
            &|x| self.backdoor.apply(x),
            self.batch_size,
            &self.device,
        )
    }
}
