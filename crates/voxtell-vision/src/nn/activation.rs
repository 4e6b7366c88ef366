//! Activation layers.

use candle_core::{Result, Tensor};

use crate::ops;

/// `nn.LeakyReLU(negative_slope)`: `x` where `x ≥ 0`, else `negative_slope · x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakyRelu {
    /// Slope for negative inputs (PyTorch's default is 0.01).
    pub negative_slope: f64,
}

impl Default for LeakyRelu {
    fn default() -> Self {
        LeakyRelu { negative_slope: 0.01 }
    }
}

impl candle_nn::Module for LeakyRelu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::leaky_relu(xs, self.negative_slope)
    }
}
