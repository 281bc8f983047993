//! The settings defenses share, each default written once: [`CommonSettings`] (in every
//! defense's configuration), [`SgdTraining`] (in those trained with SGD on a cosine schedule: FT,
//! and through it FP, NAD and MCR, and the cleanser), and [`SharedFlags`], what a command line
//! sets of them, applied to any method by `Method::with_flags`.

use crate::data::augment::Augment;
use crate::optim::schedule::{AUTHORS_COSINE_T_MAX, check_cosine_t_max};
use crate::optim::sgd::SgdConfig;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The batch size of every defense's evaluation of the test images.
pub const EVAL_BATCH_SIZE: usize = 256;

/// What every defense has: the suspect it defends, its seed, its batches and learning rate, and
/// how often it is measured. A configuration embeds it (its fields are the configuration's own in
/// JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommonSettings {
    /// The suspect model's run directory (`teacher` in the cleanser's reports before the family
    /// shared this).
    #[serde(alias = "teacher")]
    pub suspect: PathBuf,
    pub seed: u64,
    /// The batch size of training (ANP: of its mask updates; I-BAU: of its rounds).
    pub batch_size: usize,
    /// The learning rate of the method's optimiser (its peak, under a schedule).
    pub lr: f64,
    /// The batch size of the evaluation.
    pub eval_batch_size: usize,
    /// Evaluate after every Nth epoch (round, group of mask updates) and the last; the model
    /// trained does not depend on it.
    #[serde(default = "crate::engine::driver::every_epoch")]
    pub eval_every: usize,
}

impl CommonSettings {
    /// `suspect` with the method's batch size and learning rate, seed 0, evaluated every epoch.
    pub fn new(suspect: PathBuf, batch_size: usize, lr: f64) -> Self {
        CommonSettings {
            suspect,
            seed: 0,
            batch_size,
            lr,
            eval_batch_size: EVAL_BATCH_SIZE,
            eval_every: 1,
        }
    }

    /// Why these settings cannot run, if they cannot.
    pub fn validate(&self) -> Result<()> {
        crate::engine::driver::check_batch_sizes(self.batch_size, self.eval_batch_size)?;
        crate::engine::driver::check_eval_every(self.eval_every)?;
        crate::optim::sgd::check_lr(self.lr)
    }
}

/// Training with SGD on a cosine schedule, as FT trains (the method spec: 100 epochs, momentum
/// 0.9, weight decay 5e-4, the authors' cosine horizon of 100 epochs, crop and flip).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdTraining {
    /// Method spec: 100.
    pub epochs: usize,
    /// The cosine schedule's horizon in epochs: the authors' 100 whatever `epochs` is
    /// ([`AUTHORS_COSINE_T_MAX`]); `None` (runs made before the setting): over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_t_max: Option<usize>,
    /// Method spec: momentum 0.9, weight decay 5e-4.
    pub sgd: SgdConfig,
    /// Method spec: crop + flip (no flip on data sets where it changes the meaning).
    pub augment: Augment,
}

impl SgdTraining {
    /// The method spec's epochs of training.
    pub const EPOCHS: usize = 100;
    /// The method spec's batch size.
    pub const BATCH_SIZE: usize = 256;
    /// The method spec's peak learning rate.
    pub const LR: f64 = 0.01;

    /// The method spec's training (`flip`: whether the data set allows flips).
    pub fn paper(flip: bool) -> Self {
        SgdTraining {
            epochs: Self::EPOCHS,
            cosine_t_max: Some(AUTHORS_COSINE_T_MAX),
            sgd: SgdConfig::default(),
            augment: Augment::standard(flip),
        }
    }

    /// Why this training cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        check_cosine_t_max(self.cosine_t_max)?;
        self.sgd.validate()?;
        self.augment.validate()
    }

    /// What sets this training apart from the method spec's, for table columns: the epochs, and
    /// a cosine horizon other than the authors' (none for runs made before the setting existed,
    /// which annealed over each run's own length).
    pub fn label_details(&self) -> Vec<String> {
        let mut d = Vec::new();
        if self.epochs != Self::EPOCHS {
            d.push(format!("{} ep", self.epochs));
        }
        match self.cosine_t_max {
            Some(t) if t != AUTHORS_COSINE_T_MAX => d.push(format!("T_max {t}")),
            _ => {}
        }
        d
    }

    /// The engine's plan for this training with `common`'s batches, learning rate and seed.
    pub fn plan(
        &self,
        common: &CommonSettings,
        what: &'static str,
    ) -> crate::engine::driver::LoopPlan {
        crate::engine::driver::LoopPlan::cosine(
            (self.epochs, common.batch_size, common.lr),
            self.cosine_t_max,
            common.seed,
            self.augment,
            what,
        )
    }
}

