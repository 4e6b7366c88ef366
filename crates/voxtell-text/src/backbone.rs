//! The Qwen3 decoder, written for embedding: left-padded batches under an attention mask, and
//! only the last position's final-norm hidden state comes out.
//!
//! The architecture (Hugging Face `Qwen3Model`): token embedding, then per layer
//! `h = x + attn(rms(x))`, `out = h + mlp(rms(h))`, then a final RMSNorm. The attention
//! projects to queries, keys and values, normalises every query and key head with its own
//! RMSNorm (`q_norm`, `k_norm`) *before* the rotary embedding (half-split rotation, θ =
//! `rope_theta`), shares each key/value head among `num_attention_heads / num_key_value_heads`
//! query heads, scales by `head_dim^-1/2`, and projects back with `o_proj`. The MLP is SwiGLU:
//! `down(act(gate(x)) · up(x))`.
//!
//! Positions are those of the official padded batch: `0..L` for every row, padding included
//! (`Qwen3Model` builds `position_ids` as an `arange` when only `input_ids` and
//! `attention_mask` are given; it does not shift them by the padding). Rotary embeddings only
//! see position differences, so this equals an unpadded run up to rounding; with the official
//! positions the cos/sin tables are the very values the official batch uses.
//!
//! The mask lets a real query see the real keys up to its own position (causal, padding
//! excluded), exactly as the official attention mask does. A padding query, which has no real
//! key to see, sees the padding up to its own position instead: its row keeps at least the
//! diagonal, so the mask can be `-inf` (exact zeros, and no slow underflow in `exp`) without a
//! fully masked row turning into NaN. Padding outputs never reach a real token (no real query
//! sees a padding key), so the real rows are those of the official mask.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Activation, Embedding, Linear, RmsNorm, VarBuilder};
use candle_transformers::models::qwen3::Config;

/// What the mask adds to a forbidden score: `exp` of it is exactly zero. Every row keeps at
/// least its diagonal, so no row is all `-inf`.
const MASKED: f32 = f32::NEG_INFINITY;

/// Rotary embedding: the inverse frequencies of one head, computed as the official code does
/// (f32, `1 / θ^(2i/d)`).
#[derive(Debug, Clone)]
struct Rotary {
    inv_freq: Vec<f32>,
}

