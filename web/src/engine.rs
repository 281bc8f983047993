//! The demo's work, batch by batch: training a narrow ResNet-18 (clean or backdoored), cleansing
//! it with the distillation cleanser, and stamping triggers. Everything model-related is `core`'s
//! code; what this module adds is a loop that reads results back asynchronously and hands control
//! back to its [`Host`] after every batch, so that it runs in a browser tab (WebGPU or the CPU
//! backend) without freezing the page, and natively in tests.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use cleanse_core::attack::iab::{Generator, IabHooks, IabNets, mask_loss, mask_lr};
use cleanse_core::attack::poison::{AttackHooks, asr_set};
use cleanse_core::attack::{Attack, AttackConfig, AttackKind, Stamping};
use cleanse_core::data::augment::Augment;
use cleanse_core::data::batcher::{chunk_order, epoch_order, make_batch};
use cleanse_core::data::{DataSpec, DatasetKind, ImageSet, records};
use cleanse_core::defend::kd::{distillation_loss, temperature};
use cleanse_core::defend::reinit::{self, ADAPTIVE_RATIOS, InitMode};
use cleanse_core::model::{Architecture, Classifier, ModelConfig};
use cleanse_core::train::adam::{Adam, AdamConfig};
use cleanse_core::train::eval::{images_tensor, labels_tensor};
use cleanse_core::train::run::TrainHooks;
use cleanse_core::train::{Schedule, Sgd, SgdConfig, cross_entropy};
use std::future::Future;
use std::path::Path;

/// What the loops need from where they run.
pub trait Host {
    /// Milliseconds from some fixed point.
    fn now_ms(&self) -> f64;
    /// Whether the user asked to stop; checked after every batch.
    fn stop_requested(&self) -> bool;
    /// Gives the event loop a turn (the browser repaints and handles clicks).
    fn pause(&self) -> impl Future<Output = ()>;
}

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
        // of the 1,500 training images gives 98.0% (README).
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
    /// The browser demo's default: 20 epochs at twice the adaptive ratios. On the demo's 500
    /// unlabeled images the method's own ratios leave most of the backdoor (BadNets ASR 98.0% to
    /// 71.0% in 10 epochs); twice the ratios for 20 epochs bring it to 29.3%, at 5.4 points of
    /// clean accuracy (`demo_run` example, README).
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

/// Progress of a loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Something other than batches is going on (poisoning the training set, evaluating).
    Stage(String),
    /// A batch finished: 0-based epoch and batch, batches this epoch, the batch's loss.
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
    },
    /// An epoch finished and was evaluated.
    Epoch(EpochPoint),
}

/// One evaluated epoch; accuracies are fractions in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPoint {
    /// 1-based.
    pub epoch: usize,
    pub loss: f64,
    pub clean_acc: f64,
    pub asr: Option<f64>,
    /// Training time of the epoch (evaluation excluded).
    pub train_seconds: f64,
    pub images: usize,
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

/// Reads a tensor's values without blocking (WebGPU cannot block).
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, String> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| format!("reading back from the device: {e:?}"))?;
    Ok(data.iter::<f32>().collect())
}

async fn read_count(t: Tensor<1, Int>) -> Result<usize, String> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| format!("reading back from the device: {e:?}"))?;
    Ok(data.iter::<i64>().next().unwrap_or(0) as usize)
}

/// An error when `model`'s outputs on the first images of `set` are not finite (weights that
/// diverged, or a device that computes garbage), naming `what`.
async fn check_finite(
    model: &Classifier,
    set: &ImageSet,
    device: &Device,
    what: &str,
) -> Result<(), String> {
    let n = set.len().min(8);
    if n == 0 {
        return Ok(());
    }
    let idx: Vec<usize> = (0..n).collect();
    let b = make_batch(set, &idx, &Augment::NONE, 0, 0);
    let logits = read_f32(model.forward(images_tensor(b.images, b.shape, device))).await?;
    match logits.iter().all(|v| v.is_finite()) {
        true => Ok(()),
        false => Err(format!(
            "{what}: the model's outputs are not finite (its weights diverged, or the device \
             computed garbage); try a lower learning rate or the CPU backend"
        )),
    }
}