/// What a command line (or a protocol's flags) sets of the settings defenses share; `None`
/// leaves the method's default. The one place these flags reach a configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedFlags {
    pub seed: Option<u64>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub eval_every: Option<usize>,
    /// Epochs of training (methods trained for epochs only).
    pub epochs: Option<usize>,
    pub cosine_t_max: Option<usize>,
    pub weight_decay: Option<f64>,
    pub crop_padding: Option<usize>,
    /// No horizontal flips.
    pub no_flip: bool,
}

impl SharedFlags {
    /// These flags' seed, batch size, learning rate and evaluation cadence applied to `common`
    /// (the rest a method applies itself: [`super::method::Method::with_flags`]).
    pub fn apply_to_common(&self, common: &mut CommonSettings) {
        common.seed = self.seed.unwrap_or(common.seed);
        common.batch_size = self.batch_size.unwrap_or(common.batch_size);
        common.lr = self.lr.unwrap_or(common.lr);
        common.eval_every = self.eval_every.unwrap_or(common.eval_every);
    }

    /// These flags' epochs, horizon, weight decay and augmentation applied to `training`.
    pub fn apply_to_training(&self, training: &mut SgdTraining) {
        training.epochs = self.epochs.unwrap_or(training.epochs);
        training.cosine_t_max = self.cosine_t_max.or(training.cosine_t_max);
        training.sgd.weight_decay = self.weight_decay.unwrap_or(training.sgd.weight_decay);
        self.apply_to_augment(&mut training.augment);
    }

    /// These flags' crop padding and flips applied to `augment`.
    pub fn apply_to_augment(&self, augment: &mut Augment) {
        augment.crop_padding = self.crop_padding.unwrap_or(augment.crop_padding);
        augment.flip &= !self.no_flip;
    }

    /// An error naming the first of `flags` given here (a method that has no use for them says
    /// `why`).
    pub fn refuse(&self, flags: &[Flag], why: &str) -> Result<()> {
        match flags.iter().find(|f| f.given(self)) {
            Some(f) => Err(Error::config(f.name(), why)),
            None => Ok(()),
        }
    }
}

/// The flags of [`SharedFlags`] beyond the common settings, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Epochs,
    CosineTMax,
    WeightDecay,
    /// `--crop-padding` or `--no-flip`.
    Augmentation,
}

impl Flag {
    /// The command line's name of the flag.
    pub fn name(self) -> &'static str {
        match self {
            Flag::Epochs => "epochs",
            Flag::CosineTMax => "cosine-t-max",
            Flag::WeightDecay => "weight-decay",
            Flag::Augmentation => "crop-padding/--no-flip",
        }
    }

    fn given(self, f: &SharedFlags) -> bool {
        match self {
            Flag::Epochs => f.epochs.is_some(),
            Flag::CosineTMax => f.cosine_t_max.is_some(),
            Flag::WeightDecay => f.weight_decay.is_some(),
            Flag::Augmentation => f.crop_padding.is_some() || f.no_flip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_left_out_keep_the_defaults_and_given_ones_replace_them() {
        let mut t = SgdTraining::paper(true);
        SharedFlags::default().apply_to_training(&mut t);
        assert_eq!(t, SgdTraining::paper(true));
        let f = SharedFlags {
            epochs: Some(7),
            weight_decay: Some(0.0),
            no_flip: true,
            ..SharedFlags::default()
        };
        f.apply_to_training(&mut t);
        assert_eq!(
            (t.epochs, t.sgd.weight_decay, t.augment.flip),
            (7, 0.0, false)
        );
        assert_eq!(t.augment.crop_padding, 4);
        assert_eq!(t.label_details(), vec!["7 ep".to_string()]);
        let e = f.refuse(&[Flag::CosineTMax, Flag::Epochs], "counts rounds");
        assert!(e.unwrap_err().to_string().contains("epochs"));
        assert!(f.refuse(&[Flag::CosineTMax], "x").is_ok());
    }

    #[test]
    fn the_common_settings_read_the_cleansers_older_name_for_the_suspect() {
        let mut v = serde_json::to_value(CommonSettings::new("runs/t".into(), 256, 0.01)).unwrap();
        let fields = v.as_object_mut().unwrap();
        let suspect = fields.remove("suspect").unwrap();
        fields.insert("teacher".into(), suspect);
        fields.remove("eval_every");
        let c: CommonSettings = serde_json::from_value(v).unwrap();
        assert_eq!(c.suspect, PathBuf::from("runs/t"));
        assert_eq!(c.eval_every, 1);
    }
}
