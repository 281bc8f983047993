//! The distillation cleanser (method spec): the frozen teacher, a re-initialised student trained
//! on unlabeled images with the annealed KL loss, SGD with a cosine schedule; resumable, with
//! clean accuracy and ASR against the teacher's attack after every epoch. The final model is the
//! last epoch's.

use super::kd::{TemperatureRange, distillation_loss};
use super::reinit::{self, InitMode, Realised};
use super::unlabeled::{UnlabeledImages, stream};
use crate::attack::poison::{asr_set, triggered_accuracy};
use crate::attack::{Attack, Backdoor};
use crate::data::augment::Augment;
use crate::data::batcher::{chunk_order, epoch_order};
use crate::data::{DataSpec, ImageSet};
use crate::device::Selected;
use crate::io::{create_dir_all, read_json, write_json_atomic};
use crate::model::ModelConfig;
use crate::report::{
    DataSummary, EpochRecord, FinalMetrics, Report, RunStatus, SCHEMA_VERSION, now_unix,
};
use crate::train::checkpoint::{self, CHECKPOINT_VERSION, CheckpointState};
use crate::train::eval::{accuracy, images_tensor};
use crate::train::run::{SplitFile, files, load_run_model};
use crate::train::schedule::Schedule;
use crate::train::sgd::{Sgd, SgdConfig};
use crate::{Error, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where the defender's unlabeled images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum UnlabeledSource {
    /// The split held out from the teacher's training set (saved with the model).
    Holdout,
    /// The training part of another data set or image folder (labels dropped).
    Data { spec: DataSpec },
}

/// Everything that defines a cleansing run. Defaults are the method spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KdConfig {
    /// The suspicious model's run directory.
    pub teacher: PathBuf,
    pub unlabeled: UnlabeledSource,
    /// Use only this many of the unlabeled images (a seeded random choice), to measure how the
    /// size of the defender's set matters; `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlabeled_limit: Option<usize>,
    /// Method spec: 100.
    pub epochs: usize,
    /// Method spec: 256.
    pub batch_size: usize,
    /// Method spec: 0.01 with cosine annealing.
    pub lr: f64,
    /// Method spec: `T = 1 + 3 (e + 1) / E`, rising to 4 (not written when it is that).
    #[serde(default, skip_serializing_if = "TemperatureRange::is_paper")]
    pub temperature: TemperatureRange,
    pub sgd: SgdConfig,
    pub init: InitMode,
    pub seed: u64,
    /// Method spec: crop + flip.
    pub augment: Augment,
    /// Not in the method spec (off by default): mix the unlabeled images of each batch in pairs
    /// (`augment::mixup`), teacher and student seeing the same mixed images, so that 1,000
    /// images give the student many more distinct inputs to match the teacher on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixup: bool,
    pub eval_batch_size: usize,
}

impl KdConfig {
    /// The method's defaults for `teacher`.
    pub fn paper(teacher: PathBuf, flip: bool) -> Self {
        KdConfig {
            teacher,
            unlabeled: UnlabeledSource::Holdout,
            unlabeled_limit: None,
            epochs: 100,
            batch_size: 256,
            lr: 0.01,
            temperature: TemperatureRange::default(),
            sgd: SgdConfig::default(),
            init: InitMode::Adaptive {
                ratios: reinit::ADAPTIVE_RATIOS,
            },
            seed: 0,
            augment: Augment::standard(flip),
            mixup: false,
            eval_batch_size: 256,
        }
    }
}

/// What a cleansing report adds under `defense`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DefenseInfo {
    pub method: String,
    pub teacher: PathBuf,
    pub unlabeled_images: usize,
    pub init: Realised,
    /// The teacher's own clean accuracy and ASR, measured at the start.
    pub teacher_clean_acc: f64,
    pub teacher_asr: Option<f64>,
    /// The student's right after its re-initialisation, before any distillation (the
    /// supplement's Figure 2 compares initialisations at this point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_init_clean_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_init_asr: Option<f64>,
}

/// The unlabeled images of `config`: all of its source's, or `unlabeled_limit` of them chosen
/// at random with `config.seed`.
pub fn unlabeled_images(config: &KdConfig) -> Result<UnlabeledImages> {
    let mut set: ImageSet = match &config.unlabeled {
        UnlabeledSource::Holdout => crate::train::run::load_holdout(&config.teacher)?,
        UnlabeledSource::Data { spec } => spec.load()?.train,
    };
    if set.is_empty() {
        return Err(Error::config(
            "unlabeled-data",
            "no unlabeled images (the teacher's run held none out; pass --unlabeled-data)",
        ));
    }
    if let Some(n) = config.unlabeled_limit {
        if n == 0 || n > set.len() {
            return Err(Error::config(
                "unlabeled-limit",
                format!(
                    "expected 1 to {} (the unlabeled images available), got {n}",
                    set.len()
                ),
            ));
        }
        let keep =
            crate::rng::Rng::from_parts(&[config.seed, 0x0071_3173]).sample_sorted(set.len(), n);
        set = set.subset(&keep);
    }
    Ok(UnlabeledImages::from_set(set))
}

