//! The training step, split so that gradients can be averaged across workers before the
//! update: [`Trainable::gradients`] is a pure function of (weights, batch) → (loss, gradients),
//! and [`Trainable::apply`] clips the gradients and takes the optimiser step (SGD or AdamW).
//!
//! A [`Trainable`] holds the parameters as a [`candle_nn::VarMap`] named by VoxTell's canonical
//! checkpoint keys, the buffer `pos_embed` (never optimised), the [`VoxTellModel`] built from
//! them, and the optimiser state. Parameters the forward pass never touches (the prompt
//! decoder's `self_attn.*` and `norm1.*`, the last `decoder.seg_layers`) are kept, so that an
//! exported model is complete, but they never get a gradient and are neither decayed nor moved.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap, var_builder::SimpleBackend};
use serde::{Deserialize, Serialize};
use voxtell_fusion::{
    Checkpoint, FreshWeights, ModelDir, ModelMeta, SpacingRange, TextEncoderSpec, VoxTellConfig, VoxTellModel,
};

use crate::error::{Result, TrainError};
use crate::loss::{LossConfig, deep_supervision_loss, deep_supervision_targets};
use crate::optim::{Gradients, Optimizer, OptimizerConfig, clip_grad_norm, global_grad_norm};

/// The positional-encoding buffer's key.
pub const POS_EMBED: &str = "pos_embed";

/// Default gradient-norm limit (nnU-Net's 12).
pub const DEFAULT_CLIP_NORM: f64 = 12.0;

/// Where the initial weights come from.
#[derive(Debug, Clone, Copy)]
pub enum WeightSource<'a> {
    /// Every weight from a checkpoint (resuming or fine-tuning the whole model).
    Checkpoint(&'a Checkpoint),
    /// The encoder (`encoder.*`) from a checkpoint, everything else fresh.
    EncoderOnly(&'a Checkpoint),
    /// Fresh weights, initialised as the official model (see [`FreshWeights`]), drawn with
    /// [`StepOptions::init_seed`].
    Fresh,
}

impl<'a> WeightSource<'a> {
    /// All of `ckpt`, or only its encoder when `encoder_only`.
    pub fn of(ckpt: &'a Checkpoint, encoder_only: bool) -> Self {
        if encoder_only { WeightSource::EncoderOnly(ckpt) } else { WeightSource::Checkpoint(ckpt) }
    }
}

/// Settings of the training step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepOptions {
    /// The loss.
    pub loss: LossConfig,
    /// The optimiser (nnU-Net's SGD by default).
    pub optimizer: OptimizerConfig,
    /// Limit on the total gradient L2 norm (`None`: no clipping).
    pub clip_norm: Option<f64>,
    /// Seed of fresh weights (from scratch, or everything but the encoder when only the encoder
    /// comes from a checkpoint).
    pub init_seed: u64,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            loss: LossConfig::default(),
            optimizer: OptimizerConfig::default(),
            clip_norm: Some(DEFAULT_CLIP_NORM),
            init_seed: 0,
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// Total gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub clip_scale: f64,
    /// Learning rate of the update.
    pub lr: f64,
}

/// Parameters, buffers and the network built from them, with the optimiser.
pub struct Trainable {
    plans: serde_json::Value,
    config: VoxTellConfig,
    params: VarMap,
    buffers: Arc<HashMap<String, Tensor>>,
    used: BTreeSet<String>,
    model: VoxTellModel,
    optimizer: Optimizer,
    options: StepOptions,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainable")
            .field("parameters", &self.used.len())
            .field("dtype", &self.dtype)
            .field("options", &self.options)
            .finish()
    }
}

/// `VarBuilder` backend over the parameters and buffers; a weight not there yet is taken from
/// `source` (when given) and becomes a parameter. Records every name the model asks for.
struct ParamBackend<'a> {
    params: VarMap,
    buffers: Arc<HashMap<String, Tensor>>,
    source: Option<&'a dyn SimpleBackend>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

fn lock_err<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("parameter store lock poisoned".into())
}

