//! The demo's work: training a narrow ResNet-18 (clean or backdoored), cleansing it with the
//! distillation cleanser, and stamping triggers. Every loop is `core`'s: the same steps as the
//! command line (cross-entropy training with an attack's hooks, IAB's mask pre-training, the
//! cleanser) on the engine's async driver, which reads results back without blocking and hands
//! control back to the [`Host`] after every batch, so that it runs in a browser tab (WebGPU or
//! the CPU backend) without freezing the page, and natively in tests. This module only sets the
//! demo's plans up.

use burn::module::Module;
use burn::prelude::*;
use cleanse_core::attack::iab::{Generator, IabHooks, IabNets, MaskStep};
use cleanse_core::attack::poison::asr_set;
use cleanse_core::attack::training::{AttackTraining, CleanModel};
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Backdoor, Stamping};
use cleanse_core::data::augment::Augment;
use cleanse_core::data::{DataSpec, DatasetKind, ImageSet, records};
use cleanse_core::defend::cleanse::{self, KdConfig};
use cleanse_core::defend::method::Method;
use cleanse_core::defend::reinit::{self, ADAPTIVE_RATIOS, InitMode};
use cleanse_core::defend::settings::SharedFlags;
use cleanse_core::defend::suspect;
use cleanse_core::defend::unlabeled::UnlabeledImages;
use cleanse_core::engine::async_driver;
use cleanse_core::engine::eval::images_tensor;
use cleanse_core::engine::meter::AsrMeter;
use cleanse_core::engine::run_files::{self, load_model};
use cleanse_core::engine::{LoopPlan, Trainee};
use cleanse_core::model::{Architecture, Classifier, ModelConfig};
use cleanse_core::optim::{Sgd, SgdConfig};
use cleanse_core::precision::Precision;
use cleanse_core::train::run::CrossEntropyStep;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cleanse_core::engine::async_driver::{EpochPoint, Host, Progress, read_f32};

/// The demo's images: a training part, the defender's unlabeled part (held out from training,
/// labels never read), and a test part.
#[derive(Clone, Debug)]
pub struct DemoData {
    pub kind: DatasetKind,
    pub train: ImageSet,
    pub unlabeled: ImageSet,
    pub test: ImageSet,
}

/// Class names of a record data set.
fn class_names(kind: DatasetKind, num_classes: usize) -> Vec<String> {
    match kind {
        DatasetKind::Cifar10 => cleanse_core::data::cifar10::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        _ => (0..num_classes).map(|c| format!("class {c}")).collect(),
    }
}

/// Number of classes of a record data set.
pub fn num_classes(kind: DatasetKind) -> usize {
    match kind {
        DatasetKind::Gtsrb => cleanse_core::data::gtsrb::NUM_CLASSES,
        _ => 10,
    }
}

/// Parses the records of one sample file (CIFAR-10 binary layout) into a set.
pub fn parse_records(kind: DatasetKind, name: &str, bytes: &[u8]) -> Result<ImageSet, String> {
    let k = num_classes(kind);
    let (pixels, labels) = records::parse(Path::new(name), bytes, k).map_err(|e| e.to_string())?;
    Ok(ImageSet {
        pixels,
        labels,
        channels: 3,
        height: records::SIDE,
        width: records::SIDE,
        num_classes: k,
        class_names: class_names(kind, k),
    })
}

impl DemoData {
    /// The demo's data from a training and a test record file: the last `unlabeled` training
    /// records become the defender's unlabeled images.
    pub fn from_records(
        kind: DatasetKind,
        train: (&str, &[u8]),
        test: (&str, &[u8]),
        unlabeled: usize,
    ) -> Result<DemoData, String> {
        let all = parse_records(kind, train.0, train.1)?;
        let test = parse_records(kind, test.0, test.1)?;
        if unlabeled >= all.len() {
            return Err(format!(
                "{}: {} images, not enough to hold out {unlabeled} unlabeled ones",
                train.0,
                all.len()
            ));
        }
        let cut = all.len() - unlabeled;
        Ok(DemoData {
            kind,
            train: all.subset(&(0..cut).collect::<Vec<_>>()),
            unlabeled: all.subset(&(cut..all.len()).collect::<Vec<_>>()),
            test,
        })
    }

