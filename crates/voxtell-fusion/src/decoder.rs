//! The fusion decoder: the U-Net decoder whose five stages mix the prompt's mask embeddings into
//! the image features (VoxTell's `VoxTellDecoder`).
//!
//! Per stage `i` (low to high resolution): transposed conv of the previous output, concat
//! `[upsampled, skip]`, conv blocks, then — except at the last stage — `heads` fusion maps
//! `f[h] = Σ_c x[c] · E[h, c]` appended as channels `[features, fusion]` and a 1×1 deep-supervision
//! head; the last stage's logits are `Σ_c x[c] · e0[c]` (no bias). Prompts run as one batch; the
//! skip half of each stage's first convolution is computed once and shared by all prompts (a
//! convolution is linear in its input channels).

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};
use voxtell_vision::nn::{self, Conv3d, Conv3dConfig, ConvTranspose3d};
use voxtell_vision::{BlockSettings, ConvNormAct, StackedConvBlocks, ops};

use crate::error::{FusionError, Result};

/// The first convolution of a decoder stage split along its input channels (a convolution is
/// linear in them): `up_half` sees the upsampled features, `skip_half` the encoder's skip and
/// carries the bias. Built from the loaded `convs.0.conv`; `up(x) + skip(s)` equals the whole
/// convolution of `[x, s]` up to rounding.
#[derive(Debug, Clone)]
pub struct SplitConv {
    up_half: Conv3d,
    skip_half: Conv3d,
}

impl SplitConv {
    /// Split `conv` after its first `up_channels` input channels.
    pub fn new(conv: &Conv3d, up_channels: usize) -> Result<Self> {
        let w = conv.weight();
        let skip_channels = w.dim(1)? - up_channels;
        let half = |start: usize, len: usize| w.narrow(1, start, len)?.contiguous();
        Ok(SplitConv {
            up_half: Conv3d::new(half(0, up_channels)?, None, *conv.config()),
            skip_half: Conv3d::new(half(up_channels, skip_channels)?, conv.bias().cloned(), *conv.config()),
        })
    }
}

/// One decoder stage (`decoder.stages.{i}`): nnU-Net's `StackedConvBlocks` on
/// `[upsampled, skip]`, with its first convolution also kept split.
#[derive(Debug, Clone)]
pub struct DecoderStage {
    convs: StackedConvBlocks,
    split: SplitConv,
}

impl DecoderStage {
    /// Load a stage of `n_conv` units of `kernel` on `channels` upsampled + `channels` skip
    /// channels (key `convs.{j}`).
    fn load(
        vb: VarBuilder,
        n_conv: usize,
        channels: usize,
        kernel: [usize; 3],
        s: &BlockSettings,
    ) -> Result<Self> {
        let convs = StackedConvBlocks::load(vb, n_conv, 2 * channels, channels, s.unit(kernel, [1, 1, 1]))?;
        let split = SplitConv::new(convs.units()[0].conv(), channels)?;
        Ok(DecoderStage { convs, split })
    }

    /// `convs.0`, whose convolution the stage runs split or whole.
    fn first(&self) -> &ConvNormAct {
        &self.convs.units()[0]
    }

    /// Output channels.
    fn channels(&self) -> usize {
        self.first().out_channels()
    }
}

/// Sizes of the decoder, read from the plan and the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// Encoder channels per stage (high to low resolution).
    pub features: Vec<usize>,
    /// Encoder strides per stage.
    pub strides: Vec<[usize; 3]>,
    /// Kernel size per encoder stage.
    pub kernels: Vec<[usize; 3]>,
    /// Convolutions per decoder stage (low to high resolution).
    pub n_conv: Vec<usize>,
    /// Fusion maps per stage (`num_heads` of the official model).
    pub heads: usize,
}

/// VoxTell's `VoxTellDecoder`, field for field as its state dict: `transpconvs.{i}`
/// (`nn.ConvTranspose3d`), `stages.{i}` and `seg_layers.{i}` (1×1 `nn.Conv3d`; the last one is
/// never used and not loaded).
#[derive(Debug, Clone)]
pub struct FusionDecoder {
    transpconvs: Vec<ConvTranspose3d>,
    stages: Vec<DecoderStage>,
    seg_layers: Vec<Conv3d>,
    heads: usize,
    share_skip_half: bool,
}

