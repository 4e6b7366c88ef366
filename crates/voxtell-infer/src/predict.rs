//! The predictor: a loaded VoxTell model plus a source of prompt vectors, running the whole
//! official pipeline on a volume (voxtell-spec §7): RAS reorientation, crop to the non-zero box,
//! z-score, centred padding, sliding window with Gaussian blending, threshold `logit > 0`,
//! un-crop; the [`Masks`] it returns write themselves back in the scan's own geometry.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use voxtell_fusion::{ModelDir, ModelMeta, SpacingRange, VoxTellModel};
use voxtell_io::{RasVolume, Volume};
use voxtell_text::{EncoderSpec, PromptVectors};
use voxtell_vision::ops::with_conv_precision;

use crate::error::{InferError, Result};
use crate::masks::Masks;
use crate::plan::Plan;
use crate::preprocess::{self, Prepared};
use crate::sliding::{self, Window};

pub use crate::options::PredictOptions;

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
///
/// Many cases, each with its own prompts, run through [`Predictor::run_batch`]
/// ([`crate::batch`]).
#[derive(Debug)]
pub struct Predictor {
    model: VoxTellModel,
    vectors: PromptVectors,
    /// Vectors of the prompts prepared for batches ([`Predictor::prepare`]), by prompt text: a
    /// prompt has the same vector in every case of a run.
    prepared: HashMap<String, Vec<f32>>,
    notices: Vec<String>,
    options: PredictOptions,
    device: Device,
    /// The voxel spacings of the model's training data, when its `voxtell.json` records them.
    training_spacing: Option<SpacingRange>,
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
        Self::open(&ModelDir::open(model_dir)?, vectors, options, device, &[])
    }

    /// A predictor for an opened model folder, in the order that keeps memory low and fails
    /// early: the text encoder is checked against the folder's `voxtell.json` (a text model the
    /// user named that does not fit is an error; one only found in the Hugging Face cache is
    /// passed over, with a [`Predictor::notices`] line), `prompts` (e.g. the union of a
    /// batch's prompts, [`crate::Batch::prompts`]) are embedded — so an unknown prompt fails
    /// before anything is loaded, and a text model needed for it is dropped again — and only
    /// then is the network loaded.
    pub fn open(
        model_dir: &ModelDir,
        mut vectors: PromptVectors,
        options: PredictOptions,
        device: &Device,
        prompts: &[&str],
    ) -> Result<Self> {
        let mut notices = Vec::new();
        if let Some(meta) = model_dir.meta() {
            check_text_encoder(meta, &mut vectors, &mut notices)?;
        }
        let text_dim = model_dir.config().text_dim;
        check_bank_width(&vectors, text_dim)?;
        let mut prepared = HashMap::new();
        embed_missing(&mut vectors, &mut prepared, prompts, text_dim)?;
        let model = model_dir.load(DType::F32, device)?;
        let device = model.device().clone();
        let training_spacing = model_dir.meta().and_then(|m| m.training_spacing);
        Ok(Predictor { model, vectors, prepared, notices, options, device, training_spacing })
    }

    /// The range of voxel spacings the model's `voxtell.json` records for its training data
    /// (`None` when it records none): a scan outside it is still segmented, but a front end
    /// should say so ([`SpacingRange::warning`]).
    pub fn training_spacing(&self) -> Option<SpacingRange> {
        self.training_spacing
    }

    /// A predictor around an already loaded model (no `voxtell.json` to check the text
    /// encoder against: only the vectors' width is checked).
    pub fn new(model: VoxTellModel, vectors: PromptVectors, options: PredictOptions) -> Result<Self> {
        check_bank_width(&vectors, model.config().text_dim)?;
        let device = model.device().clone();
        Ok(Predictor {
            model,
            vectors,
            prepared: HashMap::new(),
            notices: Vec::new(),
            options,
            device,
            training_spacing: None,
        })
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

    /// What the predictor decided on its own while opening (e.g. a cached text model passed
    /// over, and why), for a front end to show when asked to be verbose.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// Vectors for `prompts` (bank lookups by lowercased prompt; the text encoder, when there
    /// is one, for the rest). Call it for all prompts of a batch before any image work: a
    /// prompt that can be neither looked up nor embedded is an error naming it.
    pub fn vectors(&mut self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let v = self.vectors.vectors(prompts)?;
        let dim = self.model.config().text_dim;
        for (p, v) in prompts.iter().zip(&v) {
            check_width(p, v, dim)?;
        }
        Ok(v)
    }

    /// Embed the prompts not prepared yet, all in one call to the prompt source (the bank
    /// first, the text model only for what it lacks), and keep their vectors for
    /// [`Predictor::prepared`] and [`Predictor::run_batch`]. A prompt that can be neither looked
    /// up nor embedded is an error naming it.
    pub fn prepare(&mut self, prompts: &[&str]) -> Result<()> {
        embed_missing(&mut self.vectors, &mut self.prepared, prompts, self.model.config().text_dim)
    }

    /// The vector of a prepared prompt.
    pub fn prepared(&self, prompt: &str) -> Option<&[f32]> {
        self.prepared.get(prompt).map(Vec::as_slice)
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
        self.plan_with(&self.options, ras_shape, n_prompts, 0)
    }

    /// The plan under `options` while the batch's other stages hold `held` bytes (taken off
    /// the budget).
    pub(crate) fn plan_with(
        &self,
        options: &PredictOptions,
        ras_shape: [usize; 3],
        n_prompts: usize,
        held: u64,
    ) -> Result<Plan> {
        let per_prompt_decoder = self.model.decoder_bytes_per_prompt(4);
        crate::plan::plan(
            self.model.config(),
            per_prompt_decoder,
            options,
            self.device.is_cpu(),
            ras_shape,
            n_prompts,
            held,
        )
    }

    /// Segment a volume already in the network's (S, A, R) layout with the given prompt
    /// vectors (`prompts` are the names kept in the result).
    pub fn predict_ras(
        &self,
        ras: &RasVolume,
        prompts: &[String],
        vectors: &[Vec<f32>],
        progress: impl FnMut(usize, usize) -> bool,
    ) -> Result<Masks> {
        check_volume(ras)?;
        let shape = ras.data.shape();
        let plan = self.plan_with(&self.options, [shape[0], shape[1], shape[2]], prompts.len(), 0)?;
        let prepared = preprocess::prepare(ras.data.view(), self.model.config().patch_size);
        self.predict_prepared(&self.options, ras, &prepared, plan, prompts, vectors, progress)
    }

    /// The network over an image prepared from `ras` ([`preprocess::prepare`]) under `plan`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn predict_prepared(
        &self,
        options: &PredictOptions,
        ras: &RasVolume,
        prepared: &Prepared,
        plan: Plan,
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
        for (p, v) in prompts.iter().zip(vectors) {
            check_width(p, v, text_dim)?;
        }
        let mut texts = Vec::new();
        for vecs in vectors.chunks(plan.prompt_group.max(1)) {
            let flat: Vec<f32> = vecs.iter().flatten().copied().collect();
            texts.push(Tensor::from_vec(flat, (1, vecs.len(), text_dim), &self.device)?);
        }
        let net = |tile: &sliding::Tile<'_>, pass: usize| -> Result<Vec<f32>> {
            let image = Tensor::from_slice(tile.data, (1, 1, patch[0], patch[1], patch[2]), &self.device)?;
            let text =
                texts.get(pass).ok_or_else(|| InferError::Invalid(format!("no prompt group {pass}")))?;
            let out = with_conv_precision(options.precision, || {
                self.model.forward_grouped(&image, text, plan.decoder_group)
            })?;
            let logits = out
                .outputs
                .into_iter()
                .next()
                .ok_or_else(|| InferError::Invalid("the network returned no output".into()))?;
            Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        if prepared.patch != patch {
            return Err(InferError::Invalid(format!(
                "the image was prepared for a {:?} patch, the network takes {patch:?}",
                prepared.patch
            )));
        }
        segment_prepared(ras, prepared, prompts, options, plan, net, &mut progress)
    }
}