    /// The first `train`, `unlabeled` and `test` images of each part.
    pub fn truncated(&self, train: usize, unlabeled: usize, test: usize) -> DemoData {
        let first = |s: &ImageSet, n: usize| s.subset(&(0..n.min(s.len())).collect::<Vec<_>>());
        DemoData {
            kind: self.kind,
            train: first(&self.train, train),
            unlabeled: first(&self.unlabeled, unlabeled),
            test: first(&self.test, test),
        }
    }

    fn normalization(&self) -> cleanse_core::model::Normalization {
        DataSpec::new(self.kind, None).normalization()
    }
}

/// The attack settings of the demo: the supplement's values, stamped after augmentation as in
/// the CLI's `--preset subset`, clean-label attacks poisoning the whole target class, and
/// dirty-label attacks a fifth of the (small) training set.
pub fn demo_attack_config(kind: AttackKind, dataset: DatasetKind, seed: u64) -> AttackConfig {
    let mut c = AttackConfig::supplement(kind, dataset);
    c.stamping = Stamping::AfterAugment;
    c.seed = seed;
    if kind.is_clean_label() {
        c.poison_rate = 1.0;
    } else if !kind.is_training_control() {
        // At 10% of the demo's (then) 400 images BadNets reached ASR 15% in 20 epochs; a fifth
        // of the 1,500 training images gives 98.0% (docs/browser.md).
        c.poison_rate = 0.2;
    }
    c.lc_steps = 10;
    c.lc_step = 2.0 * c.lc_eps / c.lc_steps as f32;
    c.iab_width = 8;
    c.iab_mask_epochs = 2;
    c
}

/// Settings of a demo training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPlan {
    pub attack: Option<AttackKind>,
    pub width: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Stop each epoch after this many batches (a quick look); `None` = whole epochs.
    pub max_batches: Option<usize>,
    /// Poison rate instead of the demo's ([`demo_attack_config`]); ignored by IAB and WaNet.
    pub poison_rate: Option<f64>,
    pub seed: u64,
}

impl TrainPlan {
    /// The browser demo's default: the subset preset's optimiser at width 8.
    pub fn demo(attack: Option<AttackKind>) -> TrainPlan {
        TrainPlan {
            attack,
            width: 8,
            epochs: 20,
            batch_size: 32,
            lr: 0.05,
            max_batches: None,
            poison_rate: None,
            seed: 0,
        }
    }
}

/// Settings of a demo cleansing run: the method's loss, temperature schedule and optimiser.
#[derive(Clone, Debug, PartialEq)]
pub struct CleansePlan {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Multiplies the adaptive ratios (capped at 1), as `defend kd --ratio-scale`.
    pub ratio_scale: f64,
    pub max_batches: Option<usize>,
    pub seed: u64,
}

