//! The predictor: a loaded VoxTell model plus a source of prompt vectors, running the whole
//! official pipeline on a volume (voxtell-spec §7): RAS reorientation, crop to the non-zero box,
//! z-score, centred padding, sliding window with Gaussian blending, threshold `logit > 0`,
//! un-crop; the [`Masks`] it returns write themselves back in the scan's own geometry.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ndarray::{Array3, s};
use voxtell_fusion::VoxTellModel;
use voxtell_io::{RasGeometry, RasVolume, Volume, WriteOptions};
use voxtell_text::PromptVectors;
use voxtell_vision::ops::{ConvPrecision, with_conv_precision};

use crate::error::{InferError, Result};
use crate::preprocess::{self, Bbox};
use crate::sliding::{self, Accumulate, Logits, Window};

/// Settings of a prediction.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Tile step as a fraction of the patch (0.5 officially: tiles overlap by half).
    pub step_size: f64,
    /// Accumulator precision ([`Accumulate::F16`] reproduces the official numerics).
    pub accumulate: Accumulate,
    /// Memory the prediction's working set may use (accumulators, network activations,
    /// outputs; not the model weights), in bytes. `None`: 80 % of the memory available when the
    /// prediction starts. This is host memory; on a GPU the activations live in device memory,
    /// which this budget does not see.
    pub max_memory: Option<u64>,
    /// Keep the blended logits in the result ([`Masks::logits`], [`Masks::probabilities`]).
    pub keep_logits: bool,
    /// Arithmetic of the network's stride-1 convolutions on the CPU: f32 (the default, the
    /// official numerics) or bf16 products with f32 sums where the CPU has AVX-512 BF16
    /// (faster; masks agree with f32 on most but not all voxels — docs/performance.md). Other
    /// devices ignore it.
    pub precision: ConvPrecision,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            step_size: 0.5,
            accumulate: Accumulate::F16,
            max_memory: None,
            keep_logits: false,
            precision: ConvPrecision::F32,
        }
    }
}

/// How a prediction will run: how many prompts share one pass over the tiles, and the memory
/// that needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Tiles per pass.
    pub tiles: usize,
    /// Prompts accumulated together in one pass over the tiles.
    pub prompt_group: usize,
    /// Prompts run through the network's decoder at once (always 1 on the CPU).
    pub decoder_group: usize,
    /// Passes over the tiles (1 unless memory is short).
    pub passes: usize,
    /// Estimated peak bytes of the working set.
    pub estimated_bytes: u64,
    /// The budget it was planned for.
    pub budget_bytes: u64,
}

/// A VoxTell model ready to segment volumes from text prompts.
///
/// ```no_run
/// use voxtell_infer::{PredictOptions, Predictor};
/// use voxtell_text::{EmbeddingBank, PromptVectors};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let device = candle_core::Device::Cpu;
/// let bank = EmbeddingBank::read("text_embeddings.npz")?;
/// let vectors = PromptVectors::new(bank, None, candle_core::DType::F32, &device);
/// let mut predictor = Predictor::from_dir("voxtell_v1.1", vectors, PredictOptions::default(), &device)?;
/// let volume = voxtell_io::read("ct.nii.gz")?;
/// let masks = predictor.predict(&volume, &["liver", "left kidney"])?;
/// masks.write_mask(0, "ct_liver.nii.gz", voxtell_io::WriteOptions::default())?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Predictor {
    model: VoxTellModel,
    vectors: PromptVectors,
    options: PredictOptions,
    device: Device,
}

impl Predictor {
    /// Load the model folder (`plans.json` + `fold_0/checkpoint_final.pth`, or a converted
    /// folder) on `device`, with `vectors` as the prompts' source.
    pub fn from_dir(
        model_dir: impl AsRef<Path>,
        vectors: PromptVectors,
        options: PredictOptions,
        device: &Device,
    ) -> Result<Self> {
        let model = VoxTellModel::from_dir(model_dir, DType::F32, device)?;
        Self::new(model, vectors, options)
    }

