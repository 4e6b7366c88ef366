//! Layer types in the shape of `candle-nn`'s: a config struct with a `Default`, a struct holding
//! the loaded tensors, a loader function taking a `VarBuilder` whose path is the PyTorch module's
//! key, and `impl candle_nn::Module` so that layers compose with `Tensor::apply`. They run this
//! crate's [`crate::ops`] (CPU kernels with autograd), not candle's 1-D/2-D ones.
//!
//! - [`conv`] holds [`Conv3d`] and [`ConvTranspose3d`] with their config and loaders.
//! - [`norm`] holds [`InstanceNorm3d`], normalising in the input's own storage when taken by
//!   value.
//! - [`activation`] holds [`LeakyRelu`].
//!
//! Weights are requested without an initialisation hint, so that a backend handing out fresh
//! weights (`voxtell_fusion::FreshWeights`) follows the official initialisation, not candle's.

pub mod activation;
pub mod conv;
pub mod norm;

pub use activation::LeakyRelu;
pub use conv::{Conv3d, Conv3dConfig, ConvTranspose3d, conv_transpose3d, conv3d};
pub use norm::{InstanceNorm3d, InstanceNorm3dConfig, instance_norm3d};