impl CleansePlan {
    /// The cleanser's configuration for this plan, as the command line's would be with these
    /// flags: the method's settings with the plan's epochs, batches, learning rate, seed and
    /// ratios, the cosine annealed over the run (the command line's default horizon, the
    /// authors' 100 epochs, would hardly go down in a run this short).
    pub fn config(&self, flip: bool) -> Result<KdConfig, String> {
        let ratios = reinit::scale_ratios(ADAPTIVE_RATIOS, self.ratio_scale).map_err(err)?;
        let flags = SharedFlags {
            seed: Some(self.seed),
            batch_size: Some(self.batch_size),
            lr: Some(self.lr),
            epochs: Some(self.epochs),
            cosine_t_max: Some(self.epochs),
            ..SharedFlags::default()
        };
        let config = KdConfig {
            init: InitMode::Adaptive { ratios },
            ..KdConfig::paper(PathBuf::new(), flip)
        }
        .with_flags(&flags)
        .map_err(err)?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// The browser demo's default: 20 epochs at twice the adaptive ratios. On the demo's 500
    /// unlabeled images the method's own ratios leave most of the backdoor (BadNets ASR 98.0% to
    /// 71.0% in 10 epochs); twice the ratios for 20 epochs bring it to 29.3%, at 5.4 points of
    /// clean accuracy (`demo_run` example, docs/browser.md).
    pub fn demo() -> CleansePlan {
        CleansePlan {
            epochs: 20,
            batch_size: 64,
            lr: 0.01,
            ratio_scale: 2.0,
            max_batches: None,
            seed: 0,
        }
    }
}

/// A model with what it was trained against.
#[derive(Clone, Debug)]
pub struct DemoModel {
    /// Evaluation copy.
    pub model: Classifier,
    pub config: ModelConfig,
    pub attack: Option<Attack>,
    /// IAB's networks, when the attack is IAB.
    pub iab: Option<IabNets>,
    pub history: Vec<EpochPoint>,
    /// Whether the run was stopped before its last epoch.
    pub stopped: bool,
}

impl DemoModel {
    /// Clean accuracy and ASR of the last epoch.
    pub fn last(&self) -> Option<&EpochPoint> {
        self.history.last()
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The evaluation batch size of the demo.
const EVAL_BATCH: usize = 200;

impl DemoModel {
    /// What its ASR is measured with on `test`: its attack's trigger (IAB: its networks).
    pub fn asr_meter(&self, test: &ImageSet, device: &Device) -> Result<Option<AsrMeter>, String> {
        let Some(a) = &self.attack else {
            return Ok(None);
        };
        let backdoor = match (&a.trigger, &self.iab) {
            (Some(t), _) => Backdoor::Static(t.clone()),
            (None, Some(nets)) => Backdoor::Iab(Box::new(nets.clone())),
            (None, None) => return Err("an IAB attack without its networks".into()),
        };
        Ok(Some(AsrMeter::new(
            Arc::new(asr_set(a, test)),
            Arc::new(backdoor),
            EVAL_BATCH,
            device,
        )))
    }
}

/// Clean accuracy of `model` on `test` and its ASR against `attack` (IAB through `iab`).
pub async fn evaluate<H: Host>(
    model: &DemoModel,
    test: &ImageSet,
    device: &Device,
    host: &H,
) -> Result<(f64, Option<f64>), String> {
    let meter = model.asr_meter(test, device)?;
    async_driver::evaluate(
        &model.model,
        meter.as_ref(),
        test,
        (EVAL_BATCH, device),
        host,
    )
    .await
}

/// IAB's mask pre-training ([`MaskStep`] on the async driver); `None` when stopped.
async fn pretrain_mask<H: Host>(
    hooks: &IabHooks,
    set: &ImageSet,
    device: &Device,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<Option<Generator>, String> {
    let t = hooks.mask_training();
    let mut step = MaskStep::new(hooks.fresh_mask(device), Arc::new(set.clone()), &t, device);
    let mut stage = |p: Progress| {
        if let Progress::Batch {
            epoch,
            batch,
            batches,
            loss,
        } = p
        {
            on(Progress::Stage(format!(
                "IAB: pre-training the mask network, epoch {}/{}, batch {}/{batches}, loss {loss:.3}",
                epoch + 1,
                t.epochs,
                batch + 1
            )));
        }
    };
    let stopped = async_driver::run_batches(&t.plan(), set, &mut step, host, &mut stage).await?;
    Ok((!stopped).then(|| step.into_mask().valid()))
}

/// Trains a model on `data.train`, clean or with `plan.attack` (LC makes its adversarial images
/// on `clean_model`), evaluating clean accuracy and ASR on `data.test` after every epoch.
pub async fn train<H: Host>(
    data: &DemoData,
    plan: &TrainPlan,
    clean_model: Option<&Classifier>,
    device: &Device,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<DemoModel, String> {
    if plan.epochs == 0 || plan.batch_size < 2 {
        return Err("training needs at least one epoch and batches of 2".into());
    }
    cleanse_core::model::check_width("width", plan.width).map_err(err)?;
    cleanse_core::optim::sgd::check_lr(plan.lr).map_err(err)?;
    let mut train_set = data.train.clone();
    let mut training = None;
    if let Some(kind) = plan.attack {
        let mut config = demo_attack_config(kind, data.kind, plan.seed);
        if let Some(rate) = plan.poison_rate
            && kind != AttackKind::Iab
        {
            config.poison_rate = rate;
        }
        if kind == AttackKind::Lc && clean_model.is_none() {
            return Err(
                "LC makes its adversarial images on a clean model: train a clean model first"
                    .into(),
            );
        }
        if kind == AttackKind::Lc
            && cfg!(target_arch = "wasm32")
            && cleanse_core::kernels::runs_wgsl(device)
        {
            return Err(
                "LC's adversarial images are read back synchronously, which WebGPU \
                        cannot do in a browser: choose the CPU backend for LC"
                    .into(),
            );
        }
        if kind != AttackKind::Iab {
            on(Progress::Stage(format!(
                "poisoning the training set ({})",
                kind.name()
            )));
            host.pause().await;
        }
        let a = Attack::new(config, &train_set).map_err(err)?;
        let clean = match clean_model {
            Some(m) => CleanModel::Given(Box::new(m.clone())),
            None => CleanModel::None,
        };
        let mut t = AttackTraining::new(a, clean, plan.batch_size, Augment::NONE, plan.seed)
            .map_err(err)?;
        match &mut t {
            AttackTraining::Iab(h) => {
                let Some(mask) = pretrain_mask(h, &train_set, device, host, on).await? else {
                    return Err("stopped during IAB's mask pre-training".into());
                };
                h.prepare_with_mask(mask, &data.test, device);
            }
            AttackTraining::Poisoned(h) => {
                let indices: Vec<usize> = (0..train_set.len()).collect();
                train_set = h
                    .poison_training_set(train_set, &indices, &data.test, device)
                    .map_err(err)?;
            }
        }
        training = Some(t);
    }
    let attack = training.as_ref().map(|t| t.attack().clone());
    let config = ModelConfig {
        architecture: Architecture::Resnet18,
        width: plan.width,
        num_classes: data.train.num_classes,
        normalization: data.normalization(),
    };
    let model = config.init_seeded(&device.clone().autodiff(), plan.seed);
    let mut step = CrossEntropyStep {
        trainee: Trainee::new(
            model,
            Sgd::new(SgdConfig::default()),
            device,
            Precision::F32,
        ),
        hooks: training.as_mut().map(AttackTraining::hooks),
        seed: plan.seed,
        device: device.clone(),
    };
    let loop_plan = LoopPlan {
        max_batches: plan.max_batches,
        ..LoopPlan::cosine(
            (plan.epochs, plan.batch_size, plan.lr),
            None,
            plan.seed,
            Augment::NONE,
            "training",
        )
    };
    let eval = (&data.test, None, EVAL_BATCH, device);
    let (history, stopped) =
        async_driver::run_epochs(&loop_plan, &train_set, &mut step, eval, host, on).await?;
    let model = step.trainee.valid();
    Ok(DemoModel {
        model,
        config,
        attack,
        iab: match &training {
            Some(AttackTraining::Iab(h)) => h.nets(),
            _ => None,
        },
        history,
        stopped,
    })
}

/// Cleanses `teacher` with the method's distillation on `data.unlabeled` (images only): the
/// student is the teacher with the adaptive layer-wise re-initialisation (ratios times
/// `plan.ratio_scale`); clean accuracy and ASR against the teacher's attack after every epoch.
pub async fn cleanse<H: Host>(
    teacher: &DemoModel,
    data: &DemoData,
    plan: &CleansePlan,
    device: &Device,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<DemoModel, String> {
    if plan.epochs == 0 || plan.batch_size < 2 {
        return Err("cleansing needs at least one epoch and batches of 2".into());
    }
    if data.unlabeled.len() < 2 {
        return Err("cleansing needs at least 2 unlabeled images".into());
    }
    let config = plan.config(data.kind.allows_flip())?;
    async_driver::check_finite(&teacher.model, &data.test, device, "the model to cleanse").await?;
    let (mut step, _, _) = cleanse::student_step(
        &config,
        &teacher.model,
        &teacher.config,
        device,
        Precision::F32,
    );
    let meter = teacher.asr_meter(&data.test, device)?;
    let loop_plan = LoopPlan {
        max_batches: plan.max_batches,
        ..cleanse::loop_plan(&config)
    };
    // Only the images reach the step: the labels stay behind.
    let images = UnlabeledImages::from_set(data.unlabeled.clone());
    let eval = (&data.test, meter.as_ref(), EVAL_BATCH, device);
    let (history, stopped) =
        async_driver::run_epochs(&loop_plan, &images, &mut step, eval, host, on).await?;
    Ok(DemoModel {
        model: step.trainee.valid(),
        config: teacher.config.clone(),
        attack: teacher.attack.clone(),
        iab: teacher.iab.clone(),
        history,
        stopped,
    })
}

/// One attack applied to one image, for the gallery.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped {
    pub kind: AttackKind,
    /// Planar `u8` pixels.
    pub poisoned: Vec<u8>,
    /// Whether IAB's networks were trained (a loaded run) or only seeded.
    pub trained: bool,
}

/// `image` (planar `u8`, `shape` `[C, H, W]`) with every attack's test-time trigger, by the same
/// code as the CLI (the WGSL kernels on WebGPU). IAB uses `iab` when given, else its networks as
/// seeded before training.
pub async fn stamp_all(
    image: &[u8],
    shape: [usize; 3],
    dataset: DatasetKind,
    iab: Option<&IabNets>,
    device: &Device,
) -> Result<Vec<Stamped>, String> {
    let [c, h, w] = shape;
    let set = ImageSet {
        pixels: image.to_vec(),
        labels: vec![0],
        channels: c,
        height: h,
        width: w,
        num_classes: num_classes(dataset),
        class_names: Vec::new(),
    };
    let x = images_tensor(
        image.iter().map(|&v| v as f32 / 255.0).collect(),
        [1, c, h, w],
        device,
    );
    let mut out = Vec::new();
    for kind in AttackKind::ALL {
        let config = demo_attack_config(kind, dataset, 0);
        let (y, trained) = match kind {
            AttackKind::Iab => match iab {
                Some(n) => (n.stamp(x.clone()), true),
                None => {
                    let nets = IabNets::new(c, config.iab_width, 0, device);
                    (nets.stamp(x.clone()), false)
                }
            },
            _ => {
                let attack = Attack::new(config, &set).map_err(err)?;
                let t = attack.trigger.as_ref().ok_or("attack without a trigger")?;
                (t.apply(x.clone()), false)
            }
        };
        let v = read_f32(y).await?;
        out.push(Stamped {
            kind,
            poisoned: v
                .iter()
                .map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect(),
            trained,
        });
    }
    Ok(out)
}

/// A run directory's files as the browser's file picker gives them: `(file name, bytes)`.
pub type RunFiles = Vec<(String, Vec<u8>)>;

/// The files the browser's picker gave, read by name.
struct PickedFiles<'a>(&'a RunFiles);

impl run_files::RunFiles for PickedFiles<'_> {
    fn read(&self, name: &str) -> cleanse_core::Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone()))
    }
    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(name)
    }
    fn missing(&self, name: &str, why: &str) -> cleanse_core::Error {
        let given: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        cleanse_core::Error::artifact(
            name,
            format!(
                "missing ({why}); pick the files of one run directory (given: {})",
                given.join(", ")
            ),
        )
    }
}

