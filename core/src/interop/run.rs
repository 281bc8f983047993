//! An imported model as an ordinary run directory (`model.json`, `model.bpk`, `split.json`,
//! `import.json`) that `eval`, every defense, `tsne` and the viewer accept.

use super::state_dict::Imported;
use crate::attack::Attack;
use crate::data::DataSpec;
use crate::data::split;
use crate::data::split::SplitFile;
use crate::defend::suspect::AsrSource;
use crate::engine::checkpoint::save_model;
use crate::engine::run_dir::files;
use crate::io::write_json_atomic;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file an imported run records its origin in.
pub const IMPORT_FILE: &str = "import.json";

/// Where an imported model came from (`import.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    /// The checkpoint file, as given.
    pub from: PathBuf,
    /// The naming its tensors were read under.
    pub naming: super::Naming,
    /// The checkpoint's key the state dict was read from (`None`: found by itself).
    pub key: Option<String>,
    /// `--rename` rules applied, `FROM=TO`.
    pub renames: Vec<String>,
    /// Tensors of the file that were not used (batch-norm counters).
    pub ignored: Vec<String>,
}

/// What an imported run is evaluated and defended on.
#[derive(Clone, Debug)]
pub struct RunSetup {
    pub data: DataSpec,
    /// Fraction of the training set given to the defenses.
    pub holdout: f64,
    /// Seeds that choice.
    pub seed: u64,
    /// What the run's ASR is measured against (saved into it); [`AsrSource::Saved`]: nothing.
    pub asr: AsrSource,
}

/// Writes `imported` with the data it will be evaluated and defended on (`setup`) into `out`
/// (new, or an empty directory): the defender's images are `holdout` of the training set (seeded
/// by `seed`) or, with the spec's `defender_per_class` or `defender_fraction`, a slice of the test
/// set, as for a trained run. With `asr`, a trigger drawn from settings or a folder of triggered images (checked to load
/// here) is saved too, so that `eval`, every defense and `tsne` measure the ASR against it. The files are written into a temporary sibling first and moved into place
/// at the end, so a failed import leaves nothing behind.
pub fn write_run(
    imported: &Imported,
    setup: RunSetup,
    provenance: &Provenance,
    out: &Path,
) -> Result<()> {
    let RunSetup {
        data,
        holdout,
        seed,
        asr,
    } = setup;
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::config(
                "out",
                format!(
                    "{}: exists and is not empty; choose a new directory",
                    out.display()
                ),
            ));
        }
    }
    if !(0.0..1.0).contains(&holdout) {
        return Err(Error::config(
            "holdout",
            format!("must be in [0, 1); got {holdout}"),
        ));
    }
    let loaded = data.load()?;
    let classes = loaded.test.num_classes;
    if classes != imported.config.num_classes {
        return Err(Error::config(
            "dataset",
            format!(
                "the model has {} classes but the data set has {classes}",
                imported.config.num_classes
            ),
        ));
    }
    let holdout = if data.defender_from_test() {
        0.0
    } else {
        holdout
    };
    let split = split::holdout(&loaded.train, holdout, seed)?;
    let test = &loaded.test;
    let attack = match &asr {
        AsrSource::Spec(config) => Some(Attack::new(config.clone(), test)?),
        AsrSource::Triggered(t) => {
            t.load(classes, [test.channels, test.height, test.width])?;
            None
        }
        AsrSource::Saved => None,
    };
    let parent = crate::io::parent_dir(out);
    crate::io::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    write_json_atomic(
        &tmp.path().join(files::SPLIT),
        &SplitFile {
            data,
            seed,
            holdout,
            holdout_per_class: None,
            split,
        },
    )?;
    save_model(&imported.model, &tmp.path().join(files::MODEL))?;
    write_json_atomic(&tmp.path().join(IMPORT_FILE), provenance)?;
    if let Some(a) = &attack {
        a.save(tmp.path())?;
    }
    if let AsrSource::Triggered(t) = &asr {
        write_json_atomic(&tmp.path().join(crate::attack::triggered::FILE), t)?;
    }
    // model.json last: it is what makes a directory a run.
    write_json_atomic(&tmp.path().join(files::MODEL_CONFIG), &imported.config)?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        Error::io(out, e)
    })
}
