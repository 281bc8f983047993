//! The six backdoor attacks: BadNets, Blended, SIG, Label-Consistent (LC), WaNet and Input-Aware
//! (IAB), their poisoned training, and the attack success rate.
//!
//! An attack run writes, beside the model, everything needed to re-apply the trigger:
//! `attack.json` (the configuration, the trigger's parameters and the poisoned indices) and, for
//! WaNet, the warp grid in `warp_grid.f32`.

pub mod iab;
pub mod lc;
pub mod poison;
pub mod spec;
pub mod training;
pub mod trigger;
pub mod triggered;
pub mod warp;

pub use poison::{AttackHooks, attack_success_rate};
pub use trigger::Trigger;

use crate::data::{DatasetKind, ImageSet};
use crate::io::{write_atomic, write_json_atomic};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackKind {
    Badnets,
    Blended,
    Sig,
    Lc,
    Wanet,
    Iab,
}

impl AttackKind {
    pub const ALL: [AttackKind; 6] = [
        AttackKind::Badnets,
        AttackKind::Blended,
        AttackKind::Sig,
        AttackKind::Lc,
        AttackKind::Wanet,
        AttackKind::Iab,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Badnets => "badnets",
            AttackKind::Blended => "blended",
            AttackKind::Sig => "sig",
            AttackKind::Lc => "lc",
            AttackKind::Wanet => "wanet",
            AttackKind::Iab => "iab",
        }
    }

    /// Clean-label attacks poison only target-class images and never change a label.
    pub fn is_clean_label(self) -> bool {
        matches!(self, AttackKind::Sig | AttackKind::Lc)
    }

    /// Training-control attacks poison inside each batch of the training loop.
    pub fn is_training_control(self) -> bool {
        matches!(self, AttackKind::Wanet | AttackKind::Iab)
    }
}

/// When a data-poisoning trigger is stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stamping {
    /// On the stored training images, before crop/flip augmentation, as the reference
    /// implementations do (a pure data-poisoning attacker).
    BeforeAugment,
    /// On each augmented training batch (an attacker who controls training): the trigger stays
    /// intact at its position in every epoch.
    AfterAugment,
}

/// Everything that defines an attack. Defaults ([`AttackConfig::supplement`]) are the
/// supplement's values; [`AttackConfig::authors_code`] the authors' code where it differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackConfig {
    pub kind: AttackKind,
    /// Target class of an all-to-one attack.
    pub target: usize,
    /// All-to-all: label `y` becomes `(y + 1) mod K`.
    pub all_to_all: bool,
    /// Dirty-label attacks: fraction of the attacker's training set; clean-label attacks:
    /// fraction of the target class; WaNet and IAB: backdoor fraction of each batch.
    pub poison_rate: f64,
    pub stamping: Stamping,
    /// Seeds the trigger pattern and the choice of poisoned images.
    pub seed: u64,
    /// Blended: blend ratio (0.2 at train and test).
    pub blend_alpha: f32,
    /// SIG: amplitude in `[0,1]` units (20/255 on CIFAR-10, 60/255 on GTSRB).
    pub sig_delta: f32,
    /// SIG: frequency (6).
    pub sig_frequency: f32,
    /// LC: L-inf radius of the PGD perturbation (supplement 16/255; code 8/255 on CIFAR-10).
    pub lc_eps: f32,
    /// LC: PGD step size (1.5/255).
    pub lc_step: f32,
    /// LC: PGD steps (100).
    pub lc_steps: usize,
    /// WaNet: control grid size k (4).
    pub wanet_k: usize,
    /// WaNet: warp strength s (0.5).
    pub wanet_s: f32,
    /// WaNet: noise-mode samples per backdoor sample (2).
    pub wanet_cross_ratio: f64,
    /// IAB: mask-network pre-training epochs (25).
    pub iab_mask_epochs: usize,
    /// IAB: fraction of each batch made into cross samples (0.1).
    pub iab_cross_rate: f64,
    /// IAB: mask density bound (0.032).
    pub iab_mask_density: f32,
    /// IAB: weight of the diversity loss (1).
    pub iab_lambda_div: f32,
    /// IAB: weight of the mask-norm loss (100).
    pub iab_lambda_norm: f32,
    /// IAB: learning rate of the generator and mask networks (Adam, 0.01).
    pub iab_lr: f64,
    /// IAB: base channel width of the generator and mask networks (32).
    pub iab_width: usize,
}