impl SimpleBackend for ParamBackend<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let check = |t: &Tensor| -> candle_core::Result<()> {
            if t.dims() != s.dims() {
                candle_core::bail!("weight {name} has shape {:?}, the model expects {:?}", t.dims(), s.dims())
            }
            if t.dtype() != dtype {
                candle_core::bail!("weight {name} is {:?}, the model is {dtype:?}", t.dtype())
            }
            Ok(())
        };
        if let Some(b) = self.buffers.get(name) {
            check(b)?;
            return Ok(b.clone());
        }
        let mut vars = self.params.data().lock().map_err(lock_err)?;
        let t = match vars.get(name) {
            Some(v) => v.as_tensor().clone(),
            None => {
                let Some(source) = self.source else { candle_core::bail!("missing weight {name}") };
                let t = source.get(s.clone(), name, hint, dtype, dev)?.to_dtype(dtype)?.to_device(dev)?;
                let var = Var::from_tensor(&t)?;
                let t = var.as_tensor().clone();
                vars.insert(name.to_string(), var);
                t
            }
        };
        check(&t)?;
        self.used.lock().map_err(lock_err)?.insert(name.to_string());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("weight {name}: the shape must be given")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.buffers.contains_key(name) || self.params.data().lock().is_ok_and(|v| v.contains_key(name))
    }
}

/// The encoder from a checkpoint, everything else fresh.
struct EncoderFrom<'a>(&'a Checkpoint, FreshWeights);

impl SimpleBackend for EncoderFrom<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.starts_with("encoder.") {
            self.0.get(s, name, hint, dtype, dev)
        } else {
            self.1.get(s, name, hint, dtype, dev)
        }
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("weight {name}: the shape must be given")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Names and shapes of the parameters the forward pass never uses: per prompt-decoder layer
/// `self_attn.*` and `norm1.*`, and the last stage's `decoder.seg_layers`.
fn unused_parameter_shapes(config: &VoxTellConfig) -> Vec<(String, Vec<usize>)> {
    let q = config.query_dim;
    let mut out = Vec::new();
    for l in 0..config.layers {
        let p = format!("transformer_decoder.layers.{l}");
        out.push((format!("{p}.self_attn.in_proj_weight"), vec![3 * q, q]));
        out.push((format!("{p}.self_attn.in_proj_bias"), vec![3 * q]));
        out.push((format!("{p}.self_attn.out_proj.weight"), vec![q, q]));
        out.push((format!("{p}.self_attn.out_proj.bias"), vec![q]));
        out.push((format!("{p}.norm1.weight"), vec![q]));
        out.push((format!("{p}.norm1.bias"), vec![q]));
    }
    let n = config.arch.n_stages;
    if n >= 2 {
        let c = config.arch.features_per_stage[0] + config.fusion_heads;
        out.push((format!("decoder.seg_layers.{}.weight", n - 2), vec![1, c, 1, 1, 1]));
        out.push((format!("decoder.seg_layers.{}.bias", n - 2), vec![1]));
    }
    out
}