/// Fraction of `set` that `model` classifies as labelled, each batch passed through `stamp`
/// first when given (for ASR, `set` comes from [`asr_set`]).
pub async fn accuracy<H: Host>(
    model: &Classifier,
    set: &ImageSet,
    stamp: Option<&dyn Fn(Tensor<4>) -> Tensor<4>>,
    device: &Device,
    host: &H,
) -> Result<f64, String> {
    if set.is_empty() {
        return Ok(0.0);
    }
    let order: Vec<usize> = (0..set.len()).collect();
    let mut correct = 0usize;
    for c in order.chunks(200) {
        let b = make_batch(set, c, &Augment::NONE, 0, 0);
        let mut x = images_tensor(b.images, b.shape, device);
        if let Some(f) = stamp {
            x = f(x);
        }
        let y = labels_tensor(b.labels, device);
        let pred = model.forward(x).argmax(1).reshape([c.len()]);
        correct += read_count(pred.equal(y).int().sum()).await?;
        host.pause().await;
    }
    Ok(correct as f64 / set.len() as f64)
}

/// Clean accuracy and ASR of `model` against `attack` (IAB through `iab`).
pub async fn evaluate<H: Host>(
    model: &Classifier,
    attack: Option<&Attack>,
    iab: Option<&IabNets>,
    test: &ImageSet,
    device: &Device,
    host: &H,
) -> Result<(f64, Option<f64>), String> {
    let clean = accuracy(model, test, None, device, host).await?;
    let asr = match attack {
        None => None,
        Some(a) => {
            let set = asr_set(a, test);
            let asr = match (&a.trigger, iab) {
                (Some(t), _) => accuracy(model, &set, Some(&|x| t.apply(x)), device, host).await?,
                (None, Some(nets)) => {
                    accuracy(model, &set, Some(&|x| nets.stamp(x)), device, host).await?
                }
                (None, None) => return Err("an IAB attack without its networks".into()),
            };
            Some(asr)
        }
    };
    Ok((clean, asr))
}

/// Running totals of one epoch.
#[derive(Default)]
struct EpochTotals {
    loss_sum: f64,
    seen: usize,
}