/// Cleanses the teacher in `config.teacher` into `out` (new or empty unless `resume`).
/// With `epochs == 0` it writes the re-initialised student as the model, undistilled.
pub fn cleanse(
    config: &KdConfig,
    out: &Path,
    resume: bool,
    selected: &Selected,
    observer: &mut dyn crate::train::Observer,
) -> Result<Report> {
    if config.batch_size < 2 {
        return Err(Error::config(
            "batch-size",
            format!("expected at least 2, got {}", config.batch_size),
        ));
    }
    if let Some(reason) = config.temperature.check() {
        return Err(Error::config("temperature", reason));
    }
    if let Some(reason) = config.sgd.check_weight_decay() {
        return Err(Error::config("weight-decay", reason));
    }
    let device = selected.device.clone();
    let ckpt_dir = out.join(files::CHECKPOINT_DIR);
    let config_json =
        serde_json::to_value(config).map_err(|e| Error::config("config", e.to_string()))?;
    let state = if resume {
        let s = checkpoint::load_state(&ckpt_dir)?;
        // Compared as configurations, so that a field added with its default since the
        // checkpoint was written does not count as a change.
        let saved = serde_json::from_value::<KdConfig>(s.config.clone()).ok();
        if saved.as_ref() != Some(config) {
            return Err(Error::artifact(
                checkpoint::state_path(&ckpt_dir),
                "--resume: the checkpoint was made with a different configuration",
            ));
        }
        Some(s)
    } else {
        if !crate::train::run::dir_is_empty(out)? {
            return Err(Error::artifact(
                out,
                "output directory exists and is not empty; choose another --out, or pass --resume",
            ));
        }
        None
    };
    create_dir_all(out)?;

    let teacher_run = load_run_model(&config.teacher, &device)?;
    let model_config: ModelConfig = teacher_run.config.clone();
    let teacher = teacher_run.model;
    let split: SplitFile = read_json(&config.teacher.join(files::SPLIT))?;
    let test = Arc::new(split.data.load()?.test);
    let attack = Attack::exists(&config.teacher)
        .then(|| Attack::load(&config.teacher))
        .transpose()?;
    let backdoor = match &attack {
        Some(a) => Some(Backdoor::load(&config.teacher, a, &device)?),
        None => None,
    };
    let asr_images = attack.as_ref().map(|a| Arc::new(asr_set(a, &test)));
    let asr_of = |m: &crate::model::Classifier| -> Option<f64> {
        let (b, s) = (backdoor.as_ref()?, asr_images.as_ref()?);
        Some(triggered_accuracy(
            m,
            s,
            &|x| b.apply(x),
            config.eval_batch_size,
            &device,
        ))
    };
    let images = Arc::new(unlabeled_images(config)?);

    let (student0, realised) =
        reinit::student(&teacher, &model_config, &config.init, config.seed, &device);
    write_json_atomic(&out.join(files::MODEL_CONFIG), &model_config)?;
    let teacher_clean_acc = accuracy(&teacher, &test, config.eval_batch_size, &device);
    let student_init_clean_acc = accuracy(&student0, &test, config.eval_batch_size, &device);
    let student_init_asr = asr_of(&student0);
    let info = DefenseInfo {
        method: "kd".into(),
        teacher: config.teacher.clone(),
        unlabeled_images: images.len(),
        init: realised,
        teacher_clean_acc,
        teacher_asr: asr_of(&teacher),
        student_init_clean_acc: Some(student_init_clean_acc),
        student_init_asr,
    };
    let mut student = student0.train();
    let mut sgd = Sgd::new(config.sgd.clone());
    let mut history = Vec::new();
    let mut first_epoch = 0;
    if let Some(s) = &state {
        student = checkpoint::restore(&ckpt_dir, s, student, &mut sgd, &device)?;
        history = s.history.clone();
        first_epoch = s.epochs_done;
    }
    let report_path = out.join(files::REPORT);
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        kind: "defense".into(),
        status: RunStatus::Running,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config: config_json.clone(),
        attack: attack
            .as_ref()
            .and_then(|a| serde_json::to_value(&a.config).ok()),
        defense: serde_json::to_value(&info).ok(),
        device: selected.info.clone(),
        data: DataSummary {
            num_classes: model_config.num_classes,
            train_size: images.len(),
            holdout_size: 0,
            test_size: test.len(),
        },
        epochs: history.clone(),
        final_metrics: None,
        model_file: None,
        started_unix: now_unix(),
        finished_unix: None,
    };
    let schedule = Schedule::cosine(config.epochs);
    let chunks_per_epoch =
        chunk_order(&(0..images.len()).collect::<Vec<_>>(), config.batch_size).len();
    observer.start(first_epoch, config.epochs, chunks_per_epoch);
    for epoch in first_epoch..config.epochs {
        let lr = schedule.lr(config.lr, epoch);
        let temp = config.temperature.at(epoch, config.epochs);
        let t0 = Instant::now();
        let chunks = chunk_order(
            &epoch_order(images.len(), config.seed, epoch as u64),
            config.batch_size,
        );
        let (mut loss_sum, mut agree, mut seen) = (0.0f64, 0usize, 0usize);
        for (bi, b) in stream(
            images.clone(),
            chunks,
            config.augment,
            config.seed,
            epoch as u64,
        )
        .into_iter()
        .enumerate()
        {
            let n = b.shape[0];
            let mut pixels = b.images;
            if config.mixup {
                let mut rng =
                    crate::rng::Rng::from_parts(&[config.seed, epoch as u64, bi as u64, 0x313C]);
                let [_, c, h, w] = b.shape;
                crate::data::augment::mixup(&mut pixels, c * h * w, &mut rng);
            }
            let x = images_tensor(pixels, b.shape, &device);
            let t_logits = teacher.forward(x.clone());
            let s_logits = student.forward(x.autodiff());
            let loss = distillation_loss(s_logits.clone(), t_logits.clone().autodiff(), temp);
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                return Err(Error::config(
                    "lr",
                    format!(
                        "cleansing diverged: loss {value} at epoch {} batch {}",
                        epoch + 1,
                        bi + 1
                    ),
                ));
            }
            let teacher_pred = t_logits.argmax(1).reshape([n]);
            agree += crate::train::count_correct(s_logits.clone().inner(), teacher_pred);
            let grads = GradientsParams::from_grads(loss.backward(), &student);
            student = sgd.step(lr, student, grads);
            loss_sum += value * n as f64;
            seen += n;
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            observer.batch(
                epoch,
                bi,
                loss_sum / seen as f64,
                agree as f64 / seen as f64,
                seen as f64 / secs,
            );
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let eval = student.valid();
        let clean_acc = accuracy(&eval, &test, config.eval_batch_size, &device);
        let asr = asr_of(&eval);
        let eval_secs = t1.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: agree as f64 / seen.max(1) as f64,
            clean_acc,
            seconds: train_secs + eval_secs,
            eval_seconds: eval_secs,
            images_per_sec: seen as f64 / train_secs.max(1e-9),
            asr,
        };
        history.push(record.clone());
        checkpoint::save(
            &ckpt_dir,
            &student,
            &sgd,
            CheckpointState {
                checkpoint_version: CHECKPOINT_VERSION,
                epochs_done: epoch + 1,
                seed: config.seed,
                config: config_json.clone(),
                model_file: String::new(),
                optimizer_file: String::new(),
                history: history.clone(),
            },
        )?;
        report.epochs = history.clone();
        write_json_atomic(&report_path, &report)?;
        observer.epoch(&record);
    }
    checkpoint::save_model(&student.valid(), &out.join(files::MODEL))?;
    // The cleansed model evaluates against the same data and attack as its teacher.
    write_json_atomic(&out.join(files::SPLIT), &split)?;
    if let Some(a) = &attack {
        a.save(out)?;
        if a.config.kind == crate::attack::AttackKind::Iab {
            for f in [
                crate::attack::files::IAB_GENERATOR,
                crate::attack::files::IAB_MASK,
            ] {
                let (from, to) = (config.teacher.join(f), out.join(f));
                let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                crate::io::write_atomic(&to, &bytes)?;
            }
        }
    }
    report.final_metrics = Some(match history.last() {
        Some(last) => FinalMetrics {
            clean_acc: last.clean_acc,
            asr: last.asr,
        },
        // No epochs: the model is the re-initialised student.
        None => FinalMetrics {
            clean_acc: student_init_clean_acc,
            asr: student_init_asr,
        },
    });
    report.status = RunStatus::Complete;
    report.model_file = Some(files::MODEL.into());
    report.finished_unix = Some(now_unix());
    write_json_atomic(&report_path, &report)?;
    Ok(report)
}
