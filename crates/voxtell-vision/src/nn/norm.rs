//! Normalisation layers.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::LeakyRelu;
use crate::ops;

/// Options of an [`InstanceNorm3d`] (nnU-Net's `norm_op_kwargs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNorm3dConfig {
    /// Added to the variance.
    pub eps: f64,
    /// Whether the norm has a learned per-channel scale and shift (`weight`, `bias`).
    pub affine: bool,
}

impl Default for InstanceNorm3dConfig {
    /// PyTorch's defaults: eps 1e-5, not affine.
    fn default() -> Self {
        InstanceNorm3dConfig { eps: 1e-5, affine: false }
    }
}

/// `nn.InstanceNorm3d`: per sample and channel over (D, H, W), biased variance, then the
/// optional affine `weight`, `bias` (C).
#[derive(Debug, Clone)]
pub struct InstanceNorm3d {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl InstanceNorm3d {
    /// A norm from its tensors: both `weight` and `bias` (affine) or neither.
    pub fn new(weight: Option<Tensor>, bias: Option<Tensor>, eps: f64) -> Result<Self> {
        if weight.is_some() != bias.is_some() {
            candle_core::bail!("InstanceNorm3d: give both weight and bias, or neither");
        }
        Ok(InstanceNorm3d { weight, bias, eps })
    }

    /// The scale (C), when affine.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// The shift (C), when affine.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalise `x`, taken by value: a tensor no other tensor shares storage with (a fresh op
    /// output) is normalised in its own storage for inference, so no second tensor of its size
    /// exists; otherwise (gradients tracked, another device, non-contiguous) as [`Module`]
    /// does.
    ///
    /// [`Module`]: candle_nn::Module
    pub fn forward(&self, x: Tensor) -> Result<Tensor> {
        self.forward_act(x, None)
    }

    /// [`InstanceNorm3d::forward`] followed by `act`, fused into the same pass (the norm's own
    /// output is never materialised).
    pub fn forward_act(&self, x: Tensor, act: Option<LeakyRelu>) -> Result<Tensor> {
        let slope = act.map(|a| a.negative_slope);
        ops::instance_norm3d_act_in_place(x, self.weight.as_ref(), self.bias.as_ref(), self.eps, slope)
    }
}

impl candle_nn::Module for InstanceNorm3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::instance_norm3d(xs, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

/// Load an [`InstanceNorm3d`] over `channels` (keys `weight`, `bias` when affine).
pub fn instance_norm3d(channels: usize, cfg: InstanceNorm3dConfig, vb: VarBuilder) -> Result<InstanceNorm3d> {
    let (weight, bias) = if cfg.affine {
        (Some(vb.get(channels, "weight")?), Some(vb.get(channels, "bias")?))
    } else {
        (None, None)
    };
    InstanceNorm3d::new(weight, bias, cfg.eps)
}