    /// A predictor around an already loaded model.
    pub fn new(model: VoxTellModel, vectors: PromptVectors, options: PredictOptions) -> Result<Self> {
        let bank_dim = vectors.bank().dim();
        let text_dim = model.config().text_dim;
        if !vectors.bank().is_empty() && bank_dim != text_dim {
            return Err(InferError::Invalid(format!(
                "the embedding bank holds {bank_dim}-wide vectors but the model takes {text_dim}-wide ones (a bank of another text encoder?)"
            )));
        }
        let device = model.device().clone();
        Ok(Predictor { model, vectors, options, device })
    }

    /// The model.
    pub fn model(&self) -> &VoxTellModel {
        &self.model
    }

    /// The options.
    pub fn options(&self) -> &PredictOptions {
        &self.options
    }

    /// Change the options.
    pub fn set_options(&mut self, options: PredictOptions) {
        self.options = options;
    }

    /// The prompt-vector source (its bank includes vectors embedded so far).
    pub fn vectors_source(&self) -> &PromptVectors {
        &self.vectors
    }

    /// Vectors for `prompts` (bank lookups by lowercased prompt; the text encoder, when there
    /// is one, for the rest). Call it for all prompts of a batch before any image work: a
    /// prompt that can be neither looked up nor embedded is an error naming it.
    pub fn vectors(&mut self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let v = self.vectors.vectors(prompts)?;
        let dim = self.model.config().text_dim;
        if let Some((p, bad)) = prompts.iter().zip(&v).find(|(_, v)| v.len() != dim) {
            return Err(InferError::Invalid(format!(
                "the vector of prompt {p:?} is {}-wide but the model takes {dim}-wide ones",
                bad.len()
            )));
        }
        Ok(v)
    }

    /// Segment `volume` for each prompt.
    pub fn predict(&mut self, volume: &Volume, prompts: &[&str]) -> Result<Masks> {
        self.predict_with_progress(volume, prompts, |_, _| true)
    }

    /// As [`Predictor::predict`], calling `progress(done, total)` after each tile; returning
    /// `false` cancels with [`InferError::Cancelled`].
    pub fn predict_with_progress(
        &mut self,
        volume: &Volume,
        prompts: &[&str],
        progress: impl FnMut(usize, usize) -> bool,
    ) -> Result<Masks> {
        let vectors = self.vectors(prompts)?;
        let ras = volume.to_ras()?;
        let names: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
        self.predict_ras(&ras, &names, &vectors, progress)
    }

