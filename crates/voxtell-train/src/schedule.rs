//! The learning-rate schedule: nnU-Net's polynomial decay `lr0·(1 − epoch/epochs)^0.9`, with
//! an optional linear warm-up `lr0·(epoch + 1)/warmup` over the first `warmup` epochs, after
//! which the decay runs over the remaining `epochs − warmup` epochs (as VoxTell's fine-tuning
//! trainer: 50 warm-up epochs, then `lr0·(1 − (epoch − 50)/950)^0.9`). The rate is set once per
//! epoch, at its start.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Initial learning rate for training from scratch.
pub const SCRATCH_LR: f64 = 1e-2;
/// Initial learning rate for fine-tuning.
pub const FINE_TUNE_LR: f64 = 1e-3;
/// Warm-up epochs for fine-tuning.
pub const FINE_TUNE_WARMUP: usize = 50;
/// Exponent of the polynomial decay.
pub const POLY_EXPONENT: f64 = 0.9;

/// Polynomial learning-rate decay with optional linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolySchedule {
    /// The peak (initial) learning rate `lr0`.
    pub initial_lr: f64,
    /// Total epochs, warm-up included.
    pub epochs: usize,
    /// Warm-up epochs (0: none).
    #[serde(default)]
    pub warmup_epochs: usize,
    /// Exponent of the decay.
    #[serde(default = "default_exponent")]
    pub exponent: f64,
}

fn default_exponent() -> f64 {
    POLY_EXPONENT
}

impl PolySchedule {
    /// Polynomial decay from `initial_lr` over `epochs` epochs, no warm-up.
    pub fn new(initial_lr: f64, epochs: usize) -> Self {
        PolySchedule { initial_lr, epochs, warmup_epochs: 0, exponent: POLY_EXPONENT }
    }

    /// The default for training from scratch: `lr0 = 1e-2`, no warm-up.
    pub fn from_scratch(epochs: usize) -> Self {
        Self::new(SCRATCH_LR, epochs)
    }

    /// The default for fine-tuning: `lr0 = 1e-3` with a 50-epoch warm-up (fewer when `epochs`
    /// is smaller).
    pub fn fine_tuning(epochs: usize) -> Self {
        Self::new(FINE_TUNE_LR, epochs).with_warmup(FINE_TUNE_WARMUP.min(epochs.saturating_sub(1)))
    }

    /// The same schedule with `warmup` warm-up epochs.
    pub fn with_warmup(mut self, warmup: usize) -> Self {
        self.warmup_epochs = warmup;
        self
    }

    /// Check that the settings make sense: a positive finite rate, at least one epoch after the
    /// warm-up, a positive exponent.
    pub fn validate(&self) -> Result<()> {
        if !self.initial_lr.is_finite() || self.initial_lr <= 0.0 {
            return Err(TrainError::Config(format!("learning rate {} must be positive", self.initial_lr)));
        }
        if self.warmup_epochs >= self.epochs {
            return Err(TrainError::Config(format!(
                "{} warm-up epochs leave none of the {} epochs for the decay",
                self.warmup_epochs, self.epochs
            )));
        }
        if !self.exponent.is_finite() || self.exponent <= 0.0 {
            return Err(TrainError::Config(format!("decay exponent {} must be positive", self.exponent)));
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (0-based). Epochs at or past the end give 0.
    pub fn lr(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs {
            return self.initial_lr * (epoch + 1) as f64 / self.warmup_epochs as f64;
        }
        let span = self.epochs.saturating_sub(self.warmup_epochs);
        let step = epoch - self.warmup_epochs;
        if step >= span {
            return 0.0;
        }
        self.initial_lr * (1.0 - step as f64 / span as f64).powf(self.exponent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        close_to(a, b, 1e-15);
    }

    fn close_to(a: f64, b: f64, rel: f64) {
        assert!((a - b).abs() <= rel * b.abs().max(1e-300), "{a} vs {b}");
    }

    #[test]
    fn poly_without_warmup() {
        let s = PolySchedule::from_scratch(1000);
        s.validate().ok();
        assert_eq!(s.lr(0), 1e-2);
        // (1 − 500/1000)^0.9 = 0.5^0.9 = 0.5358867312681466
        close(s.lr(500), 1e-2 * 0.535_886_731_268_146_6);
        // (1 − 999/1000)^0.9 = 0.001^0.9 = 0.001995262314968879…
        close_to(s.lr(999), 1e-2 * 0.001_995_262_314_968_879_4, 1e-12);
        assert_eq!(s.lr(1000), 0.0);
    }

    #[test]
    fn poly_with_warmup() {
        let s = PolySchedule::fine_tuning(1000);
        assert!(s.validate().is_ok());
        assert_eq!(s.warmup_epochs, 50);
        close(s.lr(0), 1e-3 / 50.0);
        close(s.lr(24), 1e-3 * 25.0 / 50.0);
        close(s.lr(49), 1e-3);
        assert_eq!(s.lr(50), 1e-3);
        // (1 − 475/950)^0.9 = 0.5^0.9.
        close(s.lr(525), 1e-3 * 0.535_886_731_268_146_6);
        // (1 − 949/950)^0.9 = (1/950)^0.9 = exp(−0.9·ln 950) (1 − 949/950 is rounded: 1e-12).
        close_to(s.lr(999), 1e-3 * (-(0.9 * 950f64.ln())).exp(), 1e-12);
        assert_eq!(s.lr(1000), 0.0);
    }

    #[test]
    fn invalid_settings() {
        assert!(PolySchedule::new(0.0, 10).validate().is_err());
        assert!(PolySchedule::new(1e-2, 10).with_warmup(10).validate().is_err());
        assert!(PolySchedule::new(1e-2, 0).validate().is_err());
    }
}