impl AttackConfig {
    /// The supplement's settings for `kind` on `dataset`.
    pub fn supplement(kind: AttackKind, dataset: DatasetKind) -> Self {
        let poison_rate = match kind {
            AttackKind::Sig | AttackKind::Lc => 0.8,
            _ => 0.1,
        };
        AttackConfig {
            kind,
            target: 0,
            all_to_all: false,
            poison_rate,
            stamping: Stamping::BeforeAugment,
            seed: 0,
            blend_alpha: 0.2,
            sig_delta: match dataset {
                DatasetKind::Gtsrb => 60.0 / 255.0,
                _ => 20.0 / 255.0,
            },
            sig_frequency: 6.0,
            lc_eps: 16.0 / 255.0,
            lc_step: 1.5 / 255.0,
            lc_steps: 100,
            wanet_k: 4,
            wanet_s: 0.5,
            wanet_cross_ratio: 2.0,
            iab_mask_epochs: 25,
            iab_cross_rate: 0.1,
            iab_mask_density: 0.032,
            iab_lambda_div: 1.0,
            iab_lambda_norm: 100.0,
            iab_lr: 0.01,
            iab_width: 32,
        }
    }

    /// The authors' code where it differs from the supplement: LC with eps 8/255 poisoning 50% of
    /// the target class on CIFAR-10.
    pub fn authors_code(kind: AttackKind, dataset: DatasetKind) -> Self {
        let mut c = Self::supplement(kind, dataset);
        if kind == AttackKind::Lc && dataset == DatasetKind::Cifar10 {
            c.lc_eps = 8.0 / 255.0;
            c.poison_rate = 0.5;
        }
        c
    }

    /// Checks ranges against the data the attack will run on.
    pub fn validate(&self, num_classes: usize) -> Result<()> {
        if !self.all_to_all && self.target >= num_classes {
            return Err(Error::config(
                "target",
                format!(
                    "class {} does not exist; the data set has classes 0..{}",
                    self.target,
                    num_classes.saturating_sub(1)
                ),
            ));
        }
        if self.all_to_all && self.kind.is_clean_label() {
            return Err(Error::config(
                "all-to-all",
                format!(
                    "{} is a clean-label attack on one target class; all-to-all is for dirty-label and training-control attacks",
                    self.kind.name()
                ),
            ));
        }
        if !(self.poison_rate > 0.0 && self.poison_rate <= 1.0) {
            return Err(Error::config(
                "poison-rate",
                format!("must be in (0, 1]; got {}", self.poison_rate),
            ));
        }
        if self.kind.is_training_control() {
            let cross = match self.kind {
                AttackKind::Wanet => self.poison_rate * (1.0 + self.wanet_cross_ratio),
                _ => self.poison_rate + self.iab_cross_rate,
            };
            if cross > 1.0 {
                return Err(Error::config(
                    "poison-rate",
                    format!(
                        "backdoor plus cross/noise samples would be {:.0}% of each batch; lower the rate",
                        cross * 100.0
                    ),
                ));
            }
        }
        // 0 would be an invisible trigger: no attack at all.
        if !(self.blend_alpha > 0.0 && self.blend_alpha <= 1.0) {
            return Err(Error::config(
                "blend-alpha",
                format!("must be in (0, 1]; got {}", self.blend_alpha),
            ));
        }
        if !(self.wanet_cross_ratio.is_finite() && self.wanet_cross_ratio >= 0.0) {
            return Err(Error::config(
                "wanet-cross-ratio",
                format!(
                    "must be a number >= 0 (noise samples per backdoor sample; 0 turns the noise mode off); got {}",
                    self.wanet_cross_ratio
                ),
            ));
        }
        if self.wanet_k < 2 {
            return Err(Error::config("wanet-k", "must be at least 2"));
        }
        // Amplitudes in [0,1] pixel units, given on the command line in 1/255 steps.
        for (name, v) in [
            ("sig-delta", self.sig_delta),
            ("lc-eps", self.lc_eps),
            ("lc-step", self.lc_step),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::config(
                    name,
                    format!("must be in (0, 255] (in 1/255 units); got {}", v * 255.0),
                ));
            }
        }
        for (name, v) in [
            ("sig-frequency", f64::from(self.sig_frequency)),
            ("wanet-s", f64::from(self.wanet_s)),
            ("iab-lr", self.iab_lr),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    name,
                    format!("must be a positive number; got {v}"),
                ));
            }
        }
        for (name, v) in [
            ("iab-lambda-div", self.iab_lambda_div),
            ("iab-lambda-norm", self.iab_lambda_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(
                    name,
                    format!("must be a number >= 0; got {v}"),
                ));
            }
        }
        if self.lc_steps == 0 {
            return Err(Error::config("lc-steps", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.iab_cross_rate) {
            return Err(Error::config(
                "iab-cross-rate",
                format!("must be in [0, 1); got {}", self.iab_cross_rate),
            ));
        }
        if !(self.iab_mask_density > 0.0 && self.iab_mask_density <= 1.0) {
            return Err(Error::config(
                "iab-mask-density",
                format!("must be in (0, 1]; got {}", self.iab_mask_density),
            ));
        }
        crate::model::check_width("iab-width", self.iab_width)
    }

    /// The label a triggered image of class `y` should get.
    pub fn target_of(&self, y: usize, num_classes: usize) -> usize {
        if self.all_to_all {
            (y + 1) % num_classes
        } else {
            self.target
        }
    }
}