    /// The plan for a volume of (S, A, R) shape `ras_shape` and `n_prompts` prompts under the
    /// memory budget of the options.
    pub fn plan(&self, ras_shape: [usize; 3], n_prompts: usize) -> Result<Plan> {
        let config = self.model.config();
        let patch = config.patch_size;
        let padded: [usize; 3] = std::array::from_fn(|a| ras_shape[a].max(patch[a]));
        let step = self.options.step_size;
        if !(step > 0.0 && step <= 1.0) || patch.iter().any(|&p| (p as f64 * step) < 1.0) {
            return Err(InferError::Invalid(format!("step size {step} does not fit the {patch:?} patch")));
        }
        let tiles = (0..3).map(|a| crate::window::steps(padded[a], patch[a], step).len()).product();
        let vox_padded = padded.iter().product::<usize>() as u64;
        let vox = ras_shape.iter().product::<usize>() as u64;
        let n = n_prompts.max(1) as u64;
        let acc_b = self.options.accumulate.bytes() as u64;
        // Input (original, cropped, padded) and the kept results (u8 masks, optional logits).
        let kept = if self.options.keep_logits { 1 + acc_b } else { 1 };
        let fixed = vox * 4 * 2 + vox_padded * 4 + n * vox * kept;
        // Encoder activations of one tile: each stage's output, kept as a skip, plus two
        // temporaries of the largest stage.
        let f = &config.arch.features_per_stage;
        let stage_bytes: Vec<u64> = config
            .stage_sizes()
            .iter()
            .zip(f)
            .map(|(sz, &c)| sz.iter().product::<usize>() as u64 * c as u64 * 4)
            .collect();
        let encoder = stage_bytes.iter().sum::<u64>() + 2 * stage_bytes.iter().copied().max().unwrap_or(0);
        let per_prompt_decoder = self.model.decoder_bytes_per_prompt(4).max(1);
        let patch_vox = patch.iter().product::<usize>() as u64;
        let budget = match self.options.max_memory {
            Some(b) => b,
            None => voxtell_text::source::available_memory().map(|a| a / 5 * 4).unwrap_or(u64::MAX),
        };
        for g in (1..=n).rev() {
            let accumulators = (g + 1) * vox_padded * acc_b + g * patch_vox * 4;
            let base = fixed + encoder + accumulators;
            if base + per_prompt_decoder > budget {
                continue;
            }
            // On the CPU the decoder runs one prompt at a time: batching prompts through it was
            // slower there (4 prompts at 192³: 65 s and 18.6 GB batched, 43 s and 7.8 GB one
            // at a time; docs/performance.md) — its kernels already keep both cores busy, and
            // a batch only multiplies the full-resolution activations. On a GPU the budget
            // decides (not measured there yet).
            let most = if self.device.is_cpu() { 1 } else { g };
            let decoder_group = ((budget - base) / per_prompt_decoder).clamp(1, most);
            let passes = n.div_ceil(g);
            return Ok(Plan {
                tiles,
                prompt_group: g as usize,
                decoder_group: decoder_group as usize,
                passes: passes as usize,
                estimated_bytes: base + decoder_group * per_prompt_decoder,
                budget_bytes: budget,
            });
        }
        let need = fixed + encoder + 2 * vox_padded * acc_b + patch_vox * 4 + per_prompt_decoder;
        Err(InferError::Memory(format!(
            "a volume of {ras_shape:?} voxels needs about {} even one prompt at a time, over the budget of {} (raise --max-memory or use a machine with more memory)",
            human_bytes(need),
            human_bytes(budget)
        )))
    }

    /// Segment a volume already in the network's (S, A, R) layout with the given prompt
    /// vectors (`prompts` are the names kept in the result).
    pub fn predict_ras(
        &self,
        ras: &RasVolume,
        prompts: &[String],
        vectors: &[Vec<f32>],
        mut progress: impl FnMut(usize, usize) -> bool,
    ) -> Result<Masks> {
        if prompts.is_empty() || prompts.len() != vectors.len() {
            return Err(InferError::Invalid(format!(
                "{} prompt(s) with {} vector(s); at least one prompt is needed",
                prompts.len(),
                vectors.len()
            )));
        }
        let config = self.model.config();
        let (patch, text_dim) = (config.patch_size, config.text_dim);
        if let Some(v) = vectors.iter().find(|v| v.len() != text_dim) {
            return Err(InferError::Invalid(format!(
                "a prompt vector is {}-wide but the model takes {text_dim}-wide ones",
                v.len()
            )));
        }
        let shape = ras.data.shape();
        let plan = self.plan([shape[0], shape[1], shape[2]], prompts.len())?;
        let mut texts = Vec::new();
        for vecs in vectors.chunks(plan.prompt_group) {
            let flat: Vec<f32> = vecs.iter().flatten().copied().collect();
            texts.push(Tensor::from_vec(flat, (1, vecs.len(), text_dim), &self.device)?);
        }
        let net = |tile: &sliding::Tile<'_>, pass: usize| -> Result<Vec<f32>> {
            let image = Tensor::from_slice(tile.data, (1, 1, patch[0], patch[1], patch[2]), &self.device)?;
            let text =
                texts.get(pass).ok_or_else(|| InferError::Invalid(format!("no prompt group {pass}")))?;
            let out = with_conv_precision(self.options.precision, || {
                self.model.forward_grouped(&image, text, plan.decoder_group)
            })?;
            let logits = out
                .outputs
                .into_iter()
                .next()
                .ok_or_else(|| InferError::Invalid("the network returned no output".into()))?;
            Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        segment(ras, prompts, patch, &self.options, plan, net, &mut progress)
    }
}

