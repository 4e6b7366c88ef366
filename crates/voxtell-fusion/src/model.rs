//! `VoxTellModel`: the encoder, the prompt side (text projection, memory projection, positional
//! encoding, prompt decoder, per-stage projections) and the fusion decoder, built from
//! `plans.json` and the checkpoint's own tensor shapes.

use candle_core::{DType, Device, Tensor};
use voxtell_vision::{ArchKwargs, ResidualEncoder};

use crate::checkpoint::Checkpoint;
use crate::decoder::{DecoderSpec, FusionDecoder};
use crate::error::{FusionError, Result};
use crate::plans::PlansNetwork;
use crate::posenc::positional_encoding_3d;
use crate::transformer::{Mlp, PromptDecoder};

/// Sizes of a VoxTell model. [`VoxTellConfig::from_plans_and_checkpoint`] reads them from the
/// plan and the checkpoint; nothing is assumed from the published model except the attention head count.
#[derive(Debug, Clone, PartialEq)]
pub struct VoxTellConfig {
    /// The encoder/decoder plan.
    pub arch: ArchKwargs,
    /// Sliding-window patch size (`configurations.3d_fullres.patch_size`).
    pub patch_size: [usize; 3],
    /// Encoder stage whose output is the prompt decoder's memory (4 in VoxTell).
    pub decoder_layer: usize,
    /// Width of the text embeddings (2560 for Qwen3-Embedding-4B).
    pub text_dim: usize,
    /// Hidden width of the text projection.
    pub text_hidden: usize,
    /// Width of the prompt queries and the memory.
    pub query_dim: usize,
    /// Fusion maps per decoder stage (`num_heads` of the official model).
    pub fusion_heads: usize,
    /// Hidden width of the per-stage projections.
    pub projection_hidden: usize,
    /// Prompt decoder layers.
    pub layers: usize,
    /// Feed-forward width of the prompt decoder.
    pub ffn_dim: usize,
    /// Attention heads of the prompt decoder (8 in VoxTell; not visible in the weights).
    pub attention_heads: usize,
}

fn arr3(v: &[usize]) -> [usize; 3] {
    [v[0], v[1], v[2]]
}

impl VoxTellConfig {
    /// Read the sizes from a plans file (its `3d_fullres` configuration: the architecture and
    /// the patch size, see [`PlansNetwork`]) and the checkpoint's tensor shapes. The memory stage
    /// and the attention heads are VoxTell's (4 and 8); [`crate::ModelDir::open`] applies a
    /// folder's `voxtell.json` on top.
    pub fn from_plans_and_checkpoint(plans: &serde_json::Value, ckpt: &Checkpoint) -> Result<Self> {
        Self::from_network_and_checkpoint(PlansNetwork::from_plans(plans)?, ckpt)
    }

    /// [`VoxTellConfig::from_plans_and_checkpoint`] with the plans already read.
    pub(crate) fn from_network_and_checkpoint(network: PlansNetwork, ckpt: &Checkpoint) -> Result<Self> {
        let PlansNetwork { arch, patch_size } = network;
        let text = ckpt.require("project_text_embed.0.weight")?;
        let (text_hidden, text_dim) = (text[0], text[1]);
        let query_dim = ckpt.require("project_text_embed.2.weight")?[0];
        let projection_hidden = ckpt.require("project_to_decoder_channels.0.0.weight")?[0];
        let n_proj = (0..)
            .take_while(|s| ckpt.shape(&format!("project_to_decoder_channels.{s}.2.weight")).is_some())
            .count();
        if n_proj != arch.n_stages - 1 {
            return Err(FusionError::Config(format!(
                "{}: {n_proj} decoder projections for {} decoder stages; only fusion at every stage is supported",
                ckpt.path().display(),
                arch.n_stages - 1
            )));
        }
        let f1 = ckpt.require("project_to_decoder_channels.1.2.weight")?[0];
        let fusion_heads = f1 / arch.features_per_stage[1];
        if fusion_heads == 0 || !f1.is_multiple_of(arch.features_per_stage[1]) {
            return Err(FusionError::Config(format!(
                "{}: project_to_decoder_channels.1.2.weight has {f1} outputs, not a multiple of the stage's {} channels",
                ckpt.path().display(),
                arch.features_per_stage[1]
            )));
        }
        let layers = (0..)
            .take_while(|l| ckpt.shape(&format!("transformer_decoder.layers.{l}.linear1.weight")).is_some())
            .count();
        if layers == 0 {
            return Err(FusionError::MissingKey {
                path: ckpt.path().to_path_buf(),
                key: "transformer_decoder.layers.0.linear1.weight".into(),
            });
        }
        let ffn_dim = ckpt.require("transformer_decoder.layers.0.linear1.weight")?[0];
        Ok(VoxTellConfig {
            arch,
            patch_size,
            decoder_layer: 4,
            text_dim,
            text_hidden,
            query_dim,
            fusion_heads,
            projection_hidden,
            layers,
            ffn_dim,
            attention_heads: 8,
        })
    }

