//! The defense family: the one enum that names every defense, with its typed configuration. A
//! defense run records it (tagged by `method`) in its report; adding a defense is one file in
//! `core/src/defend/`, one variant here and one CLI arm.

use super::anp::AnpConfig;
use super::cleanse::KdConfig;
use super::fp::FpConfig;
use super::ft::FtConfig;
use super::ibau::IbauConfig;
use super::mcr::McrConfig;
use super::nad::NadConfig;
use super::suspect::AsrSource;
use super::unlabeled::UnlabeledImages;
use crate::Result;
use crate::data::ImageSet;
use crate::device::Selected;
use crate::engine::Observer;
pub use crate::report::findings::Findings;
use crate::report::{DefenseRecord, Report};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A defense and all of its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Defense {
    /// The distillation cleanser of Pang et al. (2023): a layer-wise re-initialised student
    /// distilled from the suspect on unlabeled images.
    Kd(KdConfig),
    /// Fine-tuning the suspect with cross-entropy on the defender's labelled data.
    Ft(FtConfig),
    /// Fine-Pruning: the last stage's least active channels pruned, then fine-tuning.
    Fp(FpConfig),
    /// Neural Attention Distillation from the suspect fine-tuned briefly.
    Nad(NadConfig),
    /// Mode Connectivity Repair: a point on a curve trained between the suspect and its
    /// fine-tuned copy.
    Mcr(McrConfig),
    /// Adversarial Neuron Pruning: BN channels pruned by masks trained against weight noise.
    Anp(AnpConfig),
    /// Implicit Backdoor Adversarial Unlearning: minimax unlearning of a universal perturbation.
    Ibau(IbauConfig),
}

/// What a defense may see of the defender's held-out split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefenderAccess {
    /// The images only (the cleanser: [`super::unlabeled::UnlabeledImages`] has no labels).
    Images,
    /// Images and labels (the baselines, as the method spec allows).
    Labelled,
}

/// The defender's held-out split as a defense may see it (never the test images).
pub enum DefenderData {
    /// Images without labels.
    Images(UnlabeledImages),
    /// Images with their labels.
    Labelled(ImageSet),
}

impl DefenderData {
    /// The labelled images of a baseline defense, which trains on them: an error naming the
    /// suspect's run directory when that run held out none.
    pub(crate) fn labelled(self, suspect: &Path) -> Result<ImageSet> {
        match self {
            DefenderData::Labelled(set) if !set.is_empty() => Ok(set),
            DefenderData::Labelled(_) => Err(crate::Error::config(
                "model",
                format!(
                    "{}: the model's run held out no labelled images for the defender \
                     (train it with --holdout above 0)",
                    suspect.display()
                ),
            )),
            DefenderData::Images(_) => unreachable!("a baseline defense is given labels"),
        }
    }
}

impl Defense {
    /// The defense a report's record names (its `config`), or what is wrong with it.
    pub fn of_record(record: &DefenseRecord) -> std::result::Result<Defense, String> {
        serde_json::from_value(record.config.clone())
            .map_err(|e| format!("the defense's settings do not read: {e}"))
    }