/// The pipeline around any network: crop to the non-zero box, z-score, centred padding to
/// `patch`, the sliding window (`plan.prompt_group` prompts per pass over the tiles), threshold
/// and un-crop. `net(tile, pass)` returns the logits of the prompts of pass `pass` for one tile
/// (prompt-major, C order). [`Predictor`] runs it with the VoxTell network; tests run it with a
/// stub.
pub fn segment(
    ras: &RasVolume,
    prompts: &[String],
    patch: [usize; 3],
    options: &PredictOptions,
    plan: Plan,
    mut net: impl FnMut(&sliding::Tile<'_>, usize) -> Result<Vec<f32>>,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<Masks> {
    let shape = ras.data.shape();
    let ras_shape = [shape[0], shape[1], shape[2]];
    if ras_shape.contains(&0) {
        return Err(InferError::Invalid(format!("the volume has an empty axis: {ras_shape:?}")));
    }
    if prompts.is_empty() || plan.prompt_group == 0 {
        return Err(InferError::Invalid("at least one prompt is needed".to_string()));
    }
    let bbox = preprocess::nonzero_bbox(ras.data.view());
    let cropped = preprocess::crop_and_normalize(ras.data.view(), &bbox);
    let crop_shape = [cropped.shape()[0], cropped.shape()[1], cropped.shape()[2]];
    let (padded, offset) = preprocess::pad_to_patch(cropped, patch);
    let padded_shape = [padded.shape()[0], padded.shape()[1], padded.shape()[2]];
    let window = Window::new(padded_shape, patch, options.step_size)?;
    let tiles = window.tiles().len();
    let passes = prompts.len().div_ceil(plan.prompt_group);
    let total = tiles * passes;
    let mut masks = Vec::with_capacity(prompts.len());
    let mut kept = options.keep_logits.then(Vec::new);
    for (pass, names) in prompts.chunks(plan.prompt_group).enumerate() {
        let blended = sliding::blend(
            padded.view(),
            &window,
            names.len(),
            options.accumulate,
            |tile| net(tile, pass),
            |d, _| progress(pass * tiles + d, total),
        )?;
        for (name, l) in names.iter().zip(blended) {
            // Checked over the padded volume, as the official predictor does.
            if sliding::has_inf(&l) {
                return Err(InferError::Overflow { prompt: name.clone() });
            }
            let l = sliding::unpad(l, offset, crop_shape);
            masks.push(l.mask());
            if let Some(k) = kept.as_mut() {
                k.push(l);
            }
        }
    }
    Ok(Masks {
        prompts: prompts.to_vec(),
        geometry: ras.geometry.clone(),
        bbox,
        ras_shape,
        cropped: masks,
        logits: kept,
        plan: Plan { tiles, passes, ..plan },
    })
}

/// `1.5 GiB`, `120.0 MiB`, `512 KiB`, `100 B`.
pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    if b >= 1 << 30 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", f / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.0} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// The result of a prediction: one binary mask per prompt (in the network's (S, A, R) layout,
/// restorable to the scan's own grid), and the blended logits when they were kept.
#[derive(Debug, Clone)]
pub struct Masks {
    prompts: Vec<String>,
    geometry: RasGeometry,
    bbox: Bbox,
    ras_shape: [usize; 3],
    cropped: Vec<Array3<u8>>,
    logits: Option<Vec<Logits>>,
    plan: Plan,
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