/// A realised attack: the configuration plus everything drawn from its seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attack {
    pub config: AttackConfig,
    pub num_classes: usize,
    /// `[C, H, W]` of the images.
    pub image_shape: [usize; 3],
    /// The test-time trigger (IAB: none; its networks are saved beside).
    pub trigger: Option<Trigger>,
    /// WaNet's control points (`2 x k x k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanet_control_points: Option<Vec<f32>>,
    /// Poisoned images, as indices into the data set's training part.
    pub poisoned: Vec<usize>,
}

/// Names of the attack files of a run directory.
pub mod files {
    pub const ATTACK: &str = "attack.json";
    pub const WARP_GRID: &str = "warp_grid.f32";
    pub const IAB_GENERATOR: &str = "iab_generator.bpk";
    pub const IAB_MASK: &str = "iab_mask.bpk";
}

impl Attack {
    /// Draws the trigger of `config` for images shaped like `set`.
    pub fn new(config: AttackConfig, set: &ImageSet) -> Result<Attack> {
        config.validate(set.num_classes)?;
        let (c, h, w) = (set.channels, set.height, set.width);
        if h < 3 || w < 3 {
            return Err(Error::config(
                "image-size",
                format!("attacks need images of at least 3x3; got {h}x{w}"),
            ));
        }
        if config.kind == AttackKind::Wanet && config.wanet_k > h.min(w) {
            return Err(Error::config(
                "wanet-k",
                format!(
                    "a {k}x{k} control grid is finer than the {h}x{w} images; use at most {}",
                    h.min(w),
                    k = config.wanet_k
                ),
            ));
        }
        let mut control = None;
        let trigger = match config.kind {
            AttackKind::Badnets => Some(Trigger::badnets(c, h, w)),
            AttackKind::Blended => Some(Trigger::blended(c, h, w, config.blend_alpha, config.seed)),
            AttackKind::Sig => Some(Trigger::signal(
                c,
                h,
                w,
                config.sig_delta,
                config.sig_frequency,
            )),
            AttackKind::Lc => Some(Trigger::four_corners(c, h, w)),
            AttackKind::Wanet => {
                let ins = warp::wanet_control_points(config.wanet_k, config.seed);
                let t = Trigger::warp(c, h, w, &ins, config.wanet_k, config.wanet_s);
                control = Some(ins);
                Some(t)
            }
            AttackKind::Iab => None,
        };
        Ok(Attack {
            num_classes: set.num_classes,
            image_shape: [c, h, w],
            config,
            trigger,
            wanet_control_points: control,
            poisoned: Vec::new(),
        })
    }

