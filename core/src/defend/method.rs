//! What the family asks of each defense ([`Method`]): one implementation in each method's file,
//! reached from [`super::Defense`] through its one match (`Defense::as_method`).

use super::access::DefenderAccess;
use super::settings::{CommonSettings, SharedFlags};
use super::suspect::AsrSource;
use crate::Result;
use crate::device::Selected;
use crate::engine::Observer;
use crate::engine::run_dir::Canonical;
use crate::report::Report;
use std::path::Path;

/// How a defense run starts: its settings as its report records them (the family's JSON,
/// tagged by `method`), how a recorded configuration is compared on resume, what the ASR is
/// measured against, and where it runs.
pub struct Launch<'a> {
    pub config: serde_json::Value,
    pub canonical: Canonical,
    pub asr: &'a AsrSource,
    pub out: &'a Path,
    pub resume: bool,
    pub selected: &'a Selected,
    pub observer: &'a mut dyn Observer,
}

/// One defense method.
pub trait Method {
    /// The method's defaults for the suspect in `suspect` (`flip`: whether its data set allows
    /// horizontal flips).
    fn defaults(suspect: std::path::PathBuf, flip: bool) -> Self
    where
        Self: Sized;
    /// The method's name on the command line and in reports (`kd`, `ft`): the family's tag.
    fn name(&self) -> &'static str;
    /// The column name in tables (`KD`, `FT`).
    fn display_name(&self) -> &'static str;
    /// The column of the method in the supplement's attack x defense table (FT, FP, MCR, ANP,
    /// NAD, I-BAU, then the cleanser), counting from 1 ("No defense" is 0).
    fn table_position(&self) -> usize;
    /// What the defense may see of the defender's data.
    fn access(&self) -> DefenderAccess {
        DefenderAccess::Labelled
    }
    /// Whether the method trains its model through the engine's trainee, in `--precision`'s
    /// arithmetic; methods that do not (ANP's masks, I-BAU's hypergradient) compute in f32 and
    /// refuse a reduced precision.
    fn trains_in_reduced_precision(&self) -> bool {
        true
    }
    /// The settings every defense has.
    fn common(&self) -> &CommonSettings;
    fn common_mut(&mut self) -> &mut CommonSettings;
    /// Applies the shared flags beyond the common settings (epochs, the cosine horizon, weight
    /// decay, augmentation), or names one the method has no use for.
    fn apply_training(&mut self, flags: &SharedFlags) -> Result<()>;
    /// These settings with the shared flags applied: the common settings directly, the rest
    /// through [`Method::apply_training`] (an error names a flag the method has no use for). The
    /// one place such flags reach a configuration.
    fn with_flags(mut self, flags: &SharedFlags) -> Result<Self>
    where
        Self: Sized,
    {
        flags.apply_to_common(self.common_mut());
        self.apply_training(flags)?;
        Ok(self)
    }
    /// Why this configuration cannot run, if it cannot.
    fn validate(&self) -> Result<()>;
    /// The settings that set this run apart from the method's defaults, for table columns.
    fn label_details(&self) -> Vec<String>;
    /// Runs the defense (through [`super::run::run_defense`] with the method's preparation).
    fn run(&self, launch: Launch<'_>) -> Result<Report>;
}

/// `config`'s settings tagged with the method's name, as the family records them.
pub fn tagged<C: serde::Serialize>(name: &str, config: &C) -> serde_json::Value {
    let mut v = serde_json::to_value(config).expect("a defense's settings serialise");
    if let Some(fields) = v.as_object_mut() {
        fields.insert("method".into(), name.into());
    }
    v
}