/// A model trained by the CLI, from the files of its run directory: `model.json` and
/// `model.bpk`, and for a backdoored model `attack.json` with its trigger files
/// (`warp_grid.f32` for WaNet, `iab_generator.bpk` and `iab_mask.bpk` for IAB), by core's
/// suspect loader.
pub fn load_run(files: &RunFiles, device: &Device) -> Result<DemoModel, String> {
    let picked = PickedFiles(files);
    let (config, model) = load_model(&picked, device).map_err(err)?;
    let (attack, iab) = match suspect::load_attack(&picked, device).map_err(err)? {
        None => (None, None),
        Some((a, Backdoor::Iab(nets))) => (Some(a), Some(*nets)),
        Some((a, Backdoor::Static(_) | Backdoor::Stamped)) => (Some(a), None),
    };
    Ok(DemoModel {
        model,
        config,
        attack,
        iab,
        history: Vec::new(),
        stopped: false,
    })
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use cleanse_core::data::synthetic::{SyntheticConfig, generate};
    use std::cell::Cell;

    /// Counts pauses; asks to stop once `stop_after` batches have paused.
    pub struct TestHost {
        pauses: Cell<usize>,
        stop_after: Option<usize>,
    }

    impl TestHost {
        pub fn new(stop_after: Option<usize>) -> Self {
            TestHost {
                pauses: Cell::new(0),
                stop_after,
            }
        }
    }

    impl Host for TestHost {
        fn now_ms(&self) -> f64 {
            0.0
        }
        fn stop_requested(&self) -> bool {
            self.stop_after.is_some_and(|n| self.pauses.get() >= n)
        }
        fn pause(&self) -> impl Future<Output = ()> {
            self.pauses.set(self.pauses.get() + 1);
            std::future::ready(())
        }
    }

    pub fn data() -> DemoData {
        let s = generate(&SyntheticConfig {
            train_size: 120,
            test_size: 40,
            ..SyntheticConfig::default()
        });
        let (train, test) = (records::encode(&s.train), records::encode(&s.test));
        DemoData::from_records(
            DatasetKind::Cifar10,
            ("train.bin", &train),
            ("test.bin", &test),
            40,
        )
        .unwrap()
    }

    pub fn tiny(attack: Option<AttackKind>) -> TrainPlan {
        TrainPlan {
            width: 4,
            epochs: 2,
            batch_size: 16,
            ..TrainPlan::demo(attack)
        }
    }

    pub fn read_f32_blocking<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        futures_lite::future::block_on(read_f32(t)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn records_split_into_train_unlabeled_and_test() {
        let d = data();
        assert_eq!(
            (d.train.len(), d.unlabeled.len(), d.test.len()),
            (80, 40, 40)
        );
        let t = d.truncated(10, 5, 100);
        assert_eq!(
            (t.train.len(), t.unlabeled.len(), t.test.len()),
            (10, 5, 40)
        );
        let e = DemoData::from_records(DatasetKind::Cifar10, ("a.bin", &[0u8; 10]), ("b", &[]), 1)
            .unwrap_err();
        assert!(e.contains("a.bin") && e.contains("3,073"), "{e}");
    }

    #[test]
    fn the_async_evaluation_matches_core_s() {
        let d = data();
        let device = Device::flex();
        let trained = block_on(train(
            &d,
            &tiny(Some(AttackKind::Badnets)),
            None,
            &device,
            &TestHost::new(None),
            &mut |_| {},
        ))
        .unwrap();
        assert_eq!(trained.history.len(), 2);
        let last = trained.last().unwrap();
        let test = std::sync::Arc::new(d.test.clone());
        let core_acc = cleanse_core::engine::eval::accuracy(&trained.model, &test, 32, &device);
        assert_eq!(last.clean_acc, core_acc);
        let attack = trained.attack.as_ref().unwrap();
        let core_asr = cleanse_core::attack::poison::attack_success_rate(
            &trained.model,
            attack,
            &d.test,
            32,
            &device,
        )
        .unwrap();
        assert_eq!(last.asr, Some(core_asr));
        // The demo's BadNets poisons 20% of the 80 training images.
        assert_eq!(attack.poisoned.len(), 16);
    }

    #[test]
    fn training_stops_when_asked_and_keeps_what_it_has() {
        let d = data();
        let host = TestHost::new(Some(2));
        let mut batches = 0;
        let m = block_on(train(
            &d,
            &tiny(None),
            None,
            &Device::flex(),
            &host,
            &mut |p| {
                if matches!(p, Progress::Batch { .. }) {
                    batches += 1
                }
            },
        ))
        .unwrap();
        assert!(m.stopped);
        assert_eq!(batches, 2);
        assert_eq!(m.history.len(), 1);
        assert_eq!(m.history[0].images, 32);
    }

    #[test]
    fn cleansing_reports_every_epoch_against_the_teacher_s_attack() {
        let d = data();
        let device = Device::flex();
        let host = TestHost::new(None);
        let teacher = block_on(train(
            &d,
            &tiny(Some(AttackKind::Blended)),
            None,
            &device,
            &host,
            &mut |_| {},
        ))
        .unwrap();
        let plan = CleansePlan {
            epochs: 3,
            batch_size: 16,
            ..CleansePlan::demo()
        };
        let mut epochs = Vec::new();
        let student = block_on(cleanse(&teacher, &d, &plan, &device, &host, &mut |p| {
            if let Progress::Epoch(e) = p {
                epochs.push(e)
            }
        }))
        .unwrap();
        assert_eq!(epochs.len(), 3);
        assert_eq!(student.history, epochs);
        assert!(epochs.iter().all(|e| e.asr.is_some() && e.images == 40));
        assert_eq!(student.attack, teacher.attack);
        let bad = CleansePlan {
            ratio_scale: 0.0,
            ..plan
        };
        let e = block_on(cleanse(&teacher, &d, &bad, &device, &host, &mut |_| {})).unwrap_err();
        assert!(e.contains("ratio-scale"), "{e}");
    }

    #[test]
    fn lc_needs_a_clean_model() {
        let d = data();
        let host = TestHost::new(None);
        let plan = tiny(Some(AttackKind::Lc));
        let e = block_on(train(&d, &plan, None, &Device::flex(), &host, &mut |_| {})).unwrap_err();
        assert!(e.contains("clean model"), "{e}");
        let clean = block_on(train(
            &d,
            &tiny(None),
            None,
            &Device::flex(),
            &host,
            &mut |_| {},
        ))
        .unwrap();
        let lc = block_on(train(
            &d,
            &plan,
            Some(&clean.model),
            &Device::flex(),
            &host,
            &mut |_| {},
        ))
        .unwrap();
        // Clean-label: the preset poisons every target-class training image.
        let targets = d.train.labels.iter().filter(|&&l| l == 0).count();
        assert_eq!(lc.attack.unwrap().poisoned.len(), targets);
    }

    #[test]
    fn iab_pretrains_its_mask_and_trains_its_generator_with_the_model() {
        let d = data();
        let host = TestHost::new(None);
        let mut stages = Vec::new();
        let m = block_on(train(
            &d,
            &tiny(Some(AttackKind::Iab)),
            None,
            &Device::flex(),
            &host,
            &mut |p| {
                if let Progress::Stage(s) = p {
                    stages.push(s)
                }
            },
        ))
        .unwrap();
        assert!(
            stages.iter().any(|s| s.contains("mask network, epoch 2/2")),
            "{stages:?}"
        );
        let nets = m.iab.as_ref().expect("IAB networks");
        assert!(m.history.iter().all(|e| e.asr.is_some()));
        let img = d.test.image(0).to_vec();
        let trained = block_on(stamp_all(
            &img,
            [3, 32, 32],
            DatasetKind::Cifar10,
            Some(nets),
            &Device::flex(),
        ))
        .unwrap();
        let seeded = block_on(stamp_all(
            &img,
            [3, 32, 32],
            DatasetKind::Cifar10,
            None,
            &Device::flex(),
        ))
        .unwrap();
        assert!(trained[5].trained && !seeded[5].trained);
        assert_ne!(trained[5].poisoned, seeded[5].poisoned);
    }

    #[test]
    fn every_attack_stamps_the_gallery_image_and_changes_it() {
        let d = data();
        let img = d.test.image(0).to_vec();
        let out = block_on(stamp_all(
            &img,
            [3, 32, 32],
            DatasetKind::Cifar10,
            None,
            &Device::flex(),
        ))
        .unwrap();
        assert_eq!(out.len(), 6);
        for s in &out {
            assert_eq!(s.poisoned.len(), img.len());
            assert_ne!(s.poisoned, img, "{:?} left the image unchanged", s.kind);
        }
        // BadNets changes only the 3x3 bottom-right corner.
        let badnets = &out[0].poisoned;
        for (i, (&a, &b)) in img.iter().zip(badnets).enumerate() {
            let (y, x) = ((i % 1024) / 32, i % 32);
            if a != b {
                assert!(y >= 29 && x >= 29, "pixel ({y},{x}) changed");
            }
        }
        assert!(!out[5].trained);
    }

    #[test]
    fn a_cli_run_directory_loads_with_its_attack() {
        let d = data();
        let device = Device::flex();
        let host = TestHost::new(None);
        let m = block_on(train(
            &d,
            &tiny(Some(AttackKind::Wanet)),
            None,
            &device,
            &host,
            &mut |_| {},
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        use cleanse_core::engine::files as rf;
        cleanse_core::engine::checkpoint::save_model(&m.model, &dir.path().join(rf::MODEL))
            .unwrap();
        cleanse_core::io::write_json_atomic(&dir.path().join(rf::MODEL_CONFIG), &m.config).unwrap();
        m.attack.as_ref().unwrap().save(dir.path()).unwrap();
        let mut files: RunFiles = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        let loaded = load_run(&files, &device).unwrap();
        assert_eq!(loaded.attack, m.attack);
        let (acc, asr) = block_on(evaluate(&loaded, &d.test, &device, &host)).unwrap();
        let last = m.last().unwrap();
        assert_eq!((acc, asr), (last.clean_acc, last.asr));
        files.retain(|(n, _)| n != "warp_grid.f32");
        let e = load_run(&files, &device).unwrap_err();
        assert!(e.contains("warp_grid.f32"), "{e}");
        files.retain(|(n, _)| n != rf::MODEL);
        let e = load_run(&files, &device).unwrap_err();
        assert!(e.contains("model.bpk: missing"), "{e}");
    }
}

#[cfg(test)]
mod wgpu_tests {
    use super::tests_support::*;
    use super::*;
    use futures_lite::future::block_on;

    /// The demo's loops on the wgpu device (lavapipe here) agree with the CPU backend's.
    #[test]
    fn train_and_cleanse_on_wgpu_match_the_cpu() {
        let d = data();
        let wgpu = cleanse_core::device::select(cleanse_core::device::DeviceChoice::Wgpu)
            .expect("a wgpu adapter (mesa-vulkan-drivers)")
            .device;
        let mut results = Vec::new();
        for device in [Device::flex(), wgpu] {
            let host = TestHost::new(None);
            let plan = TrainPlan {
                max_batches: Some(3),
                epochs: 1,
                ..tiny(Some(AttackKind::Badnets))
            };
            let m = block_on(train(&d, &plan, None, &device, &host, &mut |_| {})).unwrap();
            let logits = read_f32_blocking(
                m.model.forward(images_tensor(
                    d.test.pixels[..3072]
                        .iter()
                        .map(|&v| v as f32 / 255.0)
                        .collect(),
                    [1, 3, 32, 32],
                    &device,
                )),
            );
            assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
            let k = CleansePlan {
                epochs: 1,
                batch_size: 16,
                max_batches: Some(2),
                ..CleansePlan::demo()
            };
            let s = block_on(cleanse(&m, &d, &k, &device, &host, &mut |_| {})).unwrap();
            results.push((logits, m.last().cloned(), s.last().map(|e| e.loss)));
        }
        let (a, b) = (&results[0], &results[1]);
        // Three SGD steps amplify the backends' rounding differences: agreement to 1%.
        for (x, y) in a.0.iter().zip(&b.0) {
            assert!(
                (x - y).abs() < 1e-2 * x.abs().max(1.0),
                "logits {:?} vs {:?}",
                a.0,
                b.0
            );
        }
        let (la, lb) = (a.2.unwrap(), b.2.unwrap());
        assert!(
            (la - lb).abs() < 1e-2 * la.abs().max(1.0),
            "KD loss {la} vs {lb}"
        );
    }
}
