//! The text side of VoxTell.
//!
//! This crate will own everything that turns a free-text prompt into the vector the network
//! consumes: the Qwen3-Embedding text encoder (through candle-transformers), its tokenizer, the
//! official instruction wrapping and lower-casing, last-token pooling, and the `.npz` embedding
//! bank that lets inference run without the 4-billion-parameter encoder. It knows nothing about
//! images or the segmentation network.
