//! `voxtell.json`: what a model folder written by `voxtell convert` or by training says about
//! itself beyond `plans.json` — the memory stage, the attention heads, the text encoder its
//! prompt vectors must come from, and optionally the voxel spacings of its training data. The
//! published folder has none; its defaults are those of VoxTell v1.1 (Qwen3-Embedding-4B).

use serde::{Deserialize, Serialize};

/// The text encoder a model was trained with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextEncoderSpec {
    /// Model id (e.g. `Qwen/Qwen3-Embedding-4B`).
    pub id: String,
    /// Embedding width.
    pub dim: usize,
    /// Pooling: `last_token` or `mean`.
    pub pooling: String,
    /// Whether vectors are L2-normalised.
    pub normalize: bool,
    /// Instruction the prompt is wrapped with, if any.
    pub instruction: Option<String>,
}

impl Default for TextEncoderSpec {
    fn default() -> Self {
        TextEncoderSpec {
            id: "Qwen/Qwen3-Embedding-4B".into(),
            dim: 2560,
            pooling: "last_token".into(),
            normalize: false,
            instruction: Some(
                "Given an anatomical term query, retrieve the precise anatomical entity and location it represents"
                    .into(),
            ),
        }
    }
}

impl TextEncoderSpec {
    /// The encoder to record for a model whose weights take `dim`-wide vectors when nothing
    /// says which one it was trained with: VoxTell's default when it has that width, else an
    /// `unknown` encoder of that width (last-token pooling, no normalisation, no instruction).
    pub fn default_for_width(dim: usize) -> Self {
        let default = TextEncoderSpec::default();
        if default.dim == dim {
            default
        } else {
            TextEncoderSpec {
                id: "unknown".into(),
                dim,
                pooling: "last_token".into(),
                normalize: false,
                instruction: None,
            }
        }
    }
}

/// The voxel spacings a model's training data covered, in world terms: `inplane_mm` along the
/// patient's left–right and anterior–posterior axes (RAS x and y), `slice_mm` along the
/// superior–inferior axis (z) — the spacings of a scan's (R, A) and S axes after reorientation
/// to RAS, whatever its storage order. Each is an inclusive `[low, high]` range in mm. A scan
/// outside them is not refused (the network does not resample), only likely to be segmented
/// worse.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpacingRange {
    /// In-plane (x and y) spacing range, mm.
    pub inplane_mm: [f64; 2],
    /// Slice (z) spacing range, mm.
    pub slice_mm: [f64; 2],
}

impl SpacingRange {
    /// Relative slack of [`SpacingRange::outside`]: headers store spacings as f32 and converters
    /// round, so a scan written at exactly a range's end may read back a hair beyond it.
    pub const TOLERANCE: f64 = 1e-3;

    /// Check that both ranges are ordered, finite and positive; the error says which is not.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, r) in [("inplane_mm", self.inplane_mm), ("slice_mm", self.slice_mm)] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] > 0.0 && r[0] <= r[1]) {
                return Err(format!("training_spacing.{name} {r:?} is not an ordered range of positive mm"));
            }
        }
        Ok(())
    }

    /// The axes of a scan whose spacing lies outside the range, given its spacing along the
    /// (S, A, R) array axes (`voxtell_io::RasGeometry::spacing`): empty when the scan is within
    /// it (up to [`SpacingRange::TOLERANCE`]).
    pub fn outside(&self, spacing_sar: [f64; 3]) -> Vec<SpacingAxis> {
        let within =
            |v: f64, r: [f64; 2]| v >= r[0] * (1.0 - Self::TOLERANCE) && v <= r[1] * (1.0 + Self::TOLERANCE);
        let mut out = Vec::new();
        if !within(spacing_sar[0], self.slice_mm) {
            out.push(SpacingAxis::Slice);
        }
        if !(within(spacing_sar[1], self.inplane_mm) && within(spacing_sar[2], self.inplane_mm)) {
            out.push(SpacingAxis::InPlane);
        }
        out
    }

    /// The range in words: `in-plane 4–5 mm, slices 5–6 mm`.
    pub fn describe(&self) -> String {
        let r = |v: [f64; 2]| if v[0] == v[1] { format!("{}", v[0]) } else { format!("{}–{}", v[0], v[1]) };
        format!("in-plane {} mm, slices {} mm", r(self.inplane_mm), r(self.slice_mm))
    }

    /// What to tell a user about a scan of voxel spacing `spacing_sar` (along S, A, R) outside
    /// the range: its spacing and the range; `None` when it is within.
    pub fn warning(&self, spacing_sar: [f64; 3]) -> Option<String> {
        if self.outside(spacing_sar).is_empty() {
            return None;
        }
        let [s, a, r] = spacing_sar;
        Some(format!(
            "voxel spacing {r:.2} × {a:.2} mm in-plane, {s:.2} mm between slices, is outside the range \
             the model was trained on ({})",
            self.describe()
        ))
    }
}

/// Which part of a [`SpacingRange`] a scan's spacing misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpacingAxis {
    /// The in-plane (x or y) spacing.
    InPlane,
    /// The slice (z) spacing.
    Slice,
}

/// The contents of `voxtell.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Encoder stage whose output is the prompt decoder's memory.
    pub decoder_layer: usize,
    /// Attention heads of the prompt decoder.
    pub attention_heads: usize,
    /// The text encoder the model expects.
    pub text_encoder: TextEncoderSpec,
    /// The voxel spacings of the training data, when recorded (`voxtell predict` warns about a
    /// scan outside them); absent from older files and from converted published folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_spacing: Option<SpacingRange>,
}

impl Default for ModelMeta {
    fn default() -> Self {
        ModelMeta {
            decoder_layer: 4,
            attention_heads: 8,
            text_encoder: TextEncoderSpec::default(),
            training_spacing: None,
        }
    }
}