/// The one check of a prompt vector's width against the model's.
fn check_width(prompt: &str, vector: &[f32], dim: usize) -> Result<()> {
    if vector.len() == dim {
        return Ok(());
    }
    Err(InferError::Invalid(format!(
        "the vector of prompt {prompt:?} is {}-wide but the model takes {dim}-wide ones (a bank or text model of another encoder?)",
        vector.len()
    )))
}

/// A non-empty bank must hold vectors of the model's width.
fn check_bank_width(vectors: &PromptVectors, dim: usize) -> Result<()> {
    let bank = vectors.bank();
    if bank.is_empty() || bank.dim() == dim {
        return Ok(());
    }
    Err(InferError::Invalid(format!(
        "the embedding bank holds {}-wide vectors but the model takes {dim}-wide ones (a bank of another text encoder?)",
        bank.dim()
    )))
}

/// A model folder that names its text encoder (`voxtell.json`) refuses a text model of another
/// kind: an error for a folder the user named, passed over (with a notice) when it was only
/// found in the Hugging Face cache.
fn check_text_encoder(
    meta: &ModelMeta,
    vectors: &mut PromptVectors,
    notices: &mut Vec<String>,
) -> Result<()> {
    let Some(dir) = vectors.model_dir().map(Path::to_path_buf) else { return Ok(()) };
    if !dir.join("config.json").is_file() {
        return Ok(());
    }
    let t = &meta.text_encoder;
    let check = EncoderSpec::of_folder(&dir)
        .and_then(|spec| spec.matches(&t.id, t.dim, &t.pooling, t.normalize, t.instruction.as_deref()));
    match check {
        Ok(()) => Ok(()),
        Err(e) if vectors.model_origin().is_explicit() => Err(e.into()),
        Err(e) => {
            notices.push(format!("not using the cached text model {}: {e}", dir.display()));
            vectors.forget_model();
            Ok(())
        }
    }
}

