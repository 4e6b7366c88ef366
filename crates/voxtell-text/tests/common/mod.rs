//! Helpers of the text crate's fixture tests (`text_fixtures.rs` for Qwen3, `bert_fixtures.rs`
//! for BERT): where the fixtures are, their `expected.json`, and vectors compared with their
//! references.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `fixtures/text`.
pub fn fixtures() -> PathBuf {
    voxtell_testutil::fixtures().join("text")
}

/// An `expected.json`: one item per prompt, of the generator's type `I`.
#[derive(Deserialize)]
pub struct Expected<I> {
    /// The prompts with what the reference computed for them.
    pub items: Vec<I>,
}

/// What both generators write for every prompt, with the rest of the generator's item in
/// `extra`.
#[derive(Deserialize)]
pub struct Item<E> {
    /// The prompt as given.
    pub prompt: String,
    /// The prompt as the reference lowercased it.
    pub lowercased: String,
    /// The reference tokenizer's ids.
    pub token_ids: Vec<u32>,
    /// The generator's other fields.
    #[serde(flatten)]
    pub extra: E,
}

/// An item with no other fields.
#[derive(Deserialize)]
pub struct NoExtra {}

impl<E> Expected<Item<E>> {
    /// The prompts, in order.
    pub fn prompts(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.prompt.as_str()).collect()
    }
}

/// Read an `expected.json`.
pub fn expected<I: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Expected<I> {
    voxtell_testutil::read_json(path)
}

/// As many vectors as references, each within `rel`·max|reference| of its reference.
pub fn check_close(ours: &[Vec<f32>], reference: &[Vec<f32>], rel: f32, what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert_eq!(a.len(), b.len(), "{what} #{i}");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= rel * scale, "{what} #{i}: max |diff| {diff:e} vs max |ref| {scale:e}");
    }
}

/// The L2 norm of a vector.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Every vector at a cosine of at least 0.99999 to its reference.
pub fn check_cosine(ours: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let cos = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b));
        assert!(cos >= 0.99999, "{what} #{i}: cosine {cos}");
    }
}