impl FusionDecoder {
    /// Load the decoder for `spec` under `vb` (the model's `decoder` prefix).
    pub fn load(vb: VarBuilder, spec: &DecoderSpec, s: &BlockSettings) -> Result<Self> {
        let n = spec.features.len();
        if n < 2 || spec.n_conv.len() != n - 1 || spec.n_conv.contains(&0) {
            return Err(FusionError::Config(format!(
                "decoder needs {} conv counts (one per decoder stage, each ≥ 1), plan has {:?}",
                n - 1,
                spec.n_conv
            )));
        }
        let mut decoder = FusionDecoder {
            transpconvs: Vec::with_capacity(n - 1),
            stages: Vec::with_capacity(n - 1),
            seg_layers: Vec::with_capacity(n - 2),
            heads: spec.heads,
            share_skip_half: true,
        };
        for i in 0..n - 1 {
            let below = spec.features[n - 1 - i] + if i == 0 { 0 } else { spec.heads };
            let c = spec.features[n - 2 - i];
            let st = spec.strides[n - 1 - i];
            let up_cfg = Conv3dConfig { stride: st, bias: s.conv_bias };
            decoder.transpconvs.push(nn::conv_transpose3d(below, c, up_cfg, vb.pp("transpconvs").pp(i))?);
            let k = spec.kernels[n - 2 - i];
            decoder.stages.push(DecoderStage::load(vb.pp("stages").pp(i), spec.n_conv[i], c, k, s)?);
            if i + 1 < n - 1 {
                let seg_vb = vb.pp("seg_layers").pp(i);
                decoder.seg_layers.push(nn::conv3d(
                    c + spec.heads,
                    1,
                    [1, 1, 1],
                    Conv3dConfig::default(),
                    seg_vb,
                )?);
            }
        }
        Ok(decoder)
    }

    // Benchmark-only switch (the `model` bench of the `voxtell` crate, the equivalence test in
    // `tests/official_models.rs`): hidden from the docs because a user has no reason to turn
    // the sharing off — both ways give the same result up to rounding.
    /// Whether the skip half of each stage's first convolution is computed once and shared by
    /// the prompts (the default), or the official way: the skip repeated per prompt and the whole
    /// convolution run on the concatenation. Both give the same result up to rounding; the
    /// switch exists to measure the saving.
    #[doc(hidden)]
    pub fn set_share_skip_half(&mut self, share: bool) {
        self.share_skip_half = share;
    }

    /// Run the decoder for `p` prompts at once. `skips` are the encoder outputs (batch B);
    /// `embeddings[s]` holds stage `s`'s projected mask embeddings, (B, P, D_s) with stage 0 the
    /// highest resolution. Returns, per prompt, the logits and the deep-supervision maps in the
    /// official order `[full resolution, …, lowest]`, each (B, P, …).
    pub fn forward(&self, skips: &[Tensor], embeddings: &[Tensor]) -> Result<Vec<Tensor>> {
        let shared = self.shared_halves(skips)?;
        self.forward_shared(skips, shared.as_deref(), embeddings)
    }

