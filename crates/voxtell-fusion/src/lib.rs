//! The VoxTell network.
//!
//! - [`checkpoint`]: reads `checkpoint_final.pth` (nnU-Net's pickled dict, weights under
//!   `network_weights`) or `model.safetensors`, by canonical key, skipping the state dict's
//!   aliases.
//! - [`transformer`]: the prompt decoder (pre-norm cross-attention + feed-forward layers), the
//!   LayerNorm and the Linear–GELU–Linear adapters.
//! - [`posenc`]: the 3-D sinusoidal positional encoding of the memory tokens, for models
//!   without a stored `pos_embed`.
//! - [`decoder`]: the fusion decoder, which mixes the prompts' mask embeddings into the U-Net
//!   decoder at five scales, all prompts of a group in one batch.
//! - [`model`]: `VoxTellModel`, built from `plans.json` and the checkpoint's tensor shapes.
//! - [`ModelDir`]: the model folder (`plans.json`, the weights, `voxtell.json`), opened and
//!   checked in one place and written atomically; [`resolve_model_dir`] and [`resolve_bank`]
//!   find the published folder and bank (a path, an environment variable, the Hugging Face
//!   cache).
//! - [`meta`]: `voxtell.json` (memory stage, attention heads, expected text encoder, the
//!   training data's voxel spacings) and [`convert`], which writes a folder that loads from
//!   safetensors.
//! - [`init`]: fresh weights for new models, initialised as the official classes do.

pub mod checkpoint;
pub mod decoder;
mod error;
mod folder;
pub mod init;
pub mod meta;
pub mod model;
mod pickle_guard;
mod plans;
pub mod posenc;
mod published;
pub mod transformer;

pub use checkpoint::Checkpoint;
pub use error::{FusionError, Result};
pub use folder::{ModelDir, bank_search_places, convert, is_model_dir, resolve_bank, resolve_model_dir};
pub use init::FreshWeights;
pub use meta::{ModelMeta, SpacingAxis, SpacingRange, TextEncoderSpec};
pub use model::{VoxTellConfig, VoxTellModel, VoxTellOutput};
pub use plans::PlansNetwork;
pub use published::{PUBLISHED_BANK, PUBLISHED_FOLDER, PUBLISHED_REPO, VOXTELL_EMBEDDINGS, VOXTELL_MODEL};
