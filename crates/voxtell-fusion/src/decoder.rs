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
use candle_nn::VarBuilder;
use voxtell_vision::{BlockSettings, ConvNormAct, StackedConvBlocks, ops};

use crate::error::{FusionError, Result};

/// One decoder stage.
#[derive(Debug, Clone)]
struct Stage {
    up_weight: Tensor,
    up_bias: Option<Tensor>,
    up_stride: [usize; 3],
    /// First conv split along its input channels: the half that sees the upsampled features and
    /// the half that sees the skip (with the bias).
    first_up: Tensor,
    first_skip: Tensor,
    first_full: Tensor,
    first_bias: Option<Tensor>,
    first_norm: Option<(Tensor, Tensor)>,
    rest: Option<StackedConvBlocks>,
    seg: Option<(Tensor, Tensor)>,
    channels: usize,
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

/// The fusion decoder (`decoder.transpconvs.*`, `decoder.stages.*`, `decoder.seg_layers.*`).
#[derive(Debug, Clone)]
pub struct FusionDecoder {
    stages: Vec<Stage>,
    heads: usize,
    eps: f64,
    slope: f64,
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
        let mut stages = Vec::with_capacity(n - 1);
        for i in 0..n - 1 {
            let below = spec.features[n - 1 - i] + if i == 0 { 0 } else { spec.heads };
            let c = spec.features[n - 2 - i];
            let st = spec.strides[n - 1 - i];
            let k = spec.kernels[n - 2 - i];
            let tv = vb.pp("transpconvs").pp(i);
            let up_weight = tv.get((below, c, st[0], st[1], st[2]), "weight")?;
            let up_bias = if s.conv_bias { Some(tv.get(c, "bias")?) } else { None };
            let sv = vb.pp("stages").pp(i).pp("convs");
            let cv = sv.pp(0).pp("conv");
            let w = cv.get((c, 2 * c, k[0], k[1], k[2]), "weight")?;
            let first_bias = if s.conv_bias { Some(cv.get(c, "bias")?) } else { None };
            let first_norm = if s.affine {
                let nv = sv.pp(0).pp("norm");
                Some((nv.get(c, "weight")?, nv.get(c, "bias")?))
            } else {
                None
            };
            let rest = if spec.n_conv[i] > 1 {
                // convs.1 … convs.{n−1} as their own stack, keys shifted by one.
                Some(later_convs(vb.pp("stages").pp(i), spec.n_conv[i], c, k, s)?)
            } else {
                None
            };
            let seg = if i + 1 < n - 1 {
                let gv = vb.pp("seg_layers").pp(i);
                Some((gv.get((1, c + spec.heads, 1, 1, 1), "weight")?, gv.get(1, "bias")?))
            } else {
                None
            };
            stages.push(Stage {
                up_weight,
                up_bias,
                up_stride: st,
                first_up: w.narrow(1, 0, c)?.contiguous()?,
                first_skip: w.narrow(1, c, c)?.contiguous()?,
                first_full: w,
                first_bias,
                first_norm,
                rest,
                seg,
                channels: c,
            });
        }
        Ok(FusionDecoder { stages, heads: spec.heads, eps: s.eps, slope: s.slope, share_skip_half: true })
    }

    /// Whether the skip half of each stage's first convolution is computed once and shared by
    /// the prompts (the default), or the official way: the skip repeated per prompt and the whole
    /// convolution run on the concatenation. Both give the same result up to rounding; the
    /// switch exists to measure the saving.
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
            .map(|(i, st)| {
                ops::conv3d(&skips[n_st - 1 - i], &st.first_skip, st.first_bias.as_ref(), [1, 1, 1])
            })
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
        for (i, st) in self.stages.iter().enumerate() {
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
                    &st.up_weight,
                    st.up_bias.as_ref(),
                    st.up_stride,
                    &st.first_up,
                    shared,
                )?
            } else {
                let up = ops::conv_transpose3d(&previous, &st.up_weight, st.up_bias.as_ref(), st.up_stride)?;
                let skip = &skips[n_st - 1 - i];
                let both = Tensor::cat(&[&up, &repeat_prompts(skip, p)?], 1)?;
                drop(up);
                ops::conv3d(&both, &st.first_full, st.first_bias.as_ref(), [1, 1, 1])?
            };
            drop(previous);
            let (w, bb) = match &st.first_norm {
                Some((w, bb)) => (Some(w), Some(bb)),
                None => (None, None),
            };
            // `pre` is fresh: normalised in its own storage (for inference).
            let mut x = ops::instance_norm3d_act_in_place(pre, w, bb, self.eps, Some(self.slope))?;
            if let Some(rest) = &st.rest {
                x = rest.forward_owned(x)?;
            }
            let e = embeddings[n_st - 1 - i].reshape(((), embeddings[n_st - 1 - i].dim(2)?))?;
            if i + 1 == n_st {
                // Final logits: Σ_c x[c] · e0[c], no bias.
                let logits = channel_dot(&x, &e.reshape((b * p, 1, st.channels))?)?;
                outputs.push(unfold_prompts(&logits, b, p)?);
            } else {
                let fusion = channel_dot(&x, &e.reshape((b * p, self.heads, st.channels))?)?;
                x = Tensor::cat(&[&x, &fusion], 1)?;
                if let Some((sw, sb)) = &st.seg {
                    let ds = ops::conv3d(&x, sw, Some(sb), [1, 1, 1])?;
                    outputs.push(unfold_prompts(&ds, b, p)?);
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

/// `convs.1 … convs.{n−1}` of a decoder stage (the first conv is split and handled by the stage).
fn later_convs(
    vb: VarBuilder,
    n: usize,
    c: usize,
    k: [usize; 3],
    s: &BlockSettings,
) -> Result<StackedConvBlocks> {
    let convs = (1..n)
        .map(|j| ConvNormAct::load(vb.pp("convs").pp(j), c, c, k, [1, 1, 1], s.conv_bias, true, s))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(StackedConvBlocks::from_units(convs)?)
}