/// After a batch's step: reads its loss back (an error if it is not finite), adds it to the
/// totals, reports the batch and gives the host a turn. `at` is (epoch, batch, batches); returns
/// whether the user asked to stop.
async fn finish_batch<H: Host>(
    loss: Tensor<1>,
    what: &str,
    (epoch, batch, batches): (usize, usize, usize),
    images: usize,
    totals: &mut EpochTotals,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<bool, String> {
    let value = read_f32(loss).await?[0] as f64;
    if !value.is_finite() {
        return Err(format!(
            "{what} diverged: loss {value} at epoch {} batch {}; lower the learning rate",
            epoch + 1,
            batch + 1
        ));
    }
    totals.loss_sum += value * images as f64;
    totals.seen += images;
    on(Progress::Batch {
        epoch,
        batch,
        batches,
        loss: value,
    });
    host.pause().await;
    Ok(host.stop_requested())
}

/// After an epoch: checks `model` (an evaluation copy) for finite outputs, measures clean
/// accuracy and ASR against `attack` (IAB through its networks), and reports the epoch.
async fn finish_epoch<H: Host>(
    model: &Classifier,
    (attack, iab): (Option<&Attack>, Option<&IabNets>),
    test: &ImageSet,
    (what, epoch, t0, totals): (&str, usize, f64, &EpochTotals),
    device: &Device,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<EpochPoint, String> {
    let train_seconds = (host.now_ms() - t0) / 1000.0;
    on(Progress::Stage(format!(
        "{what}: epoch {} took {train_seconds:.2} s ({} images); evaluating",
        epoch + 1,
        totals.seen
    )));
    check_finite(
        model,
        test,
        device,
        &format!("after {what} epoch {}", epoch + 1),
    )
    .await?;
    let (clean_acc, asr) = evaluate(model, attack, iab, test, device, host).await?;
    let point = EpochPoint {
        epoch: epoch + 1,
        loss: totals.loss_sum / totals.seen.max(1) as f64,
        clean_acc,
        asr,
        train_seconds,
        images: totals.seen,
    };
    on(Progress::Epoch(point.clone()));
    Ok(point)
}

fn batches_of(
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    max: Option<usize>,
) -> Vec<Vec<usize>> {
    let mut chunks = chunk_order(&epoch_order(n, seed, epoch as u64), batch_size);
    if let Some(m) = max {
        chunks.truncate(m.max(1));
    }
    chunks
}

/// IAB's mask pre-training ([`cleanse_core::attack::iab::pretrain_mask`]'s loop, reading its loss
/// back asynchronously); `None` when stopped.
async fn pretrain_mask<H: Host>(
    hooks: &IabHooks,
    set: &ImageSet,
    device: &Device,
    host: &H,
    on: &mut dyn FnMut(Progress),
) -> Result<Option<Generator>, String> {
    let t = hooks.mask_training();
    let ad = device.clone().autodiff();
    let mut mask = hooks.fresh_mask(device).train();
    let mut adam = Adam::new(AdamConfig {
        beta1: 0.5,
        beta2: 0.9,
        eps: 1e-8,
    });
    for epoch in 0..t.epochs {
        let lr = mask_lr(&t, epoch);
        let a = chunk_order(&epoch_order(set.len(), t.seed, epoch as u64), t.batch_size);
        let b = chunk_order(
            &epoch_order(set.len(), t.seed ^ 0x005E_C04D, epoch as u64),
            t.batch_size,
        );
        for (i, (ca, cb)) in a.iter().zip(&b).enumerate() {
            let n = ca.len().min(cb.len());
            if n < 2 {
                continue;
            }
            let b1 = make_batch(set, &ca[..n], &t.augment, t.seed, epoch as u64);
            let b2 = make_batch(
                set,
                &cb[..n],
                &t.augment,
                t.seed ^ 0x005E_C04D,
                epoch as u64,
            );
            let loss = mask_loss(
                &mask,
                images_tensor(b1.images, b1.shape, &ad),
                images_tensor(b2.images, b2.shape, &ad),
                &t,
            );
            let grads = GradientsParams::from_grads(loss.backward(), &mask);
            mask = adam.step(lr, mask, grads);
            let value = read_f32(loss.inner()).await?[0];
            on(Progress::Stage(format!(
                "IAB: pre-training the mask network, epoch {}/{}, batch {}/{}, loss {value:.3}",
                epoch + 1,
                t.epochs,
                i + 1,
                a.len()
            )));
            host.pause().await;
            if host.stop_requested() {
                return Ok(None);
            }
        }
    }
    Ok(Some(mask.valid()))
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
    if plan.epochs == 0 || plan.batch_size < 2 || plan.width == 0 {
        return Err("training needs at least one epoch, batches of 2 and a positive width".into());
    }
    let mut train_set = data.train.clone();
    let mut hooks: Option<Box<dyn TrainHooks>> = None;
    let mut iab_hooks: Option<IabHooks> = None;
    let mut attack = None;
    match plan.attack {
        None => {}
        Some(AttackKind::Iab) => {
            let a = Attack::new(
                demo_attack_config(AttackKind::Iab, data.kind, plan.seed),
                &train_set,
            )
            .map_err(err)?;
            attack = Some(a.clone());
            let mut h = IabHooks::new(a, plan.batch_size, Augment::NONE, plan.seed);
            let Some(mask) = pretrain_mask(&h, &train_set, device, host, on).await? else {
                return Err("stopped during IAB's mask pre-training".into());
            };
            h.prepare_with_mask(mask, &data.test, device);
            iab_hooks = Some(h);
        }
        Some(kind) => {
            on(Progress::Stage(format!(
                "poisoning the training set ({})",
                kind.name()
            )));
            host.pause().await;
            let mut config = demo_attack_config(kind, data.kind, plan.seed);
            if let Some(rate) = plan.poison_rate {
                config.poison_rate = rate;
            }
            let a = Attack::new(config, &train_set).map_err(err)?;
            if kind == AttackKind::Lc && clean_model.is_none() {
                return Err(
                    "LC makes its adversarial images on a clean model: train a clean model first"
                        .into(),
                );
            }
            if kind == AttackKind::Lc
                && cfg!(target_arch = "wasm32")
                && cleanse_core::kernels::is_wgpu(device)
            {
                return Err(
                    "LC's adversarial images are read back synchronously, which WebGPU \
                            cannot do in a browser: choose the CPU backend for LC"
                        .into(),
                );
            }
            let mut h = AttackHooks::new(a, clean_model.cloned(), false).map_err(err)?;
            let indices: Vec<usize> = (0..train_set.len()).collect();
            train_set = h
                .poison_training_set(train_set, &indices, &data.test, device)
                .map_err(err)?;
            attack = Some(h.attack.clone());
            hooks = Some(Box::new(h));
        }
    }
    let config = ModelConfig {
        architecture: Architecture::Resnet18,
        width: plan.width,
        num_classes: data.train.num_classes,
        normalization: data.normalization(),
    };
    let ad = device.clone().autodiff();
    let mut model = config.init_seeded(&ad, plan.seed);
    let mut sgd = Sgd::new(SgdConfig::default());
    let schedule = Schedule::cosine(plan.epochs);
    let mut history = Vec::new();
    let mut stopped = false;
    for epoch in 0..plan.epochs {
        let lr = schedule.lr(plan.lr, epoch);
        let chunks = batches_of(
            train_set.len(),
            plan.batch_size,
            plan.seed,
            epoch,
            plan.max_batches,
        );
        let t0 = host.now_ms();
        let mut totals = EpochTotals::default();
        for (bi, c) in chunks.iter().enumerate() {
            let b = make_batch(&train_set, c, &Augment::NONE, plan.seed, epoch as u64);
            let x = images_tensor(b.images.clone(), b.shape, &ad);
            let y = labels_tensor(b.labels.clone(), &ad);
            let hook: Option<&mut dyn TrainHooks> = match (&mut hooks, &mut iab_hooks) {
                (Some(h), _) => Some(h.as_mut()),
                (None, Some(h)) => Some(h),
                (None, None) => None,
            };
            let (x, y, extra, hook) = match hook {
                Some(h) => {
                    let (x, y, extra) = h.batch(x, y, &b, plan.seed, epoch, bi);
                    (x, y, extra, Some(h))
                }
                None => (x, y, None, None),
            };
            let mut loss = cross_entropy(model.forward(x), y);
            if let Some(e) = extra {
                loss = loss + e;
            }
            let mut grads = loss.backward();
            if let Some(h) = hook {
                h.after_backward(&mut grads, epoch);
            }
            let grads = GradientsParams::from_grads(grads, &model);
            model = sgd.step(lr, model, grads);
            let what = "training";
            if finish_batch(
                loss.inner(),
                what,
                (epoch, bi, chunks.len()),
                c.len(),
                &mut totals,
                host,
                on,
            )
            .await?
            {
                stopped = true;
                break;
            }
        }
        let eval = model.valid();
        let nets = iab_hooks.as_ref().and_then(IabHooks::nets);
        let point = finish_epoch(
            &eval,
            (attack.as_ref(), nets.as_ref()),
            &data.test,
            ("training", epoch, t0, &totals),
            device,
            host,
            on,
        )
        .await?;
        history.push(point);
        if stopped {
            break;
        }
    }
    Ok(DemoModel {
        model: model.valid(),
        config,
        attack,
        iab: iab_hooks.as_ref().and_then(IabHooks::nets),
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
    let ratios = reinit::scale_ratios(ADAPTIVE_RATIOS, plan.ratio_scale).map_err(err)?;
    check_finite(&teacher.model, &data.test, device, "the model to cleanse").await?;
    let (student, _) = reinit::student(
        &teacher.model,
        &teacher.config,
        &InitMode::Adaptive { ratios },
        plan.seed,
        device,
    );
    let mut student = student.train();
    let mut sgd = Sgd::new(SgdConfig::default());
    let schedule = Schedule::cosine(plan.epochs);
    let augment = Augment::standard(data.kind.allows_flip());
    let mut history = Vec::new();
    let mut stopped = false;
    for epoch in 0..plan.epochs {
        let lr = schedule.lr(plan.lr, epoch);
        let t = temperature(epoch, plan.epochs);
        let chunks = batches_of(
            data.unlabeled.len(),
            plan.batch_size,
            plan.seed,
            epoch,
            plan.max_batches,
        );
        let t0 = host.now_ms();
        let mut totals = EpochTotals::default();
        for (bi, c) in chunks.iter().enumerate() {
            // Only the images of the batch reach the device: the labels stay behind.
            let b = make_batch(&data.unlabeled, c, &augment, plan.seed, epoch as u64);
            let x = images_tensor(b.images, b.shape, device);
            let t_logits = teacher.model.forward(x.clone());
            let s_logits = student.forward(x.autodiff());
            let loss = distillation_loss(s_logits, t_logits.autodiff(), t);
            let grads = GradientsParams::from_grads(loss.backward(), &student);
            student = sgd.step(lr, student, grads);
            if finish_batch(
                loss.inner(),
                "cleansing",
                (epoch, bi, chunks.len()),
                c.len(),
                &mut totals,
                host,
                on,
            )
            .await?
            {
                stopped = true;
                break;
            }
        }
        let eval = student.valid();
        let point = finish_epoch(
            &eval,
            (teacher.attack.as_ref(), teacher.iab.as_ref()),
            &data.test,
            ("cleansing", epoch, t0, &totals),
            device,
            host,
            on,
        )
        .await?;
        history.push(point);
        if stopped {
            break;
        }
    }
    Ok(DemoModel {
        model: student.valid(),
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

/// A model trained by the CLI, from the files of its run directory: `model.json` and
/// `model.bpk`, and for a backdoored model `attack.json` with its trigger files
/// (`warp_grid.f32` for WaNet, `iab_generator.bpk` and `iab_mask.bpk` for IAB).
pub fn load_run(files: &RunFiles, device: &Device) -> Result<DemoModel, String> {
    use cleanse_core::attack::files as af;
    use cleanse_core::train::run::files as rf;
    let get = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b);
    let need = |name: &str, why: &str| {
        get(name).ok_or_else(|| {
            let given: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "{name} is missing ({why}); pick the files of one run directory (given: {})",
                given.join(", ")
            )
        })
    };
    let config_bytes = need(rf::MODEL_CONFIG, "the model's configuration")?;
    let config: ModelConfig = serde_json::from_slice(config_bytes)
        .map_err(|e| format!("{}: not a model configuration: {e}", rf::MODEL_CONFIG))?;
    let weights = need(rf::MODEL, "the model's weights")?.clone();
    let model = cleanse_core::train::checkpoint::model_from_bytes(
        config.init(device),
        weights,
        Path::new(rf::MODEL),
    )
    .map_err(err)?;
    let attack = match get(af::ATTACK) {
        None => None,
        Some(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("{}: not UTF-8 text", af::ATTACK))?;
            Some(
                Attack::from_saved(
                    Path::new(af::ATTACK),
                    text,
                    get(af::WARP_GRID).map(|b| b.as_slice()),
                    Path::new(af::WARP_GRID),
                )
                .map_err(err)?,
            )
        }
    };
    let iab = match &attack {
        Some(a) if a.config.kind == AttackKind::Iab => Some(
            IabNets::from_bytes(
                need(af::IAB_GENERATOR, "IAB's generator")?.clone(),
                need(af::IAB_MASK, "IAB's mask network")?.clone(),
                [Path::new(af::IAB_GENERATOR), Path::new(af::IAB_MASK)],
                a.image_shape[0],
                a.config.iab_width,
                device,
            )
            .map_err(err)?,
        ),
        _ => None,
    };
    Ok(DemoModel {
        model: model.valid(),
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
        let core_acc = cleanse_core::train::eval::accuracy(&trained.model, &test, 32, &device);
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
        use cleanse_core::train::run::files as rf;
        cleanse_core::train::checkpoint::save_model(&m.model, &dir.path().join(rf::MODEL)).unwrap();
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
        let (acc, asr) = block_on(evaluate(
            &loaded.model,
            loaded.attack.as_ref(),
            None,
            &d.test,
            &device,
            &host,
        ))
        .unwrap();
        let last = m.last().unwrap();
        assert_eq!((acc, asr), (last.clean_acc, last.asr));
        files.retain(|(n, _)| n != "warp_grid.f32");
        let e = load_run(&files, &device).unwrap_err();
        assert!(e.contains("warp_grid.f32"), "{e}");
        files.retain(|(n, _)| n != rf::MODEL);
        let e = load_run(&files, &device).unwrap_err();
        assert!(e.contains("model.bpk is missing"), "{e}");
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