impl Rotary {
    fn new(head_dim: usize, theta: f64) -> Self {
        let theta = theta as f32;
        let inv_freq =
            (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        Rotary { inv_freq }
    }

    /// cos and sin tables (`len`, `head_dim / 2`) for positions `0..len`, in `dtype`.
    fn tables(&self, len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            candle_core::bail!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            );
        }
        let bias = cfg.attention_bias;
        Ok(Attention {
            q_proj: candle_nn::linear_b(h, heads * d, bias, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear_b(h, kv_heads * d, bias, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear_b(h, kv_heads * d, bias, vb.pp("v_proj"))?,
            o_proj: candle_nn::linear_b(heads * d, h, bias, vb.pp("o_proj"))?,
            q_norm: candle_nn::rms_norm(d, cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: candle_nn::rms_norm(d, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            heads,
            kv_heads,
            head_dim: d,
        })
    }

    /// `x` (B, L, hidden); `cos`/`sin` (L, head_dim/2); `mask` broadcastable to (B, heads, L, L),
    /// f32, added to the scores.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let d = self.head_dim;
        // (B, L, n·d) → (B, L, n, d); queries and keys: each head RMS-normalised, then
        // (B, n, L, d) and rotated.
        let split = |proj: &Linear, n: usize| -> Result<Tensor> { proj.forward(x)?.reshape((b, l, n, d)) };
        let rotated = |t: Tensor, norm: &RmsNorm| -> Result<Tensor> {
            let t = norm.forward(&t)?.transpose(1, 2)?.contiguous()?;
            candle_nn::rotary_emb::rope(&t, cos, sin)
        };
        let q = rotated(split(&self.q_proj, self.heads)?, &self.q_norm)?;
        let k = rotated(split(&self.k_proj, self.kv_heads)?, &self.k_norm)?;
        let v = split(&self.v_proj, self.kv_heads)?.transpose(1, 2)?.contiguous()?;
        // Grouped-query attention without copying keys and values: the query heads that share
        // a key/value head (consecutive heads) are stacked along the sequence axis.
        let group = self.heads / self.kv_heads;
        let q = q.reshape((b, self.kv_heads, group * l, d))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
        let scores = scores.to_dtype(DType::F32)?.reshape((b, self.heads, l, l))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?.reshape((
            b,
            self.kv_heads,
            group * l,
            l,
        ))?;
        let out = probs.matmul(&v)?.reshape((b, self.heads, l, d))?;
        let out = out.transpose(1, 2)?.reshape((b, l, self.heads * d))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: candle_nn::linear_no_bias(h, f, vb.pp("gate_proj"))?,
            up_proj: candle_nn::linear_no_bias(h, f, vb.pp("up_proj"))?,
            down_proj: candle_nn::linear_no_bias(f, h, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.act.forward(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Layer {
            input_layernorm: candle_nn::rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: candle_nn::rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, cos, sin, mask)?)?;
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?
    }
}

/// A Qwen3 backbone (`Qwen3Model`) for last-token embedding of left-padded batches.
#[derive(Debug, Clone)]
pub(crate) struct Backbone {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    rotary: Rotary,
    num_attention_heads: usize,
    device: Device,
    dtype: DType,
}

impl Backbone {
    /// Load the weights under `vb` (the Hugging Face names below `model.`: `embed_tokens`,
    /// `layers.{i}.…`, `norm`).
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        Ok(Backbone {
            embed_tokens,
            layers,
            norm,
            rotary: Rotary::new(cfg.head_dim, cfg.rope_theta),
            num_attention_heads: cfg.num_attention_heads,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// f32 elements of one layer's attention scores for `rows` sequences of `len` tokens.
    pub(crate) fn score_elements(&self, rows: usize, len: usize) -> usize {
        rows * self.num_attention_heads * len * len
    }

    /// The final-norm hidden state of the last token of every row, f32 (rows, hidden). The rows
    /// (non-empty) are left-padded with `pad_id` to the longest one and run as one batch.
    pub(crate) fn last_token_states(&self, rows: &[&[u32]], pad_id: u32) -> Result<Tensor> {
        let b = rows.len();
        let l = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if b == 0 || rows.iter().any(|r| r.is_empty()) {
            candle_core::bail!("every row of a batch needs at least one token");
        }
        let mut ids = Vec::with_capacity(b * l);
        for r in rows {
            ids.extend(std::iter::repeat_n(pad_id, l - r.len()));
            ids.extend_from_slice(r);
        }
        let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
        let mask = self.mask(rows, l)?;
        let (cos, sin) = self.rotary.tables(l, self.dtype, &self.device)?;
        let mut x = self.embed_tokens.forward(&ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, mask.as_ref())?;
        }
        // Left padding puts every row's last real token at position L-1.
        let last = x.narrow(1, l - 1, 1)?.squeeze(1)?.contiguous()?;
        self.norm.forward(&last)?.to_dtype(DType::F32)
    }

    /// The additive f32 mask, (B, 1, L, L), or (1, 1, L, L) without padding; `None` when a
    /// lone token needs none. Query `i` sees key `j ≤ i` when both are real or both padding
    /// (row `b` has `pad_b` leading pads).
    fn mask(&self, rows: &[&[u32]], l: usize) -> Result<Option<Tensor>> {
        if l == 1 {
            return Ok(None);
        }
        let pads: Vec<usize> = if rows.iter().all(|r| r.len() == l) {
            vec![0]
        } else {
            rows.iter().map(|r| l - r.len()).collect()
        };
        let mut mask = Vec::with_capacity(pads.len() * l * l);
        for &pad in &pads {
            for i in 0..l {
                mask.extend((0..l).map(|j| if j > i || (j < pad && i >= pad) { MASKED } else { 0.0 }));
            }
        }
        Ok(Some(Tensor::from_vec(mask, (pads.len(), 1, l, l), &self.device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_queries_see_real_keys_and_every_row_keeps_its_diagonal() -> Result<()> {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 4, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 0,
            "num_attention_heads": 2, "head_dim": 4, "attention_bias": false,
            "num_key_value_heads": 1, "max_position_embeddings": 16, "sliding_window": null,
            "max_window_layers": 0, "tie_word_embeddings": false, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6, "use_sliding_window": false, "hidden_act": "silu"
        }))
        .map_err(candle_core::Error::wrap)?;
        let model = Backbone::new(&cfg, vb)?;
        let m =
            model.mask(&[&[1, 2, 3], &[1]], 3)?.ok_or_else(|| candle_core::Error::Msg("no mask".into()))?;
        let seen: Vec<Vec<Vec<bool>>> = m
            .squeeze(1)?
            .to_vec3::<f32>()?
            .into_iter()
            .map(|r| r.into_iter().map(|q| q.into_iter().map(|v| v == 0.0).collect()).collect())
            .collect();
        let (t, f) = (true, false);
        assert_eq!(seen[0], vec![vec![t, f, f], vec![t, t, f], vec![t, t, t]]);
        // Row 1: two pads, then one real token that sees only itself.
        assert_eq!(seen[1], vec![vec![t, f, f], vec![t, t, f], vec![f, f, t]]);
        assert!(model.mask(&[&[1]], 1)?.is_none());
        assert_eq!(
            model
                .mask(&[&[1, 2], &[3, 4]], 2)?
                .ok_or_else(|| candle_core::Error::Msg("no mask".into()))?
                .dims(),
            &[1, 1, 2, 2]
        );
        Ok(())
    }

    #[test]
    fn inverse_frequencies_follow_the_official_formula() {
        let r = Rotary::new(8, 1e6);
        assert_eq!(r.inv_freq.len(), 4);
        assert_eq!(r.inv_freq[0], 1.0);
        for (i, f) in r.inv_freq.iter().enumerate() {
            let want = 1.0 / 1e6f64.powf(2.0 * i as f64 / 8.0);
            assert!((*f as f64 - want).abs() <= 1e-6 * want, "{i}: {f} vs {want}");
        }
    }
}
