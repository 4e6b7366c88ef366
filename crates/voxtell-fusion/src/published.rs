//! Where the published weights live (the Hugging Face repository, its model folder and bank) and
//! the environment variables that name local ones. A leaf: the folder lookup reads these names
//! and the errors quote them.

/// The Hugging Face repository of the published VoxTell weights.
pub const PUBLISHED_REPO: &str = "mrokuss/VoxTell";
/// The model folder inside [`PUBLISHED_REPO`].
pub const PUBLISHED_FOLDER: &str = "voxtell_v1.1";
/// The official embedding bank inside [`PUBLISHED_REPO`].
pub const PUBLISHED_BANK: &str = "embeddings/voxtell_v1.1/text_embeddings.npz";
/// The environment variable naming a model folder.
pub const VOXTELL_MODEL: &str = "VOXTELL_MODEL";
/// The environment variable naming an embedding bank.
pub const VOXTELL_EMBEDDINGS: &str = "VOXTELL_EMBEDDINGS";