    /// Feature-map size of each encoder stage for one patch.
    pub fn stage_sizes(&self) -> Vec<[usize; 3]> {
        let mut size = self.patch_size;
        self.arch
            .strides
            .iter()
            .map(|s| {
                for a in 0..3 {
                    size[a] = size[a].div_ceil(s[a]);
                }
                size
            })
            .collect()
    }
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct VoxTellOutput {
    /// Logits at the patch resolution, (B, P, D, H, W), and — with deep supervision — the lower
    /// scales after it, in the official order.
    pub outputs: Vec<Tensor>,
    /// The prompt decoder's memory (B, T, query_dim), tokens in the official `(h w d)` order.
    pub memory: Tensor,
    /// The prompt decoder's output (B, P, query_dim).
    pub mask_embeddings: Tensor,
}

/// The VoxTell network (the official `VoxTellModel`), its fields named after the state dict's
/// top-level keys.
#[derive(Debug, Clone)]
pub struct VoxTellModel {
    config: VoxTellConfig,
    encoder: ResidualEncoder,
    decoder: FusionDecoder,
    project_bottleneck_embed: Mlp,
    project_text_embed: Mlp,
    project_to_decoder_channels: Vec<Mlp>,
    pos_embed: Tensor,
    transformer_decoder: PromptDecoder,
}

impl VoxTellModel {
    /// Build the network for `config` from `ckpt`.
    pub fn load(config: VoxTellConfig, ckpt: &Checkpoint, dtype: DType, device: &Device) -> Result<Self> {
        let stored_pos_embed = ckpt.shape("pos_embed").is_some();
        Self::build(config, ckpt.var_builder(dtype, device), stored_pos_embed)
    }

    /// Build the network for `config` from any `VarBuilder` whose paths are VoxTell's state-dict
    /// keys (a checkpoint, or fresh weights for training). Without a stored `pos_embed` the
    /// positional encoding is computed.
    pub fn build(config: VoxTellConfig, vb: candle_nn::VarBuilder, stored_pos_embed: bool) -> Result<Self> {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let device = &device;
        let arch = &config.arch;
        let settings = arch.settings()?;
        if config.decoder_layer >= arch.n_stages {
            return Err(FusionError::Config(format!(
                "decoder_layer {} is not an encoder stage (0..{})",
                config.decoder_layer, arch.n_stages
            )));
        }
        let encoder = ResidualEncoder::load(vb.pp("encoder"), arch, 1)?;
        let n = arch.n_stages;
        let spec = DecoderSpec {
            features: arch.features_per_stage.clone(),
            strides: arch.strides.iter().map(|s| arr3(s)).collect(),
            kernels: arch.kernel_sizes.iter().map(|k| arr3(k)).collect(),
            n_conv: if arch.n_conv_per_stage_decoder.is_empty() {
                vec![1; n - 1]
            } else {
                arch.n_conv_per_stage_decoder.clone()
            },
            heads: config.fusion_heads,
        };
        let decoder = FusionDecoder::load(vb.pp("decoder"), &spec, &settings)?;
        let q = config.query_dim;
        let mem_channels = arch.features_per_stage[config.decoder_layer];
        let project_bottleneck_embed = Mlp::load(vb.pp("project_bottleneck_embed"), mem_channels, q, q)?;
        let project_text_embed =
            Mlp::load(vb.pp("project_text_embed"), config.text_dim, config.text_hidden, q)?;
        let project_to_decoder_channels = (0..n - 1)
            .map(|s| {
                let out = arch.features_per_stage[s] * if s == 0 { 1 } else { config.fusion_heads };
                Mlp::load(vb.pp("project_to_decoder_channels").pp(s), q, config.projection_hidden, out)
            })
            .collect::<Result<Vec<_>>>()?;
        let grid = config.stage_sizes()[config.decoder_layer];
        let tokens = grid.iter().product::<usize>();
        let pos_embed = if stored_pos_embed {
            vb.get((tokens, 1, q), "pos_embed")?.reshape((1, tokens, q))?
        } else {
            positional_encoding_3d(grid, q, dtype, device)?
        };
        let transformer_decoder = PromptDecoder::load(
            vb.pp("transformer_decoder"),
            config.layers,
            q,
            config.ffn_dim,
            config.attention_heads,
        )?;
        Ok(VoxTellModel {
            config,
            encoder,
            decoder,
            project_bottleneck_embed,
            project_text_embed,
            project_to_decoder_channels,
            pos_embed,
            transformer_decoder,
        })
    }

    /// The model's sizes.
    pub fn config(&self) -> &VoxTellConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.pos_embed.device()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }

