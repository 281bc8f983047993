//! The suspect model: a saved run's model with the attack it is measured against (its own, or
//! another run's) and its data set's test images, checked to fit together. What every defense,
//! `eval` and `tsne` start from; the browser loads a run's files through the same
//! [`load_model`] and [`load_attack`].

use crate::attack::iab::IabNets;
use crate::attack::poison::asr_set;
use crate::attack::triggered::TriggeredData;
use crate::attack::{Attack, AttackConfig, AttackKind, Backdoor};
use crate::data::split::SplitFile;
use crate::data::{DataSpec, ImageSet};
use crate::engine::meter::AsrMeter;
use crate::engine::run_dir::files;
use crate::engine::run_files::{RunFiles, load_model};
use crate::io::read_json;
use crate::model::{Classifier, ModelConfig};
use crate::{Error, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The attack saved in a run's files (`attack.json`, with WaNet's grid) and its trigger on
/// `device` (IAB: its two networks); `None` when the run holds no attack.
pub fn load_attack<F: RunFiles + ?Sized>(
    files: &F,
    device: &Device,
) -> Result<Option<(Attack, Backdoor)>> {
    use crate::attack::files as af;
    let Some(bytes) = files.read(af::ATTACK)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::artifact(files.path(af::ATTACK), "not UTF-8 text"))?;
    let grid = files.read(af::WARP_GRID)?;
    let attack = Attack::from_saved(
        &files.path(af::ATTACK),
        text,
        grid.as_deref(),
        &files.path(af::WARP_GRID),
    )?;
    let backdoor = match (&attack.trigger, attack.config.kind) {
        (Some(t), _) => Backdoor::Static(t.clone()),
        (None, AttackKind::Iab) => Backdoor::Iab(Box::new(IabNets::from_bytes(
            files.need(af::IAB_GENERATOR, "IAB's generator")?,
            files.need(af::IAB_MASK, "IAB's mask network")?,
            [&files.path(af::IAB_GENERATOR), &files.path(af::IAB_MASK)],
            attack.image_shape[0],
            attack.config.iab_width,
            device,
        )?)),
        (None, k) => {
            return Err(Error::artifact(
                files.path(af::ATTACK),
                format!("a {} attack without its trigger", k.name()),
            ));
        }
    };
    Ok(Some((attack, backdoor)))
}

/// What the ASR of a suspect, and of every model a defense makes from it, is measured against.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsrSource {
    /// The attack or triggered images saved in its run, if any.
    #[default]
    Saved,
    /// A trigger drawn from these settings (e.g. [`crate::attack::spec::parse`] of
    /// `KIND[:key=value,...]`).
    Spec(AttackConfig),
    /// A folder of already-triggered test images.
    Triggered(TriggeredData),
}

/// A loaded suspect model.
pub struct Suspect {
    /// Its run directory.
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// An evaluation copy on the device it was loaded onto.
    pub model: Classifier,
    /// The split file of its run (which training images were held out), when it has one.
    pub split: Option<SplitFile>,
    /// The directory of the attack it is measured against, and the attack.
    pub attack_dir: Option<PathBuf>,
    pub attack: Option<Attack>,
    /// The attack's trigger (IAB: its networks), on the device.
    pub backdoor: Option<Backdoor>,
    /// The kind of its data set.
    pub dataset: crate::data::DatasetKind,
    /// Already-triggered test images to measure the ASR on (its run's `triggered.json`, or given
    /// by [`Suspect::measured_by`]); they take the place of the attack's stamped test images.
    pub triggered: Option<(TriggeredData, Arc<ImageSet>)>,
    /// The test images of its data set (the attack's when the model has no split file).
    pub test: Arc<ImageSet>,
    /// The images its run held out for the defender, cut from the same load of the data set.
    holdout: Option<ImageSet>,
}

