//! 3-D convolution layers, as `candle-nn`'s `conv.rs` lays out the 1-D and 2-D ones: a config,
//! the layer (`weight`, optional `bias`, config) and a loader (`conv3d`, `conv_transpose3d`).
//! Kernels are given per axis, as the plans give them. Whether a layer has a bias is part of
//! its config, as PyTorch's `bias=` argument is, so one loader serves both forms and a missing
//! `bias` key is an error only where the config asks for one.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops;

/// Options of a [`Conv3d`] or a [`ConvTranspose3d`]. A convolution pads `(k − 1) / 2` per axis
/// (odd kernels only, so a stride-1 convolution keeps the size), as nnU-Net pads, with no
/// dilation or grouping; a transposed convolution has kernel == stride (no overlap, no padding):
/// the U-Net's upsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    /// Stride per axis (D, H, W); a transposed convolution's kernel too.
    pub stride: [usize; 3],
    /// Whether the layer adds a bias (key `bias`), PyTorch's `bias=`.
    pub bias: bool,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Conv3dConfig { stride: [1, 1, 1], bias: true }
    }
}

/// The struct, constructor and accessors the two convolution layers share.
macro_rules! conv_layer {
    ($(#[$doc:meta])* $name:ident, weight: $weight_doc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            weight: Tensor,
            bias: Option<Tensor>,
            config: Conv3dConfig,
        }

        impl $name {
            /// The layer from its tensors; `config.bias` is set by whether `bias` is given.
            pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv3dConfig) -> Self {
                let config = Conv3dConfig { bias: bias.is_some(), ..config };
                $name { weight, bias, config }
            }

            /// The options.
            pub fn config(&self) -> &Conv3dConfig {
                &self.config
            }

            #[doc = $weight_doc]
            pub fn weight(&self) -> &Tensor {
                &self.weight
            }

            /// The bias (C_out), if any.
            pub fn bias(&self) -> Option<&Tensor> {
                self.bias.as_ref()
            }
        }
    };
}

conv_layer!(
    /// `nn.Conv3d` with "same" padding: `weight` (C_out, C_in, kD, kH, kW), optional `bias`
    /// (C_out).
    Conv3d,
    weight: "The weight (C_out, C_in, kD, kH, kW)."
);

conv_layer!(
    /// `nn.ConvTranspose3d` with kernel == stride: `weight` (C_in, C_out, kD, kH, kW) as
    /// PyTorch stores it, optional `bias` (C_out).
    ConvTranspose3d,
    weight: "The weight (C_in, C_out, kD, kH, kW)."
);

impl Conv3d {
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

impl candle_nn::Module for ConvTranspose3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::conv_transpose3d(xs, &self.weight, self.bias.as_ref(), self.config.stride)
    }
}

/// The weight of `shape` and, where `cfg` asks for one, the bias of `c_out`.
fn load_tensors(
    shape: [usize; 5],
    c_out: usize,
    cfg: &Conv3dConfig,
    vb: &VarBuilder,
) -> Result<(Tensor, Option<Tensor>)> {
    let weight = vb.get(shape.to_vec(), "weight")?;
    let bias = if cfg.bias { Some(vb.get(c_out, "bias")?) } else { None };
    Ok((weight, bias))
}

/// Load a [`Conv3d`] `c_in → c_out` with `kernel` (keys `weight`, and `bias` where
/// `cfg.bias`).
pub fn conv3d(
    c_in: usize,
    c_out: usize,
    kernel: [usize; 3],
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let [kd, kh, kw] = kernel;
    let (weight, bias) = load_tensors([c_out, c_in, kd, kh, kw], c_out, &cfg, &vb)?;
    Ok(Conv3d::new(weight, bias, cfg))
}

/// Load a [`ConvTranspose3d`] `c_in → c_out` whose kernel is `cfg.stride` (keys `weight`, and
/// `bias` where `cfg.bias`).
pub fn conv_transpose3d(
    c_in: usize,
    c_out: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    let [kd, kh, kw] = cfg.stride;
    let (weight, bias) = load_tensors([c_in, c_out, kd, kh, kw], c_out, &cfg, &vb)?;
    Ok(ConvTranspose3d::new(weight, bias, cfg))
}