    /// Checks an attack read from a file: its settings, classes, image shape and trigger, so that a
    /// foreign or edited `attack.json` is an error rather than a panic when the trigger is applied.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(2..=crate::model::MAX_CLASSES).contains(&self.num_classes) {
            return Err(format!("num_classes {} out of range", self.num_classes));
        }
        self.config
            .validate(self.num_classes)
            .map_err(|e| e.to_string())?;
        if let Some(reason) = trigger::image_shape_problem(self.image_shape) {
            return Err(reason);
        }
        if let Some(t) = &self.trigger {
            if let Some(reason) = t.check() {
                return Err(reason);
            }
            if t.shape() != self.image_shape {
                return Err(format!(
                    "the trigger is for {:?} images but the attack for {:?}",
                    t.shape(),
                    self.image_shape
                ));
            }
        }
        if let Some(p) = &self.wanet_control_points {
            let k = self.config.wanet_k;
            if Some(p.len()) != k.checked_mul(k).and_then(|kk| kk.checked_mul(2)) {
                return Err(format!(
                    "{} WaNet control points; expected 2 x {k} x {k}",
                    p.len()
                ));
            }
        }
        Ok(())
    }

    /// Writes `attack.json` (and the warp grid) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        if let Some(Trigger::Warp { grid, .. }) = &self.trigger {
            let bytes: Vec<u8> = grid.iter().flat_map(|v| v.to_le_bytes()).collect();
            write_atomic(&dir.join(files::WARP_GRID), &bytes)?;
        }
        write_json_atomic(&dir.join(files::ATTACK), self)
    }

    /// Whether `dir` holds a saved attack.
    pub fn exists(dir: &Path) -> bool {
        dir.join(files::ATTACK).is_file()
    }

    /// Reads an attack saved by [`Attack::save`].
    pub fn load(dir: &Path) -> Result<Attack> {
        let path = dir.join(files::ATTACK);
        if !path.is_file() {
            return Err(Error::artifact(
                dir,
                "no attack here (expected attack.json, written by `cleanse attack`)",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let gpath = dir.join(files::WARP_GRID);
        let grid = match gpath.is_file() {
            true => Some(std::fs::read(&gpath).map_err(|e| Error::io(&gpath, e))?),
            false => None,
        };
        Attack::from_saved(&path, &text, grid.as_deref(), &gpath)
    }

    /// An attack from the text of its `attack.json` and, for WaNet, the bytes of its warp grid
    /// file (`path` and `grid_path` are what errors call them).
    pub fn from_saved(
        path: &Path,
        text: &str,
        grid_bytes: Option<&[u8]>,
        grid_path: &Path,
    ) -> Result<Attack> {
        let mut attack: Attack = serde_json::from_str(text)
            .map_err(|e| Error::artifact(path, format!("invalid JSON: {e}")))?;
        // Before the grid's size is computed from it.
        if let Some(reason) = attack
            .trigger
            .as_ref()
            .and_then(|t| trigger::image_shape_problem(t.shape()))
        {
            return Err(Error::artifact(path, format!("trigger: {reason}")));
        }
        if let Some(Trigger::Warp {
            grid,
            height,
            width,
            ..
        }) = &mut attack.trigger
        {
            let bytes = grid_bytes.ok_or_else(|| {
                Error::artifact(grid_path, "missing: a WaNet attack needs its warp grid")
            })?;
            let expected = *height * *width * 2 * 4;
            if bytes.len() != expected {
                return Err(Error::artifact(
                    grid_path,
                    format!(
                        "expected {expected} bytes (a {}x{}x2 f32 grid); found {}",
                        height,
                        width,
                        bytes.len()
                    ),
                ));
            }
            *grid = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
        }
        attack
            .check()
            .map_err(|reason| Error::artifact(path, reason))?;
        Ok(attack)
    }
}

/// The test-time trigger of a saved attack: a static trigger or IAB's networks.
#[derive(Clone, Debug)]
pub enum Backdoor {
    Static(Trigger),
    Iab(Box<iab::IabNets>),
    /// The images already carry the trigger (a folder of triggered images): nothing is stamped.
    Stamped,
}

impl Backdoor {
    /// Stamps the trigger on `[N, C, H, W]` images in `[0, 1]`.
    pub fn apply(&self, x: burn::prelude::Tensor<4>) -> burn::prelude::Tensor<4> {
        match self {
            Backdoor::Static(t) => t.apply(x),
            Backdoor::Iab(n) => n.stamp(x),
            Backdoor::Stamped => x,
        }
    }
}

/// How an attacked training run's recorded configuration (`{"train": ..., "attack": ...}`) is
/// made comparable with today's: both parts through their types (the attacks' hooks'
/// [`crate::train::run::TrainHooks::canonical`]).
pub fn canonical_run(v: &serde_json::Value) -> serde_json::Value {
    let mut c = crate::train::run::canonical_config(v);
    if let (Some(a), Some(fields)) = (v.get("attack"), c.as_object_mut()) {
        fields.insert(
            "attack".into(),
            crate::engine::run_dir::canonical_as::<AttackConfig>(a),
        );
    }
    c
}

impl crate::engine::meter::Stamp for Backdoor {
    fn stamp(&self, x: burn::prelude::Tensor<4>) -> burn::prelude::Tensor<4> {
        self.apply(x)
    }
}