impl Suspect {
    /// Loads the model of run directory `dir` onto `device`, the attack saved in `attack` (else
    /// in `dir`, when it holds one) with its trigger, and the test images.
    pub fn load(dir: &Path, attack: Option<&Path>, device: &Device) -> Result<Suspect> {
        let (config, model) = load_model(dir, device)?;
        let attack_dir = match attack {
            Some(d) => Some(d.to_path_buf()),
            None if Attack::exists(dir) => Some(dir.to_path_buf()),
            None => None,
        };
        let (attack, backdoor) = match &attack_dir {
            Some(d) => match load_attack(d.as_path(), device)? {
                Some((a, b)) => (Some(a), Some(b)),
                None => {
                    return Err(Error::artifact(
                        d,
                        "no attack here (expected attack.json, written by `cleanse attack`)",
                    ));
                }
            },
            None => (None, None),
        };
        let split = read_json::<SplitFile>(&dir.join(files::SPLIT));
        let spec: DataSpec = match (&split, &attack_dir) {
            (Ok(s), _) => s.data.clone(),
            (Err(_), Some(d)) => read_json::<SplitFile>(&d.join(files::SPLIT))?.data,
            (Err(e), None) => {
                return Err(Error::artifact(
                    dir.join(files::SPLIT),
                    format!("not a run directory (no split file to find its data by): {e}"),
                ));
            }
        };
        let mut data = spec.load()?;
        let holdout = match &split {
            Ok(s) => Some(s.defender_data(&mut data, &dir.join(files::SPLIT))?),
            Err(_) => None,
        };
        let test = data.test;
        let num_classes = config.num_classes;
        if test.num_classes != num_classes {
            return Err(Error::artifact(
                dir,
                format!(
                    "the model has {num_classes} classes but its data set has {}",
                    test.num_classes
                ),
            ));
        }
        let shape = [test.channels, test.height, test.width];
        if let (Some(a), Some(d)) = (&attack, &attack_dir)
            && (a.num_classes != num_classes || a.image_shape != shape)
        {
            return Err(Error::artifact(
                d,
                format!(
                    "the attack was made for {} classes of {:?} images; the model is for \
                     {num_classes} classes of {shape:?}",
                    a.num_classes, a.image_shape
                ),
            ));
        }
        let triggered = match TriggeredData::read(dir)? {
            Some(t) => {
                let set = t.load(num_classes, shape)?;
                Some((t, Arc::new(set)))
            }
            None => None,
        };
        Ok(Suspect {
            dir: dir.to_path_buf(),
            config,
            model,
            split: split.ok(),
            attack_dir,
            attack,
            backdoor,
            dataset: spec.kind,
            triggered,
            test: Arc::new(test),
            holdout,
        })
    }

    /// Measures against `attack` (drawn by [`Attack::new`] for this suspect's test images)
    /// instead of a saved one.
    fn with_attack(mut self, attack: Attack) -> Result<Suspect> {
        let Some(trigger) = attack.trigger.clone() else {
            return Err(Error::config(
                "attack-spec",
                format!(
                    "a {} attack has no trigger drawn from its settings",
                    attack.config.kind.name()
                ),
            ));
        };
        self.attack_dir = None;
        self.backdoor = Some(Backdoor::Static(trigger));
        self.attack = Some(attack);
        Ok(self)
    }

    /// Measures against `source` instead of what its run saved (no change for
    /// [`AsrSource::Saved`]).
    pub fn measured_by(self, source: &AsrSource) -> Result<Suspect> {
        match source {
            AsrSource::Saved => Ok(self),
            AsrSource::Spec(config) => {
                let attack = Attack::new(config.clone(), &self.test)?;
                let mut s = self.with_attack(attack)?;
                s.triggered = None;
                Ok(s)
            }
            AsrSource::Triggered(t) => self.with_triggered(t.clone()),
        }
    }

    /// Measures on the already-triggered images of `triggered` instead of stamping a trigger.
    fn with_triggered(mut self, triggered: TriggeredData) -> Result<Suspect> {
        let t = &self.test;
        let set = triggered.load(self.config.num_classes, [t.channels, t.height, t.width])?;
        self.triggered = Some((triggered, Arc::new(set)));
        Ok(self)
    }

    /// The triggered test images and the trigger to measure an ASR with, if there is an attack
    /// or a folder of triggered images.
    pub fn asr_meter(&self, batch_size: usize, device: &Device) -> Option<AsrMeter> {
        if let Some((_, set)) = &self.triggered {
            return Some(AsrMeter::new(
                set.clone(),
                Arc::new(Backdoor::Stamped),
                batch_size,
                device,
            ));
        }
        let (a, b) = (self.attack.as_ref()?, self.backdoor.as_ref()?);
        Some(AsrMeter::new(
            Arc::new(asr_set(a, &self.test)),
            Arc::new(b.clone()),
            batch_size,
            device,
        ))
    }

    /// The held-out split of the suspect's training set: the defender's data.
    pub fn holdout(&self) -> Result<ImageSet> {
        let path = self.dir.join(files::SPLIT);
        match &self.holdout {
            None => Err(Error::artifact(
                path,
                "no split file: the model's run held out no defender data",
            )),
            Some(h) if h.is_empty() => Err(Error::NoData {
                path,
                reason: "the model's run held out no image (trained with --holdout 0); a \
                         defense needs the held-out images"
                    .into(),
            }),
            Some(h) => Ok(h.clone()),
        }
    }

    /// Writes into `out` what makes a model derived from this one evaluate like it: the split
    /// file, the attack with its trigger files and the folder of triggered images.
    pub fn save_evaluation_files(&self, out: &Path) -> Result<()> {
        if let Some((t, _)) = &self.triggered {
            crate::io::write_json_atomic(&out.join(crate::attack::triggered::FILE), t)?;
        }
        if let Some(split) = &self.split {
            crate::io::write_json_atomic(&out.join(files::SPLIT), split)?;
        }
        if let Some(a) = &self.attack {
            a.save(out)?;
        }
        if let (Some(a), Some(dir)) = (&self.attack, &self.attack_dir)
            && a.config.kind == crate::attack::AttackKind::Iab
        {
            for f in [
                crate::attack::files::IAB_GENERATOR,
                crate::attack::files::IAB_MASK,
            ] {
                let (from, to) = (dir.join(f), out.join(f));
                let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                crate::io::write_atomic(&to, &bytes)?;
            }
        }
        Ok(())
    }
}
