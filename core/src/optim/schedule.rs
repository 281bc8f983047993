//! Learning-rate schedules, stepped once per epoch as PyTorch's `MultiStepLR` and
//! `CosineAnnealingLR` are in the reference code.

use serde::{Deserialize, Serialize};

/// The horizon of the defenses' cosine schedules in the authors' code (FT, FP, NAD, MCR's
/// endpoint and the cleanser: `CosineAnnealingLR(optimizer, T_max=100)` whatever the number of
/// epochs), the default here.
pub const AUTHORS_COSINE_T_MAX: usize = 100;

/// Checks a cosine horizon setting (`cosine-t-max`): at least one epoch.
pub fn check_cosine_t_max(t_max: Option<usize>) -> crate::Result<()> {
    match t_max {
        Some(0) => Err(crate::Error::config(
            "cosine-t-max",
            "expected at least 1 epoch",
        )),
        _ => Ok(()),
    }
}

/// A per-epoch learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// Multiply by `gamma` at each milestone epoch (supplement: [100, 150], 0.1).
    Multistep { milestones: Vec<usize>, gamma: f64 },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` epochs.
    Cosine { t_max: usize, eta_min: f64 },
    /// Constant rate.
    Constant,
    /// The schedule of mode-connectivity curve training (Garipov et al. 2018, as MCR uses it):
    /// with `a = epoch / epochs`, the base rate while `a <= 0.5`, then linearly down to 1% of it
    /// at `a = 0.9`, then 1%.
    CurveTraining { epochs: usize },
}

impl Schedule {
    /// The supplement's MultiStep milestones scaled to `epochs` (100/200 and 150/200).
    /// Milestones that would fall on epoch 0 (runs shorter than 2 epochs) are dropped, so a short
    /// run starts at the base rate.
    pub fn default_milestones(epochs: usize) -> Vec<usize> {
        let mut milestones: Vec<usize> = [epochs / 2, epochs * 3 / 4]
            .into_iter()
            .filter(|&m| m > 0)
            .collect();
        milestones.dedup();
        milestones
    }

    /// The supplement's MultiStep schedule: [`Schedule::default_milestones`], gamma 0.1.
    pub fn supplement_multistep(epochs: usize) -> Self {
        Schedule::Multistep {
            milestones: Self::default_milestones(epochs),
            gamma: 0.1,
        }
    }

    /// Cosine annealing to 0 over `epochs`.
    pub fn cosine(epochs: usize) -> Self {
        Schedule::Cosine {
            t_max: epochs,
            eta_min: 0.0,
        }
    }

    /// Cosine annealing to 0 over `t_max` epochs, or over the run's `epochs` when `None`: a
    /// shorter run stops part of the way down, a longer one comes back up (as PyTorch's
    /// `CosineAnnealingLR` does).
    pub fn cosine_horizon(epochs: usize, t_max: Option<usize>) -> Self {
        Self::cosine(t_max.unwrap_or(epochs))
    }

    /// Learning rate of epoch `epoch` (0-based) for base rate `base`.
    pub fn lr(&self, base: f64, epoch: usize) -> f64 {
        match self {
            Schedule::Multistep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                base * gamma.powi(passed as i32)
            }
            Schedule::Cosine { t_max, eta_min } => {
                let t = epoch as f64 / (*t_max).max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            Schedule::Constant => base,
            Schedule::CurveTraining { epochs } => {
                let a = epoch as f64 / (*epochs).max(1) as f64;
                let factor = if a <= 0.5 {
                    1.0
                } else if a <= 0.9 {
                    1.0 - (a - 0.5) / 0.4 * 0.99
                } else {
                    0.01
                };
                base * factor
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_training_holds_then_decays_to_one_percent() {
        let s = Schedule::CurveTraining { epochs: 100 };
        for (epoch, want) in [(0, 1.0), (50, 1.0), (70, 0.505), (90, 0.01), (99, 0.01)] {
            assert!((s.lr(1.0, epoch) - want).abs() < 1e-12, "{epoch}");
        }
    }

    #[test]
    fn multistep_matches_pytorch() {
        let s = Schedule::supplement_multistep(200);
        assert_eq!(
            s,
            Schedule::Multistep {
                milestones: vec![100, 150],
                gamma: 0.1
            }
        );
        assert!((s.lr(0.1, 0) - 0.1).abs() < 1e-12);
        assert!((s.lr(0.1, 99) - 0.1).abs() < 1e-12);
        assert!((s.lr(0.1, 100) - 0.01).abs() < 1e-12);
        assert!((s.lr(0.1, 150) - 0.001).abs() < 1e-12);
        // Short runs: no milestone at epoch 0, none repeated.
        assert!((Schedule::supplement_multistep(1).lr(0.1, 0) - 0.1).abs() < 1e-12);
        assert_eq!(
            Schedule::supplement_multistep(3),
            Schedule::Multistep {
                milestones: vec![1, 2],
                gamma: 0.1
            }
        );
        assert_eq!(
            Schedule::supplement_multistep(2),
            Schedule::Multistep {
                milestones: vec![1],
                gamma: 0.1
            }
        );
    }

    #[test]
    fn cosine_matches_pytorch_closed_form() {
        let s = Schedule::cosine(100);
        assert!((s.lr(0.01, 0) - 0.01).abs() < 1e-12);
        assert!((s.lr(0.01, 50) - 0.005).abs() < 1e-12);
        assert!(s.lr(0.01, 99) < 1e-5 && s.lr(0.01, 99) > 0.0);
    }
}
