//! Training and fine-tuning of text-prompted VoxTell models.
//!
//! This crate will own datasets in the nnU-Net raw layout, positive/negative prompt sampling,
//! augmentation, the Dice + BCE loss with five-scale deep supervision, the SGD/poly schedule and
//! checkpointing — the training code the official release does not ship.