impl Trainable {
    /// Build the parameters for `config` from `source`, and the network from them. `plans` is
    /// the plans file the model folder will be exported with.
    pub fn new(
        plans: serde_json::Value,
        config: VoxTellConfig,
        source: WeightSource<'_>,
        options: StepOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(TrainError::Config(format!("training runs in f32 or f64, not {dtype:?}")));
        }
        config.arch.settings().map_err(voxtell_fusion::FusionError::from)?;
        if config.decoder_layer >= config.arch.n_stages {
            return Err(TrainError::Config(format!(
                "decoder_layer {} is not an encoder stage (0..{})",
                config.decoder_layer, config.arch.n_stages
            )));
        }
        let grid = config.stage_sizes()[config.decoder_layer];
        let tokens: usize = grid.iter().product();
        let q = config.query_dim;
        // The checkpoint's buffer when it fits this grid (the official model overwrites the
        // computed one on load), else computed.
        let stored = match source {
            WeightSource::Checkpoint(ckpt) | WeightSource::EncoderOnly(ckpt)
                if ckpt.shape(POS_EMBED) == Some(&[tokens, 1, q][..]) =>
            {
                Some(ckpt.tensor(POS_EMBED, dtype, device)?)
            }
            _ => None,
        };
        let pos_embed = match stored {
            Some(p) => p,
            None => voxtell_fusion::posenc::positional_encoding_3d(grid, q, dtype, device)?
                .reshape((tokens, 1, q))?,
        };
        let buffers = Arc::new(HashMap::from([(POS_EMBED.to_string(), pos_embed)]));
        let params = VarMap::new();
        let encoder_only;
        let fresh = FreshWeights::seeded(options.init_seed);
        let src: &dyn SimpleBackend = match source {
            WeightSource::Checkpoint(ckpt) => ckpt,
            WeightSource::EncoderOnly(ckpt) => {
                encoder_only = EncoderFrom(ckpt, fresh);
                &encoder_only
            }
            WeightSource::Fresh => &fresh,
        };
        let used = Arc::new(Mutex::new(BTreeSet::new()));
        let backend = ParamBackend {
            params: params.clone(),
            buffers: buffers.clone(),
            source: Some(src),
            used: used.clone(),
        };
        let model = VoxTellModel::build(
            config.clone(),
            VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
            true,
        )?;
        let mut used = std::mem::take(&mut *used.lock().map_err(lock_err)?);
        used.remove(POS_EMBED);
        // The parameters the forward pass does not use: kept from the checkpoint, or fresh.
        {
            let mut vars = params.data().lock().map_err(lock_err)?;
            let extra: Vec<(String, Tensor)> = match source {
                WeightSource::Checkpoint(ckpt) => ckpt
                    .keys()
                    .into_iter()
                    .filter(|k| *k != POS_EMBED && !vars.contains_key(*k))
                    .map(|k| Ok((k.to_string(), ckpt.tensor(k, dtype, device)?)))
                    .collect::<Result<_>>()?,
                _ => unused_parameter_shapes(&config)
                    .into_iter()
                    .filter(|(k, _)| !vars.contains_key(k))
                    .map(|(k, s)| {
                        let t = fresh.get(Shape::from(s), &k, Init::Const(0.0), dtype, device)?;
                        Ok((k, t))
                    })
                    .collect::<Result<_>>()?,
            };
            for (k, t) in extra {
                vars.insert(k, Var::from_tensor(&t)?);
            }
        }
        Ok(Trainable {
            plans,
            config,
            params,
            buffers,
            used,
            model,
            optimizer: Optimizer::new(options.optimizer),
            options,
            dtype,
            device: device.clone(),
        })
    }

    /// From a checkpoint (`plans` and the checkpoint's shapes give the sizes): all its weights,
    /// or, for fine-tuning, only the encoder when `encoder_only` (the rest fresh; the patch size
    /// may then differ from the checkpoint's).
    pub fn from_checkpoint(
        plans: serde_json::Value,
        ckpt: &Checkpoint,
        encoder_only: bool,
        options: StepOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config = VoxTellConfig::from_plans_and_checkpoint(&plans, ckpt)?;
        Self::new(plans, config, WeightSource::of(ckpt, encoder_only), options, dtype, device)
    }

    /// Fresh weights for `config`.
    pub fn from_scratch(
        plans: serde_json::Value,
        config: VoxTellConfig,
        options: StepOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::new(plans, config, WeightSource::Fresh, options, dtype, device)
    }

    /// From a model folder as [`ModelDir::open`] reads and checks it (`plans.json`, then
    /// `model.safetensors` or `fold_0/checkpoint_final.pth`, and `voxtell.json` when present):
    /// all weights, or only the encoder when `encoder_only`.
    pub fn from_model_dir(
        dir: impl AsRef<Path>,
        encoder_only: bool,
        options: StepOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::from_folder(&ModelDir::open(dir)?, encoder_only, options, dtype, device)
    }

    /// From an opened model folder: its plans and sizes, and all its weights or only the
    /// encoder when `encoder_only`.
    pub fn from_folder(
        folder: &ModelDir,
        encoder_only: bool,
        options: StepOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let source = WeightSource::of(folder.checkpoint(), encoder_only);
        Self::new(folder.plans().clone(), folder.config().clone(), source, options, dtype, device)
    }

    /// The model's sizes.
    pub fn config(&self) -> &VoxTellConfig {
        &self.config
    }

    /// The plans file the model is exported with.
    pub fn plans(&self) -> &serde_json::Value {
        &self.plans
    }

    /// The network with the current weights (for validation or prediction).
    pub fn model(&self) -> &VoxTellModel {
        &self.model
    }

    /// The parameters (canonical keys), the unused ones included.
    pub fn params(&self) -> &VarMap {
        &self.params
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The step settings.
    pub fn options(&self) -> &StepOptions {
        &self.options
    }

    /// Change the step settings (the optimiser keeps its state unless its kind changes).
    pub fn set_options(&mut self, options: StepOptions) {
        self.optimizer.set_config(options.optimizer);
        self.options = options;
    }

    /// The optimiser (its state for saving).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The optimiser, mutably (to restore its state when resuming).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }

    /// Names of the parameters the forward pass uses, sorted.
    pub fn trainable_names(&self) -> Vec<String> {
        self.used.iter().cloned().collect()
    }

    /// Names of the parameters the forward pass never uses (no gradient, never updated), sorted.
    pub fn unused_names(&self) -> Result<Vec<String>> {
        let vars = self.params.data().lock().map_err(lock_err)?;
        let mut names: Vec<String> = vars.keys().filter(|k| !self.used.contains(*k)).cloned().collect();
        names.sort_unstable();
        Ok(names)
    }

    /// Number of scalar parameters the forward pass uses.
    pub fn num_trainable(&self) -> Result<usize> {
        let vars = self.params.data().lock().map_err(lock_err)?;
        Ok(self.used.iter().filter_map(|k| vars.get(k)).map(|v| v.elem_count()).sum())
    }

    /// The loss of a batch as a scalar tensor connected to the parameters. `image` is
    /// (B, 1, D, H, W), `text` (B, P, text_dim) (converted to the weights' dtype); `targets` are
    /// either one mask (B, P, D, H, W) per network output, full resolution first, or a single
    /// full-resolution mask that is downsampled to every output here (nearest-exact).
    pub fn loss(&self, image: &Tensor, text: &Tensor, targets: &[Tensor]) -> Result<Tensor> {
        let image = image.to_dtype(self.dtype)?.to_device(&self.device)?;
        let text = text.to_dtype(self.dtype)?.to_device(&self.device)?;
        let outputs = self.model.forward(&image, &text)?.outputs;
        let resized;
        let targets = match targets {
            [] => return Err(TrainError::Config("no target given".into())),
            [one] if outputs.len() > 1 => {
                resized = deep_supervision_targets(&one.to_device(&self.device)?, &outputs)?;
                &resized[..]
            }
            many => many,
        };
        deep_supervision_loss(&outputs, targets, &self.options.loss)
    }

    /// The loss of a batch and the gradient of every parameter the forward pass uses, by
    /// canonical key. Nothing is changed: gradients of several batches or workers can be
    /// averaged before [`Trainable::apply`]. See [`Trainable::loss`] for the inputs.
    pub fn gradients(&self, image: &Tensor, text: &Tensor, targets: &[Tensor]) -> Result<(f64, Gradients)> {
        let loss = self.loss(image, text, targets)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let store = loss.backward()?;
        let vars = self.params.data().lock().map_err(lock_err)?;
        let mut grads = Gradients::new();
        for (name, var) in vars.iter() {
            if let Some(g) = store.get(var.as_tensor()) {
                grads.insert(name.clone(), g.detach());
            }
        }
        Ok((value, grads))
    }

    /// Clip `grads` to the configured total norm and take one optimiser step with learning rate `lr`;
    /// the network then uses the new weights. A non-finite gradient norm is an error and leaves
    /// the weights and the optimiser state unchanged.
    pub fn apply(&mut self, mut grads: Gradients, lr: f64) -> Result<UpdateStats> {
        let norm = match self.options.clip_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?,
            None => global_grad_norm(&grads)?,
        };
        if !norm.is_finite() {
            return Err(TrainError::NonFinite(format!("gradient norm {norm}")));
        }
        let clip_scale = match self.options.clip_norm {
            Some(max) => (max / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        {
            let vars = self.params.data().lock().map_err(lock_err)?;
            self.optimizer.step(&vars, &grads, lr)?;
        }
        self.rebuild()?;
        Ok(UpdateStats { grad_norm: norm, clip_scale, lr })
    }

    /// [`Trainable::gradients`] then [`Trainable::apply`]: returns the loss before the update.
    pub fn train_step(
        &mut self,
        image: &Tensor,
        text: &Tensor,
        targets: &[Tensor],
        lr: f64,
    ) -> Result<(f64, UpdateStats)> {
        let (loss, grads) = self.gradients(image, text, targets)?;
        let stats = self.apply(grads, lr)?;
        Ok((loss, stats))
    }

    /// Rebuild the network from the parameters (some layers keep derived copies of weights).
    fn rebuild(&mut self) -> Result<()> {
        let backend = ParamBackend {
            params: self.params.clone(),
            buffers: self.buffers.clone(),
            source: None,
            used: Arc::new(Mutex::new(BTreeSet::new())),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), self.dtype, self.device.clone());
        self.model = VoxTellModel::build(self.config.clone(), vb, true)?;
        Ok(())
    }

    /// A copy of every weight by canonical key (parameters, unused ones included, and
    /// `pos_embed` as (tokens, 1, query_dim)), in the weights' dtype.
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let vars = self.params.data().lock().map_err(lock_err)?;
        let mut out = HashMap::with_capacity(vars.len() + self.buffers.len());
        for (k, v) in vars.iter() {
            out.insert(k.clone(), v.as_tensor().copy()?.detach());
        }
        for (k, b) in self.buffers.iter() {
            out.insert(k.clone(), b.copy()?);
        }
        Ok(out)
    }

    /// Replace the weights by `tensors` (canonical keys; e.g. a saved [`Trainable::state_dict`]).
    /// Every parameter must be present with its shape; `pos_embed` is optional; other keys are
    /// an error.
    pub fn load_state_dict(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        {
            let vars = self.params.data().lock().map_err(lock_err)?;
            if let Some(k) = tensors.keys().find(|k| *k != POS_EMBED && !vars.contains_key(*k)) {
                return Err(TrainError::Config(format!("weight {k} is not a parameter of this model")));
            }
            let mut new = Vec::with_capacity(vars.len());
            for (k, v) in vars.iter() {
                let t = tensors.get(k).ok_or_else(|| TrainError::Config(format!("weight {k} is missing")))?;
                if t.dims() != v.dims() {
                    return Err(TrainError::Config(format!(
                        "weight {k} has shape {:?}, the model expects {:?}",
                        t.dims(),
                        v.dims()
                    )));
                }
                new.push((v, t.to_dtype(self.dtype)?.to_device(&self.device)?));
            }
            for (v, t) in new {
                v.set(&t)?;
            }
        }
        if let Some(p) = tensors.get(POS_EMBED) {
            let old = &self.buffers[POS_EMBED];
            if p.dims() != old.dims() {
                return Err(TrainError::Config(format!(
                    "pos_embed has shape {:?}, the model expects {:?}",
                    p.dims(),
                    old.dims()
                )));
            }
            let p = p.to_dtype(self.dtype)?.to_device(&self.device)?;
            self.buffers = Arc::new(HashMap::from([(POS_EMBED.to_string(), p)]));
        }
        self.rebuild()
    }

    /// Write a model folder that [`ModelDir::open`] (and so `voxtell predict`) reads, through
    /// [`ModelDir::write`], replacing the files of an earlier export: `plans.json`,
    /// `model.safetensors` (every canonical key, f32) and `voxtell.json` (memory stage, attention
    /// heads, the text encoder: `text_encoder`, or VoxTell's default when it has the model's
    /// text width, else an "unknown" encoder of that width; and `training_spacing`, the voxel
    /// spacings of the data it was trained on, when known).
    pub fn export(
        &self,
        dir: impl AsRef<Path>,
        text_encoder: Option<&TextEncoderSpec>,
        training_spacing: Option<SpacingRange>,
    ) -> Result<()> {
        let text_encoder = match text_encoder {
            Some(t) => t.clone(),
            None => TextEncoderSpec::default_for_width(self.config.text_dim),
        };
        if text_encoder.dim != self.config.text_dim {
            return Err(TrainError::Config(format!(
                "text encoder {} gives {}-wide vectors, the model takes {}",
                text_encoder.id, text_encoder.dim, self.config.text_dim
            )));
        }
        let meta = ModelMeta {
            decoder_layer: self.config.decoder_layer,
            attention_heads: self.config.attention_heads,
            text_encoder,
            training_spacing,
        };
        let mut tensors = self.state_dict()?;
        for t in tensors.values_mut() {
            *t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        }
        ModelDir::write(dir, &self.plans, &Checkpoint::from_tensors(tensors), &meta, true)?;
        Ok(())
    }
}
