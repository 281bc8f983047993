//! Defenses: the family ([`defense::Defense`], the one enum naming them), the run they share
//! ([`run`]) from a suspect model ([`suspect`]), and each method in its own file: the paper's
//! distillation cleanser ([`cleanse`], with its re-initialisation [`reinit`], loss [`kd`] and
//! label-free data [`unlabeled`]), the settings they share ([`settings`]) and the baselines: fine-tuning ([`ft`]), Fine-Pruning ([`fp`]),
//! Neural Attention Distillation ([`nad`]), Mode Connectivity Repair ([`mcr`]), Adversarial
//! Neuron Pruning ([`anp`]) and Implicit Backdoor Adversarial Unlearning ([`ibau`]).

pub mod access;
pub mod anp;
pub mod cleanse;
pub mod defense;
pub mod fp;
pub mod ft;
pub mod ibau;
pub mod kd;
pub mod mcr;
pub mod method;
pub mod nad;
pub mod reinit;
pub(crate) mod run;
pub mod settings;
pub mod suspect;
pub mod unlabeled;

pub use access::DefenderAccess;
pub use defense::Defense;
