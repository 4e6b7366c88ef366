//! 3-D convolution layers, as `candle-nn`'s `conv.rs` lays out the 1-D and 2-D ones: a config,
//! the layer (`weight`, optional `bias`, config) and the loaders `conv3d` / `conv3d_no_bias`
//! (and the transposed pair). Kernels are given per axis, as the plans give them.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops;

/// Options of a [`Conv3d`]. The padding is always `(k − 1) / 2` per axis (odd kernels only, so
/// a stride-1 convolution keeps the size), as nnU-Net pads; there is no dilation or grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    /// Stride per axis (D, H, W).
    pub stride: [usize; 3],
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Conv3dConfig { stride: [1, 1, 1] }
    }
}

/// `nn.Conv3d` with "same" padding: `weight` (C_out, C_in, kD, kH, kW), optional `bias` (C_out).
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv3dConfig,
}

impl Conv3d {
    /// A convolution from its tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv3dConfig) -> Self {
        Conv3d { weight, bias, config }
    }

    /// The options.
    pub fn config(&self) -> &Conv3dConfig {
        &self.config
    }

    /// The weight (C_out, C_in, kD, kH, kW).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias (C_out), if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl candle_nn::Module for Conv3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::conv3d(xs, &self.weight, self.bias.as_ref(), self.config.stride)
    }
}

fn conv3d_weight(c_in: usize, c_out: usize, kernel: [usize; 3], vb: &VarBuilder) -> Result<Tensor> {
    vb.get((c_out, c_in, kernel[0], kernel[1], kernel[2]), "weight")
}

/// Load a [`Conv3d`] `c_in → c_out` with `kernel` (keys `weight`, `bias`).
pub fn conv3d(
    c_in: usize,
    c_out: usize,
    kernel: [usize; 3],
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let weight = conv3d_weight(c_in, c_out, kernel, &vb)?;
    let bias = vb.get(c_out, "bias")?;
    Ok(Conv3d::new(weight, Some(bias), cfg))
}

/// Load a [`Conv3d`] `c_in → c_out` with `kernel` and no bias (key `weight`).
pub fn conv3d_no_bias(
    c_in: usize,
    c_out: usize,
    kernel: [usize; 3],
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    Ok(Conv3d::new(conv3d_weight(c_in, c_out, kernel, &vb)?, None, cfg))
}

/// Options of a [`ConvTranspose3d`]. Only kernel == stride (no overlap, no padding) is
/// supported: the U-Net's upsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose3dConfig {
    /// Stride per axis (D, H, W), equal to the kernel size.
    pub stride: [usize; 3],
}

impl Default for ConvTranspose3dConfig {
    fn default() -> Self {
        ConvTranspose3dConfig { stride: [2, 2, 2] }
    }
}

/// `nn.ConvTranspose3d` with kernel == stride: `weight` (C_in, C_out, kD, kH, kW) as PyTorch
/// stores it, optional `bias` (C_out).
#[derive(Debug, Clone)]
pub struct ConvTranspose3d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: ConvTranspose3dConfig,
}

impl ConvTranspose3d {
    /// A transposed convolution from its tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: ConvTranspose3dConfig) -> Self {
        ConvTranspose3d { weight, bias, config }
    }

    /// The options.
    pub fn config(&self) -> &ConvTranspose3dConfig {
        &self.config
    }

    /// The weight (C_in, C_out, kD, kH, kW).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias (C_out), if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl candle_nn::Module for ConvTranspose3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::conv_transpose3d(xs, &self.weight, self.bias.as_ref(), self.config.stride)
    }
}

fn conv_transpose3d_weight(
    c_in: usize,
    c_out: usize,
    kernel: [usize; 3],
    cfg: &ConvTranspose3dConfig,
    vb: &VarBuilder,
) -> Result<Tensor> {
    if kernel != cfg.stride {
        candle_core::bail!(
            "{}: transposed convolution kernel {kernel:?} must equal its stride {:?}",
            vb.prefix(),
            cfg.stride
        );
    }
    vb.get((c_in, c_out, kernel[0], kernel[1], kernel[2]), "weight")
}

/// Load a [`ConvTranspose3d`] `c_in → c_out` with `kernel` (== `cfg.stride`; keys `weight`,
/// `bias`).
pub fn conv_transpose3d(
    c_in: usize,
    c_out: usize,
    kernel: [usize; 3],
    cfg: ConvTranspose3dConfig,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    let weight = conv_transpose3d_weight(c_in, c_out, kernel, &cfg, &vb)?;
    let bias = vb.get(c_out, "bias")?;
    Ok(ConvTranspose3d::new(weight, Some(bias), cfg))
}

/// Load a [`ConvTranspose3d`] `c_in → c_out` with `kernel` (== `cfg.stride`) and no bias (key
/// `weight`).
pub fn conv_transpose3d_no_bias(
    c_in: usize,
    c_out: usize,
    kernel: [usize; 3],
    cfg: ConvTranspose3dConfig,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    Ok(ConvTranspose3d::new(conv_transpose3d_weight(c_in, c_out, kernel, &cfg, &vb)?, None, cfg))
}
