//! An attack's part in a training run ([`AttackTraining`]): the hooks the training loop calls,
//! set up the same way for the command line and the browser.

use super::iab::IabHooks;
use super::poison::{AttackHooks, OwnCleanModel};
use super::{Attack, AttackKind};
use crate::Result;
use crate::data::augment::Augment;
use crate::model::Classifier;
use crate::train::run::TrainHooks;

/// Where LC's clean model (the one its adversarial images are made on) comes from.
pub enum CleanModel {
    /// None: an error for LC, nothing for the other attacks.
    None,
    /// A model trained before.
    Given(Box<Classifier>),
    /// Trained by the run itself as the first step of its preparation.
    Own(Box<OwnCleanModel>),
}

/// An attack's hooks in a training run.
pub enum AttackTraining {
    /// A poisoned training set (BadNets, Blended, SIG, LC, WaNet).
    Poisoned(AttackHooks),
    /// IAB: its trigger networks trained beside the model.
    Iab(IabHooks),
}

impl AttackTraining {
    /// `attack`'s hooks for a run with batches of `batch_size`, `augment` and `seed` (IAB's
    /// mask pre-training uses them; the poisoned set's flips follow `augment.flip`).
    pub fn new(
        attack: Attack,
        clean_model: CleanModel,
        batch_size: usize,
        augment: Augment,
        seed: u64,
    ) -> Result<Self> {
        Ok(match (attack.config.kind, clean_model) {
            (AttackKind::Iab, _) => {
                AttackTraining::Iab(IabHooks::new(attack, batch_size, augment, seed))
            }
            (_, CleanModel::Own(own)) => AttackTraining::Poisoned(
                AttackHooks::with_own_clean_model(attack, *own, augment.flip)?,
            ),
            (_, CleanModel::Given(m)) => {
                AttackTraining::Poisoned(AttackHooks::new(attack, Some(*m), augment.flip)?)
            }
            (_, CleanModel::None) => {
                AttackTraining::Poisoned(AttackHooks::new(attack, None, augment.flip)?)
            }
        })
    }

    /// The hooks as the training loop takes them.
    pub fn hooks(&mut self) -> &mut dyn TrainHooks {
        match self {
            AttackTraining::Poisoned(h) => h,
            AttackTraining::Iab(h) => h,
        }
    }

    /// The attack.
    pub fn attack(&self) -> &Attack {
        match self {
            AttackTraining::Poisoned(h) => &h.attack,
            AttackTraining::Iab(h) => &h.attack,
        }
    }
}
