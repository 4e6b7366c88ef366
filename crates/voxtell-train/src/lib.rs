//! Training and fine-tuning of text-prompted VoxTell models.
//!
//! This crate owns datasets in the nnU-Net raw layout, positive/negative prompt sampling,
//! augmentation, the Dice + BCE loss with five-scale deep supervision, the SGD/poly schedule and
//! checkpointing — the training code the official release does not ship. Synthetic training data
//! (torso phantoms) comes from the `voxtell-phantom` crate.

pub mod config;
pub mod curves;
pub mod error;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod step;
pub mod trainer;

pub mod augment;
pub mod cache;
pub mod data;
pub mod loader;
pub mod sampler;
mod text_noise;

pub use error::{Result, TrainError};
/// The seeded random streams of sampling, augmentation and prompt noise: the generator of the
/// phantoms (`voxtell-phantom`), so that a training run and its phantom data share one definition.
pub use voxtell_phantom::rng;
