//! The vision side of VoxTell.
//!
//! - [`ops`]: the 3-D operations the network is built from — convolution, transposed convolution
//!   (kernel == stride), instance normalisation, leaky ReLU, average pooling — as candle tensors
//!   in and out (NCDHW), with gradients for training. On the CPU they run this crate's kernels: a
//!   direct AVX-512 convolution for stride 1 and a tiled im2col + GEMM path for everything else,
//!   with a bounded workspace.
//! - `reference` (cargo feature `reference`, on for this crate's tests): plain scalar
//!   implementations of every op and its backward pass, generic over f32 and f64, that the fast
//!   kernels are tested against.
//! - [`nn`]: candle-nn-style layers over those ops — `Conv3d`, `ConvTranspose3d`,
//!   `InstanceNorm3d`, `LeakyRelu` — each a config, a loader and `impl candle_nn::Module`.
//! - [`encoder`]: the residual encoder (ResEncL) and the decoder's conv blocks, built from a
//!   plans file on those layers and loaded by the official state-dict keys.
//!
//! It knows nothing about text.

#![allow(unsafe_code)] // SIMD kernels and GEMM calls; every unsafe block states its invariants.

pub mod composed;
pub mod encoder;
mod error;
mod kernels;
pub mod nn;
pub mod ops;
#[cfg(feature = "reference")]
pub mod reference;

pub use encoder::{
    ArchKwargs, BasicBlockD, BlockSettings, ConvNormAct, ConvNormActConfig, NormKwargs, ResidualEncoder,
    StackedConvBlocks,
};
pub use error::{Result, VisionError};
pub use ops::{
    add_leaky_relu, avg_pool3d, conv_transpose3d, conv3d, conv3d_add, instance_norm3d, instance_norm3d_act,
    leaky_relu,
};