    /// These settings as a report records them ([`DefenseRecord::config`]).
    pub fn record_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a defense's settings serialise")
    }

    /// The method's name on the command line and in reports (`kd`, `ft`).
    pub fn method(&self) -> &'static str {
        match self {
            Defense::Kd(_) => "kd",
            Defense::Ft(_) => "ft",
            Defense::Fp(_) => "fp",
            Defense::Nad(_) => "nad",
            Defense::Mcr(_) => "mcr",
            Defense::Anp(_) => "anp",
            Defense::Ibau(_) => "ibau",
        }
    }

    /// The column name in tables (`KD`, `FT`).
    pub fn display_name(&self) -> &'static str {
        match self {
            Defense::Kd(_) => "KD",
            Defense::Ft(_) => "FT",
            Defense::Fp(_) => "FP",
            Defense::Nad(_) => "NAD",
            Defense::Mcr(_) => "MCR",
            Defense::Anp(_) => "ANP",
            Defense::Ibau(_) => "I-BAU",
        }
    }

    /// What the defense may see of the defender's data.
    pub fn access(&self) -> DefenderAccess {
        match self {
            Defense::Kd(_) => DefenderAccess::Images,
            Defense::Ft(_)
            | Defense::Fp(_)
            | Defense::Nad(_)
            | Defense::Mcr(_)
            | Defense::Anp(_)
            | Defense::Ibau(_) => DefenderAccess::Labelled,
        }
    }

    /// The suspect model's run directory.
    pub fn suspect(&self) -> &Path {
        match self {
            Defense::Kd(c) => &c.teacher,
            Defense::Ft(c) => &c.suspect,
            Defense::Fp(c) => &c.ft.suspect,
            Defense::Nad(c) => &c.ft.suspect,
            Defense::Mcr(c) => &c.ft.suspect,
            Defense::Anp(c) => &c.suspect,
            Defense::Ibau(c) => &c.suspect,
        }
    }

    /// The seed of the run.
    pub fn seed(&self) -> u64 {
        match self {
            Defense::Kd(c) => c.seed,
            Defense::Ft(c) => c.seed,
            Defense::Fp(c) => c.ft.seed,
            Defense::Nad(c) => c.ft.seed,
            Defense::Mcr(c) => c.ft.seed,
            Defense::Anp(c) => c.seed,
            Defense::Ibau(c) => c.seed,
        }
    }

    /// The settings that set this run apart from the method's defaults, for table columns
    /// (e.g. `init single:3`, `on gtsrb`, `20 ep`); empty at the defaults.
    pub fn label_details(&self) -> Vec<String> {
        match self {
            Defense::Kd(c) => c.label_details(),
            Defense::Ft(c) => c.label_details(),
            Defense::Fp(c) => c.label_details(),
            Defense::Nad(c) => c.label_details(),
            Defense::Mcr(c) => c.label_details(),
            Defense::Anp(c) => c.label_details(),
            Defense::Ibau(c) => c.label_details(),
        }
    }

    /// The column label: the method's name and what differs from its defaults.
    pub fn label(&self) -> String {
        std::iter::once(self.display_name().to_string())
            .chain(self.label_details())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The column of the method in the supplement's attack x defense table (FT, FP, MCR, ANP,
    /// NAD, I-BAU, then the cleanser), counting from 1 ("No defense" is 0).
    pub fn table_position(&self) -> usize {
        match self {
            Defense::Ft(_) => 1,
            Defense::Fp(_) => 2,
            Defense::Mcr(_) => 3,
            Defense::Anp(_) => 4,
            Defense::Nad(_) => 5,
            Defense::Ibau(_) => 6,
            Defense::Kd(_) => 7,
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        match self {
            Defense::Kd(c) => c.validate(),
            Defense::Ft(c) => c.validate(),
            Defense::Fp(c) => c.validate(),
            Defense::Nad(c) => c.validate(),
            Defense::Mcr(c) => c.validate(),
            Defense::Anp(c) => c.validate(),
            Defense::Ibau(c) => c.validate(),
        }
    }

    /// Runs the defense into `out` (new or empty unless `resume`), measuring the ASR against
    /// what the suspect's run saved.
    pub fn run(
        &self,
        out: &Path,
        resume: bool,
        selected: &Selected,
        observer: &mut dyn Observer,
    ) -> Result<Report> {
        self.run_measured(&AsrSource::Saved, out, resume, selected, observer)
    }

    /// [`Defense::run`] measuring the ASR against `asr` (the defended model keeps it).
    pub fn run_measured(
        &self,
        asr: &AsrSource,
        out: &Path,
        resume: bool,
        selected: &Selected,
        observer: &mut dyn Observer,
    ) -> Result<Report> {
        use super::run::run_defense;
        use super::{anp, cleanse, fp, ft, ibau, mcr, nad};
        let o = observer;
        match self {
            Defense::Kd(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                cleanse::prepare(c, s, selected)
            }),
            Defense::Ft(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                ft::prepare(c, s, selected)
            }),
            Defense::Fp(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                fp::prepare(c, s, selected)
            }),
            Defense::Nad(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                nad::prepare(c, s, selected)
            }),
            Defense::Mcr(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                mcr::prepare(c, s, selected)
            }),
            Defense::Anp(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                anp::prepare(c, s, selected)
            }),
            Defense::Ibau(c) => run_defense(self, asr, out, resume, selected, o, |s| {
                ibau::prepare(c, s, selected)
            }),
        }
    }

    /// The batch size of training (ANP: of its mask updates; I-BAU: of its rounds).
    pub fn batch_size(&self) -> usize {
        match self {
            Defense::Kd(c) => c.batch_size,
            Defense::Ft(c) => c.batch_size,
            Defense::Fp(FpConfig { ft, .. })
            | Defense::Nad(NadConfig { ft, .. })
            | Defense::Mcr(McrConfig { ft, .. }) => ft.batch_size,
            Defense::Anp(c) => c.batch_size,
            Defense::Ibau(c) => c.batch_size,
        }
    }

    /// The batch size of the per-epoch evaluation.
    pub fn eval_batch_size(&self) -> usize {
        match self {
            Defense::Kd(c) => c.eval_batch_size,
            Defense::Ft(c) => c.eval_batch_size,
            Defense::Fp(FpConfig { ft, .. })
            | Defense::Nad(NadConfig { ft, .. })
            | Defense::Mcr(McrConfig { ft, .. }) => ft.eval_batch_size,
            Defense::Anp(c) => c.eval_batch_size,
            Defense::Ibau(c) => c.eval_batch_size,
        }
    }

    /// Evaluate after every Nth epoch (round, mask-update group) and the last.
    pub fn eval_every(&self) -> usize {
        match self {
            Defense::Kd(c) => c.eval_every,
            Defense::Ft(c) => c.eval_every,
            Defense::Fp(FpConfig { ft, .. })
            | Defense::Nad(NadConfig { ft, .. })
            | Defense::Mcr(McrConfig { ft, .. }) => ft.eval_every,
            Defense::Anp(c) => c.eval_every,
            Defense::Ibau(c) => c.eval_every,
        }
    }

    /// [`crate::engine::run_dir::Canonical`] for defense configurations: parsed as a defense,
    /// or as the cleanser's configuration alone (checkpoints written before the family existed).
    pub fn canonical(v: &serde_json::Value) -> serde_json::Value {
        // A run measured against another ASR source: `{"defense": ..., "asr": ...}`.
        if let (Some(d), Some(asr)) = (v.get("defense"), v.get("asr")) {
            return serde_json::json!({ "defense": Self::canonical(d), "asr": asr });
        }
        if let Ok(d) = serde_json::from_value::<Defense>(v.clone()) {
            return serde_json::to_value(d).unwrap_or_else(|_| v.clone());
        }
        match serde_json::from_value::<KdConfig>(v.clone()) {
            Ok(c) => serde_json::to_value(Defense::Kd(c)).unwrap_or_else(|_| v.clone()),
            Err(_) => v.clone(),
        }
    }
}
