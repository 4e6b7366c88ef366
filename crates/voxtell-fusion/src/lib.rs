//! The VoxTell network.
//!
//! This crate will own the parts that join text and image: the transformer prompt decoder, the
//! MLP adapters, the 3-D positional encoding, the fusion decoder that mixes prompt embeddings into
//! the U-Net decoder at five scales, and `VoxTellModel`, built from `plans.json` and loaded from
//! the published checkpoint without conversion.