/// Embed the prompts `prepared` lacks in one call (first-seen order), checking each width.
fn embed_missing(
    vectors: &mut PromptVectors,
    prepared: &mut HashMap<String, Vec<f32>>,
    prompts: &[&str],
    dim: usize,
) -> Result<()> {
    let mut seen = HashSet::new();
    let missing: Vec<&str> =
        prompts.iter().copied().filter(|p| !prepared.contains_key(*p) && seen.insert(*p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let embedded = vectors.vectors(&missing)?;
    for (p, v) in missing.iter().zip(&embedded) {
        check_width(p, v, dim)?;
    }
    prepared.extend(missing.iter().map(|p| p.to_string()).zip(embedded));
    Ok(())
}

/// The pipeline around any network: crop to the non-zero box, z-score, centred padding to
/// `patch` ([`preprocess::prepare`]), then [`segment_prepared`]. `net(tile, pass)` returns the
/// logits of the prompts of pass `pass` for one tile (prompt-major, C order). [`Predictor`]
/// runs it with the VoxTell network; tests run it with a stub.
pub fn segment(
    ras: &RasVolume,
    prompts: &[String],
    patch: [usize; 3],
    options: &PredictOptions,
    plan: Plan,
    net: impl FnMut(&sliding::Tile<'_>, usize) -> Result<Vec<f32>>,
    progress: impl FnMut(usize, usize) -> bool,
) -> Result<Masks> {
    check_volume(ras)?;
    let prepared = preprocess::prepare(ras.data.view(), patch);
    segment_prepared(ras, &prepared, prompts, options, plan, net, progress)
}

/// A volume with an empty axis has nothing to segment.
pub(crate) fn check_volume(ras: &RasVolume) -> Result<()> {
    let shape = ras.data.shape();
    if shape.contains(&0) {
        return Err(InferError::Invalid(format!("the volume has an empty axis: {shape:?}")));
    }
    Ok(())
}

/// The sliding window over an image already prepared from `ras` ([`preprocess::prepare`],
/// with the network's patch), `plan.prompt_group` prompts per pass over the tiles, then
/// threshold and un-crop. The time spent inside `net` is the result's
/// [`Masks::network_seconds`].
pub fn segment_prepared(
    ras: &RasVolume,
    prepared: &Prepared,
    prompts: &[String],
    options: &PredictOptions,
    plan: Plan,
    mut net: impl FnMut(&sliding::Tile<'_>, usize) -> Result<Vec<f32>>,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<Masks> {
    check_volume(ras)?;
    let shape = ras.data.shape();
    let ras_shape = [shape[0], shape[1], shape[2]];
    if prepared.ras_shape != ras_shape {
        return Err(InferError::Invalid(format!(
            "the prepared image was made from a {:?} volume, not this {ras_shape:?} one",
            prepared.ras_shape
        )));
    }
    if prompts.is_empty() || plan.prompt_group == 0 {
        return Err(InferError::Invalid("at least one prompt is needed".to_string()));
    }
    let padded = &prepared.padded;
    let padded_shape = [padded.shape()[0], padded.shape()[1], padded.shape()[2]];
    let window = Window::new(padded_shape, prepared.patch, options.step_size)?;
    let tiles = window.tiles().len();
    let passes = prompts.len().div_ceil(plan.prompt_group);
    let total = tiles * passes;
    let mut masks = Vec::with_capacity(prompts.len());
    let mut kept = options.keep_logits.then(Vec::new);
    let mut network = Duration::ZERO;
    for (pass, names) in prompts.chunks(plan.prompt_group).enumerate() {
        let blended = sliding::blend(
            padded.view(),
            &window,
            names.len(),
            options.accumulate,
            |tile| {
                let t = Instant::now();
                let out = net(tile, pass);
                network += t.elapsed();
                out
            },
            |d, _| progress(pass * tiles + d, total),
        )?;
        for (name, l) in names.iter().zip(blended) {
            // Checked over the padded volume, as the official predictor does.
            if sliding::has_inf(&l) {
                return Err(InferError::Overflow { prompt: name.clone() });
            }
            let l = sliding::unpad(l, prepared.offset, prepared.crop_shape);
            masks.push(l.mask());
            if let Some(k) = kept.as_mut() {
                k.push(l);
            }
        }
    }
    Ok(Masks {
        prompts: prompts.to_vec(),
        geometry: ras.geometry.clone(),
        bbox: prepared.bbox,
        ras_shape,
        cropped: masks,
        logits: kept,
        plan: Plan { tiles, passes, ..plan },
        network_seconds: network.as_secs_f64(),
    })
}
