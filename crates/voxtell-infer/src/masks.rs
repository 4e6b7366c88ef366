//! [`Masks`]: the result of a prediction — one binary mask per prompt inside the crop box, the
//! blended logits when kept — and its writers, which put each mask back into the scan's own grid.

use std::path::Path;

use ndarray::{Array3, s};
use voxtell_io::{RasGeometry, WriteOptions};

use crate::error::{InferError, Result};
use crate::plan::Plan;
use crate::preprocess::{self, Bbox};
use crate::sliding::Logits;

/// The result of a prediction: one binary mask per prompt (in the network's (S, A, R) layout,
/// restorable to the scan's own grid), and the blended logits when they were kept.
#[derive(Debug, Clone)]
pub struct Masks {
    pub(crate) prompts: Vec<String>,
    pub(crate) geometry: RasGeometry,
    pub(crate) bbox: Bbox,
    pub(crate) ras_shape: [usize; 3],
    pub(crate) cropped: Vec<Array3<u8>>,
    pub(crate) logits: Option<Vec<Logits>>,
    pub(crate) plan: Plan,
    pub(crate) network_seconds: f64,
}

impl Masks {
    /// The prompts, in order.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether there are no prompts (never, for a finished prediction).
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// How to map (S, A, R) arrays back to the scan's grid.
    pub fn geometry(&self) -> &RasGeometry {
        &self.geometry
    }

    /// The crop box (non-zero voxels of the input) in (S, A, R) indices.
    pub fn bbox(&self) -> &Bbox {
        &self.bbox
    }

    /// Shape of the (S, A, R) arrays.
    pub fn ras_shape(&self) -> [usize; 3] {
        self.ras_shape
    }

    /// How the prediction ran.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Seconds spent inside the network's forward passes (the rest of a prediction is
    /// preprocessing, blending and thresholding).
    pub fn network_seconds(&self) -> f64 {
        self.network_seconds
    }

    /// Bytes its arrays hold (the masks inside the crop box, the logits when kept).
    pub fn bytes(&self) -> u64 {
        let masks: usize = self.cropped.iter().map(|m| m.len()).sum();
        let logits: usize = self.logits.iter().flatten().map(Logits::bytes).sum();
        (masks + logits) as u64
    }

    /// Prompt `i`'s mask (0/1) over the whole (S, A, R) volume; zero outside the crop box.
    pub fn mask(&self, i: usize) -> Result<Array3<u8>> {
        let m = self.cropped.get(i).ok_or_else(|| self.no_prompt(i))?;
        Ok(preprocess::uncrop(m.view(), &self.bbox, self.ras_shape))
    }

    /// Prompt `i`'s mask inside the crop box only.
    pub fn cropped_mask(&self, i: usize) -> Option<&Array3<u8>> {
        self.cropped.get(i)
    }

    /// One label map: label `i + 1` where prompt `i`'s mask is set, later prompts overwriting
    /// earlier ones (the official `--save-combined`).
    pub fn combined(&self) -> Array3<u16> {
        let mut inner = Array3::<u16>::zeros(self.cropped.first().map(|m| m.raw_dim()).unwrap_or_default());
        for (i, m) in self.cropped.iter().enumerate() {
            ndarray::Zip::from(&mut inner).and(m).for_each(|o, &v| {
                if v != 0 {
                    *o = (i + 1) as u16;
                }
            });
        }
        preprocess::uncrop(inner.view(), &self.bbox, self.ras_shape)
    }

    /// Prompt `i`'s blended logits inside the crop box, when kept
    /// ([`PredictOptions::keep_logits`]).
    pub fn logits(&self, i: usize) -> Option<&Logits> {
        self.logits.as_ref()?.get(i)
    }

    /// Prompt `i`'s probabilities (sigmoid of the logits) over the whole (S, A, R) volume, zero
    /// outside the crop box; `None` unless the logits were kept.
    pub fn probabilities(&self, i: usize) -> Option<Array3<f32>> {
        let l = self.logits(i)?.to_f32().mapv(|x| 1.0 / (1.0 + (-x).exp()));
        Some(preprocess::uncrop(l.view(), &self.bbox, self.ras_shape))
    }

    /// Write prompt `i`'s mask as a u8 NIfTI in the scan's own geometry.
    pub fn write_mask(&self, i: usize, path: impl AsRef<Path>, options: WriteOptions) -> Result<()> {
        let m = self.mask(i)?.mapv(u16::from);
        Ok(voxtell_io::write_seg(path, m.view(), &self.geometry, options)?)
    }

    /// Write the combined label map ([`Masks::combined`]) in the scan's own geometry.
    pub fn write_combined(&self, path: impl AsRef<Path>, options: WriteOptions) -> Result<()> {
        Ok(voxtell_io::write_seg(path, self.combined().view(), &self.geometry, options)?)
    }

    /// Write prompt `i`'s probabilities as an f32 NIfTI in the scan's own geometry.
    pub fn write_probabilities(&self, i: usize, path: impl AsRef<Path>, options: WriteOptions) -> Result<()> {
        let p = self.probabilities(i).ok_or_else(|| {
            InferError::Invalid("probabilities need the logits (PredictOptions::keep_logits)".to_string())
        })?;
        Ok(voxtell_io::write_ras_f32(path, p.view(), &self.geometry, options)?)
    }

    /// Replace prompt `i`'s mask (e.g. after keeping its largest component); `mask` covers the
    /// whole (S, A, R) volume. Masks are zero outside the crop box by construction, and voxels
    /// set there are dropped.
    pub fn set_mask(&mut self, i: usize, mask: &Array3<u8>) -> Result<()> {
        if mask.shape() != self.ras_shape {
            return Err(InferError::Invalid(format!(
                "mask of shape {:?} for a volume of {:?}",
                mask.shape(),
                self.ras_shape
            )));
        }
        let b = self.bbox;
        let inner = mask.slice(s![b[0][0]..b[0][1], b[1][0]..b[1][1], b[2][0]..b[2][1]]).to_owned();
        let slot = self.cropped.get_mut(i).ok_or_else(|| InferError::Invalid(format!("no prompt {i}")))?;
        *slot = inner;
        Ok(())
    }

    fn no_prompt(&self, i: usize) -> InferError {
        InferError::Invalid(format!("no prompt {i}: the prediction has {}", self.prompts.len()))
    }
}
