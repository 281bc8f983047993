//! The defense family: the one enum that names every defense, with its typed configuration. A
//! defense run records it (tagged by `method`) in its report; adding a defense is one file in
//! `core/src/defend/` (its configuration and its [`Method`]), one line in the `family!` list
//! below, and one CLI arm.

use super::access::DefenderAccess;
use super::anp::AnpConfig;
use super::cleanse::KdConfig;
use super::fp::FpConfig;
use super::ft::FtConfig;
use super::ibau::IbauConfig;
use super::mcr::McrConfig;
use super::method::{Launch, Method};
use super::nad::NadConfig;
use super::settings::CommonSettings;
use super::suspect::AsrSource;
use crate::Result;
use crate::device::Selected;
use crate::engine::Observer;
use crate::report::{DefenseRecord, Report};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Declares the family from one list: the enum (its serde tag is the variant's name in snake
/// case), [`Defense::as_method`] and [`Defense::paper_family`].
macro_rules! family {
    ($($(#[$doc:meta])* $variant:ident($config:ty),)*) => {
        /// A defense and all of its settings.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method", rename_all = "snake_case")]
        pub enum Defense {
            $($(#[$doc])* $variant($config),)*
        }

        impl Defense {
            /// The method behind this member of the family: the one place that matches on it.
            pub fn as_method(&self) -> &dyn Method {
                match self {
                    $(Defense::$variant(c) => c,)*
                }
            }

            /// Every member of the family at the method's defaults, for `suspect` (`flip`:
            /// whether its data set allows flips), in the order of the enum: where the command
            /// line's help reads the defaults it shows.
            pub fn paper_family(suspect: &Path, flip: bool) -> Vec<Defense> {
                vec![$(Defense::$variant(<$config as Method>::defaults(suspect.to_path_buf(), flip)),)*]
            }
        }
    };
}

family! {
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

    /// The settings every defense has.
    pub fn common(&self) -> &CommonSettings {
        self.as_method().common()
    }

    /// The method's name on the command line and in reports (`kd`, `ft`).
    pub fn method(&self) -> &'static str {
        self.as_method().name()
    }

    /// The column name in tables (`KD`, `FT`).
    pub fn display_name(&self) -> &'static str {
        self.as_method().display_name()
    }

    /// What the defense may see of the defender's data.
    pub fn access(&self) -> DefenderAccess {
        self.as_method().access()
    }

    /// The suspect model's run directory.
    pub fn suspect(&self) -> &Path {
        &self.as_method().common().suspect
    }

    /// The seed of the run.
    pub fn seed(&self) -> u64 {
        self.as_method().common().seed
    }

    /// The settings that set this run apart from the method's defaults, for table columns
    /// (e.g. `init single:3`, `on gtsrb`, `20 ep`); empty at the defaults.
    pub fn label_details(&self) -> Vec<String> {
        self.as_method().label_details()
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
        self.as_method().table_position()
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<()> {
        self.as_method().validate()
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
        let method = self.as_method();
        if selected.precision() != crate::precision::Precision::F32
            && !method.trains_in_reduced_precision()
        {
            return Err(crate::Error::config(
                "precision",
                format!(
                    "`{}`: {} computes in f32 (it trains no classifier with the engine's \
                     trainee): use --precision f32",
                    selected.precision(),
                    method.display_name()
                ),
            ));
        }
        method.run(Launch {
            config: self.record_value(),
            canonical: Defense::canonical,
            asr,
            out,
            resume,
            selected,
            observer,
        })
    }

    /// The batch size of training (ANP: of its mask updates; I-BAU: of its rounds).
    pub fn batch_size(&self) -> usize {
        self.as_method().common().batch_size
    }

    /// The batch size of the per-epoch evaluation.
    pub fn eval_batch_size(&self) -> usize {
        self.as_method().common().eval_batch_size
    }

    /// Evaluate after every Nth epoch (round, mask-update group) and the last.
    pub fn eval_every(&self) -> usize {
        self.as_method().common().eval_every
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

#[cfg(test)]
mod tests {
    use super::*;

    fn family() -> Vec<Defense> {
        Defense::paper_family(Path::new("runs/x"), true)
    }

    #[test]
    fn each_methods_name_is_its_tag_in_the_family_and_its_column_is_its_own() {
        let mut positions = Vec::new();
        for d in family() {
            let v = d.record_value();
            assert_eq!(v["method"], d.method(), "{v}");
            let back = serde_json::from_value::<Defense>(v).expect("reads back");
            assert_eq!(back, d);
            assert_eq!(d.suspect(), std::path::Path::new("runs/x"));
            positions.push(d.table_position());
        }
        positions.sort();
        assert_eq!(positions, (1..=7).collect::<Vec<_>>());
        // A nested fine-tuning run records its settings the way the family does.
        let ft = FtConfig::paper("runs/x".into(), true);
        assert_eq!(
            super::super::method::tagged(Method::name(&ft), &ft),
            Defense::Ft(ft).record_value()
        );
    }
}