    // Benchmark-only, as `FusionDecoder::set_share_skip_half` (which it forwards to): hidden
    // from the docs because the default is the right choice for every user.
    /// Whether the decoder shares the skip half of its first convolutions between prompts.
    #[doc(hidden)]
    pub fn set_share_skip_half(&mut self, share: bool) {
        self.decoder.set_share_skip_half(share);
    }

    /// Bytes of activations the prompt-dependent decoder holds per prompt at its peak (the
    /// full-resolution stage: the upsampled features, the prompt's half of the first conv and its
    /// normalised output, plus the lower stage's output and the logits), for elements of
    /// `elem_bytes` bytes.
    pub fn decoder_bytes_per_prompt(&self, elem_bytes: usize) -> u64 {
        let sizes = self.config.stage_sizes();
        let f = &self.config.arch.features_per_stage;
        let vox = |s: usize| sizes[s].iter().product::<usize>() as u64;
        let (c0, c1) = (f[0] as u64, (f[1] + self.config.fusion_heads) as u64);
        (3 * c0 * vox(0) + c1 * vox(1) + vox(0)) * elem_bytes as u64
    }

    /// How many prompts to run through the decoder at once so that their activations fit in
    /// `budget_bytes` (at least 1).
    pub fn prompt_group_for_budget(&self, budget_bytes: u64, elem_bytes: usize) -> usize {
        (budget_bytes / self.decoder_bytes_per_prompt(elem_bytes).max(1)).max(1) as usize
    }

    /// Run the network on a patch `image` (B, 1, D, H, W) with prompt embeddings `text`
    /// (B, P, text_dim). All prompts run as one batch through the decoder; use
    /// [`VoxTellModel::forward_grouped`] to bound memory.
    pub fn forward(&self, image: &Tensor, text: &Tensor) -> Result<VoxTellOutput> {
        let p = text.dim(1)?;
        self.forward_grouped(image, text, p.max(1))
    }

    /// As [`VoxTellModel::forward`], with the prompt-dependent decoder run `group` prompts at a
    /// time (the encoder and the memory run once).
    pub fn forward_grouped(&self, image: &Tensor, text: &Tensor, group: usize) -> Result<VoxTellOutput> {
        let (b, c, d, h, w) = image.dims5()?;
        if c != 1 || [d, h, w] != self.config.patch_size {
            return Err(FusionError::Config(format!(
                "image patch has shape {:?}, the model takes (B, 1, {:?})",
                image.dims(),
                self.config.patch_size
            )));
        }
        let (tb, p, td) = text.dims3()?;
        if tb != b || td != self.config.text_dim || p == 0 {
            return Err(FusionError::Config(format!(
                "text embeddings have shape {:?}, expected ({b}, prompts ≥ 1, {})",
                text.dims(),
                self.config.text_dim
            )));
        }
        let mut skips = self.encoder.forward(image)?;
        let mem_feat = &skips[self.config.decoder_layer];
        // 'b c d h w -> b (h w d) c'
        let (_, mc, md, mh, mw) = mem_feat.dims5()?;
        let tokens = mem_feat.permute((0, 3, 4, 2, 1))?.contiguous()?.reshape((b, mh * mw * md, mc))?;
        let memory = self.project_bottleneck_embed.forward(&tokens)?;
        if memory.dim(1)? != self.pos_embed.dim(1)? {
            return Err(FusionError::Config(format!(
                "memory has {} tokens but the positional encoding {}",
                memory.dim(1)?,
                self.pos_embed.dim(1)?
            )));
        }
        let queries = self.project_text_embed.forward(text)?;
        let mask_embeddings = self.transformer_decoder.forward(&queries, &memory, &self.pos_embed)?;
        let projected = self
            .project_to_decoder_channels
            .iter()
            .map(|m| m.forward(&mask_embeddings))
            .collect::<Result<Vec<_>>>()?;
        let group = group.clamp(1, p);
        let shared = self.decoder.shared_halves(&skips)?;
        if shared.is_some() {
            // The decoder now reads only the lowest skip; free the others (at 192³ the
            // full-resolution one alone is 0.9 GB).
            skips = skips.split_off(skips.len() - 1);
        }
        let mut per_scale: Vec<Vec<Tensor>> = Vec::new();
        let mut start = 0;
        while start < p {
            let len = group.min(p - start);
            let emb =
                projected.iter().map(|e| e.narrow(1, start, len)).collect::<candle_core::Result<Vec<_>>>()?;
            let outs = self.decoder.forward_shared(&skips, shared.as_deref(), &emb)?;
            if per_scale.is_empty() {
                per_scale = outs.into_iter().map(|o| vec![o]).collect();
            } else {
                for (acc, o) in per_scale.iter_mut().zip(outs) {
                    acc.push(o);
                }
            }
            start += len;
        }
        let outputs =
            per_scale.iter().map(|parts| Tensor::cat(parts, 1)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(VoxTellOutput { outputs, memory, mask_embeddings })
    }
}
