//! The suspect model: a saved run's model with the attack it is measured against (its own, or
//! another run's) and its data set's test images, checked to fit together. What every defense,
//! `eval` and `tsne` start from.

use crate::attack::meter::AsrMeter;
use crate::attack::poison::asr_set;
use crate::attack::{Attack, Backdoor};
use crate::data::{DataSpec, ImageSet};
use crate::io::read_json;
use crate::model::{Classifier, ModelConfig};
use crate::train::run::{SplitFile, files, load_run_model};
use crate::{Error, Result};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The test images of its data set (the attack's when the model has no split file).
    pub test: Arc<ImageSet>,
}

impl Suspect {
    /// Loads the model of run directory `dir` onto `device`, the attack saved in `attack` (else
    /// in `dir`, when it holds one) with its trigger, and the test images.
    pub fn load(dir: &Path, attack: Option<&Path>, device: &Device) -> Result<Suspect> {
        let loaded = load_run_model(dir, device)?;
        let attack_dir = match attack {
            Some(d) => Some(d.to_path_buf()),
            None if Attack::exists(dir) => Some(dir.to_path_buf()),
            None => None,
        };
        let attack = attack_dir.as_deref().map(Attack::load).transpose()?;
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
        let test = spec.load()?.test;
        let num_classes = loaded.config.num_classes;
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
        let backdoor = match (&attack, &attack_dir) {
            (Some(a), Some(d)) => {
                if a.num_classes != num_classes || a.image_shape != shape {
                    return Err(Error::artifact(
                        d,
                        format!(
                            "the attack was made for {} classes of {:?} images; the model is for \
                             {num_classes} classes of {shape:?}",
                            a.num_classes, a.image_shape
                        ),
                    ));
                }
                Some(Backdoor::load(d, a, device)?)
            }
            _ => None,
        };
        Ok(Suspect {
            dir: dir.to_path_buf(),
            config: loaded.config,
            model: loaded.model,
            split: split.ok(),
            attack_dir,
            attack,
            backdoor,
            test: Arc::new(test),
        })
    }

    /// The triggered test images and the trigger to measure an ASR with, if there is an attack.
    pub fn asr_meter(&self, batch_size: usize, device: &Device) -> Option<AsrMeter> {
        let (a, b) = (self.attack.as_ref()?, self.backdoor.as_ref()?);
        Some(AsrMeter::new(
            Arc::new(asr_set(a, &self.test)),
            b.clone(),
            batch_size,
            device,
        ))
    }

    /// The held-out split of the suspect's training set: the defender's data.
    pub fn holdout(&self) -> Result<ImageSet> {
        let split = self.split.as_ref().ok_or_else(|| {
            Error::artifact(
                self.dir.join(files::SPLIT),
                "no split file: the model's run held out no defender data",
            )
        })?;
        Ok(split.data.load()?.train.subset(&split.split.held_out))
    }

    /// Writes into `out` what makes a model derived from this one evaluate like it: the split
    /// file and the attack with its trigger files.
    pub fn save_evaluation_files(&self, out: &Path) -> Result<()> {
        if let Some(split) = &self.split {
            crate::io::write_json_atomic(&out.join(files::SPLIT), split)?;
        }
        if let (Some(a), Some(dir)) = (&self.attack, &self.attack_dir) {
            a.save(out)?;
            if a.config.kind == crate::attack::AttackKind::Iab {
                for f in [
                    crate::attack::files::IAB_GENERATOR,
                    crate::attack::files::IAB_MASK,
                ] {
                    let (from, to) = (dir.join(f), out.join(f));
                    let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                    crate::io::write_atomic(&to, &bytes)?;
                }
            }
        }
        Ok(())
    }
}
