//! Defenses. So far the building blocks of the paper's distillation cleanser: the student's
//! layer-wise re-initialisation ([`reinit`]), the temperature-softened KL loss and its schedule
//! ([`kd`]), and label-free data for the defender ([`unlabeled`]).

pub mod cleanse;
pub mod kd;
pub mod reinit;
pub mod unlabeled;