    /// The prompt-independent part of every stage's first convolution — the skip half plus the
    /// bias — computed once per patch, or `None` when sharing is off. Pass it to
    /// [`FusionDecoder::forward_shared`] for every group of prompts of that patch.
    pub fn shared_halves(&self, skips: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
        let n_st = self.stages.len();
        if !self.share_skip_half || skips.len() != n_st + 1 {
            return Ok(None);
        }
        let halves = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, st)| st.split.skip_half.forward(&skips[n_st - 1 - i]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(halves))
    }

    /// [`FusionDecoder::forward`] with the shared halves already computed. `skips` are all the
    /// encoder outputs or, when `shared` is given, just the lowest one (`&skips[n..]`): the
    /// others are read only through the shared halves.
    pub fn forward_shared(
        &self,
        skips: &[Tensor],
        shared: Option<&[Tensor]>,
        embeddings: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        let n_st = self.stages.len();
        let lowest_only = shared.is_some() && skips.len() == 1;
        if (skips.len() != n_st + 1 && !lowest_only)
            || embeddings.len() != n_st
            || shared.is_some_and(|h| h.len() != n_st)
        {
            return Err(FusionError::Config(format!(
                "decoder expects {} skips (or the lowest alone with shared halves), {n_st} embeddings and {n_st} shared halves, got {}, {} and {:?}",
                n_st + 1,
                skips.len(),
                embeddings.len(),
                shared.map(<[Tensor]>::len)
            )));
        }
        let (b, p, _) = embeddings[0].dims3()?;
        // The lowest skip, repeated per prompt: batch index = b·P + prompt.
        let lowest = skips.last().ok_or_else(|| FusionError::Config("no skips".into()))?;
        let mut lres = repeat_prompts(lowest, p)?;
        let mut outputs = Vec::with_capacity(n_st);
        for (i, (st, up)) in self.stages.iter().zip(&self.transpconvs).enumerate() {
            // The previous stage's output is released as soon as it is upsampled (at the last
            // stage it is 96 channels at half resolution: 324 MB for a 192³ patch).
            let previous = lres;
            let pre = if let Some(shared) = shared.map(|h| &h[i]) {
                // Upsampling and first conv in one: the upsampled half per prompt (its rows
                // computed as the convolution reads them, never stored whole: 864 MB at the last
                // stage of a 192³ patch), plus the shared skip half (with the bias) added inside
                // the convolution's output, each image's half serving its P prompts.
                ops::upsample_conv3d_add(
                    &previous,
                    up.weight(),
                    up.bias(),
                    up.config().stride,
                    st.split.up_half.weight(),
                    shared,
                )?
            } else {
                let up = up.forward(&previous)?;
                let skip = &skips[n_st - 1 - i];
                let both = Tensor::cat(&[&up, &repeat_prompts(skip, p)?], 1)?;
                drop(up);
                st.first().conv().forward(&both)?
            };
            drop(previous);
            // `pre` is fresh: normalised in its own storage (for inference).
            let mut x = st.first().norm_act(pre)?;
            for unit in &st.convs.units()[1..] {
                x = unit.forward(x)?;
            }
            let e = embeddings[n_st - 1 - i].reshape(((), embeddings[n_st - 1 - i].dim(2)?))?;
            if i + 1 == n_st {
                // Final logits: Σ_c x[c] · e0[c], no bias.
                let logits = channel_dot(&x, &e.reshape((b * p, 1, st.channels()))?)?;
                outputs.push(unfold_prompts(&logits, b, p)?);
            } else {
                let fusion = channel_dot(&x, &e.reshape((b * p, self.heads, st.channels()))?)?;
                x = Tensor::cat(&[&x, &fusion], 1)?;
                if let Some(seg) = self.seg_layers.get(i) {
                    outputs.push(unfold_prompts(&seg.forward(&x)?, b, p)?);
                }
            }
            lres = x;
        }
        outputs.reverse();
        Ok(outputs)
    }
}

/// `f[n, h, v] = Σ_c x[n, c, v] · e[n, h, c]` for x (N, C, D, H, W) and e (N, heads, C).
fn channel_dot(x: &Tensor, e: &Tensor) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    let heads = e.dim(1)?;
    let flat = x.reshape((n, c, d * h * w))?;
    Ok(e.contiguous()?.matmul(&flat)?.reshape((n, heads, d, h, w))?)
}

/// (B, C, …) → (B·P, C, …), each sample repeated P times consecutively.
fn repeat_prompts(x: &Tensor, p: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let mut expanded = dims.clone();
    expanded.insert(1, p);
    let mut flat = dims.clone();
    flat[0] *= p;
    Ok(x.unsqueeze(1)?.broadcast_as(expanded)?.contiguous()?.reshape(flat)?)
}

/// (B·P, 1, …) → (B, P, …).
fn unfold_prompts(x: &Tensor, b: usize, p: usize) -> Result<Tensor> {
    let dims = x.dims();
    Ok(x.reshape((b, p, dims[2], dims[3], dims[4]))?)
}
