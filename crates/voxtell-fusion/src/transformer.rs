//! The prompt decoder: DETR-style pre-norm decoder layers as VoxTell uses them (cross-attention
//! and feed-forward only; the checkpoint's self-attention and `norm1` weights are never used),
//! then a final LayerNorm. Tensors are batch-first here: queries (B, N, E), memory (B, T, E).

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use crate::error::Result;

/// LayerNorm over the last axis (eps 1e-5, affine), written with differentiable ops so it trains
/// and runs in f64.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Load `weight` and `bias` of width `dim`.
    pub fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(LayerNorm { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps: 1e-5 })
    }

    /// Normalise over the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let y = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// `Linear → GELU (exact, erf) → Linear`, the adapters of VoxTell (keys `0.*` and `2.*`).
#[derive(Debug, Clone)]
pub struct Mlp {
    first: Linear,
    second: Linear,
}

impl Mlp {
    /// Load an adapter `input → hidden → output`.
    pub fn load(vb: VarBuilder, input: usize, hidden: usize, output: usize) -> Result<Self> {
        Ok(Mlp {
            first: candle_nn::linear(input, hidden, vb.pp(0))?,
            second: candle_nn::linear(hidden, output, vb.pp(2))?,
        })
    }

    /// Apply to the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.second.forward(&gelu_erf(&self.first.forward(x)?)?)?)
    }
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`, composed from candle ops in the order of candle's
/// fused `gelu_erf` (so the forward value is the same on the CPU), because the fused op's
/// backward pass rounds `1/√(2π)` to six digits; through `erf` the gradient is exact.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok((((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?.mul(x)?)
}

/// `nn.MultiheadAttention` used as cross-attention with separate query, key and value inputs:
/// `in_proj_weight` split into q, k, v; q scaled by `1/sqrt(head_dim)` before the product.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    out: Linear,
    heads: usize,
}

impl CrossAttention {
    /// Load `in_proj_weight`/`in_proj_bias` (3E × E) and `out_proj` for width `dim` and `heads`
    /// heads.
    pub fn load(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(crate::FusionError::Config(format!(
                "attention width {dim} is not divisible by {heads} heads"
            )));
        }
        let w = vb.get((3 * dim, dim), "in_proj_weight")?;
        let b = vb.get(3 * dim, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(w.narrow(0, i * dim, dim)?, Some(b.narrow(0, i * dim, dim)?)))
        };
        let out = candle_nn::linear(dim, dim, vb.pp("out_proj"))?;
        Ok(CrossAttention { wq: part(0)?, wk: part(1)?, wv: part(2)?, out, heads })
    }

    /// Attend from `query` (B, N, E) to `key`/`value` (B, T, E).
    pub fn forward(&self, query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
        let (b, n, e) = query.dims3()?;
        let t = key.dim(1)?;
        let hd = e / self.heads;
        let split = |x: Tensor, len: usize| -> Result<Tensor> {
            Ok(x.reshape((b, len, self.heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = (split(self.wq.forward(query)?, n)? * (1.0 / (hd as f64).sqrt()))?;
        let k = split(self.wk.forward(key)?, t)?;
        let v = split(self.wv.forward(value)?, t)?;
        let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let o = weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, n, e))?;
        Ok(self.out.forward(&o)?)
    }
}

/// One pre-norm decoder layer: `x += attn(LN2(x), mem + pos, mem)`; `x += FFN(LN3(x))` with a
/// ReLU feed-forward of the width stored in the checkpoint.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    norm2: LayerNorm,
    multihead_attn: CrossAttention,
    norm3: LayerNorm,
    linear1: Linear,
    linear2: Linear,
}

impl DecoderLayer {
    /// Load a layer of width `dim`, feed-forward width `ffn`, `heads` attention heads.
    pub fn load(vb: VarBuilder, dim: usize, ffn: usize, heads: usize) -> Result<Self> {
        Ok(DecoderLayer {
            norm2: LayerNorm::load(vb.pp("norm2"), dim)?,
            multihead_attn: CrossAttention::load(vb.pp("multihead_attn"), dim, heads)?,
            norm3: LayerNorm::load(vb.pp("norm3"), dim)?,
            linear1: candle_nn::linear(dim, ffn, vb.pp("linear1"))?,
            linear2: candle_nn::linear(ffn, dim, vb.pp("linear2"))?,
        })
    }

    /// Update the queries `x` (B, N, E) from `memory` and `keys` = memory + positions (B, T, E).
    pub fn forward(&self, x: &Tensor, keys: &Tensor, memory: &Tensor) -> Result<Tensor> {
        let h = self.norm2.forward(x)?;
        let x = (x + self.multihead_attn.forward(&h, keys, memory)?)?;
        let h = self.norm3.forward(&x)?;
        let f = self.linear2.forward(&self.linear1.forward(&h)?.relu()?)?;
        Ok((x + f)?)
    }
}

/// The prompt decoder: `layers.{l}` and the final `norm`.
#[derive(Debug, Clone)]
pub struct PromptDecoder {
    layers: Vec<DecoderLayer>,
    norm: LayerNorm,
}

impl PromptDecoder {
    /// Load `n_layers` layers.
    pub fn load(vb: VarBuilder, n_layers: usize, dim: usize, ffn: usize, heads: usize) -> Result<Self> {
        let layers = (0..n_layers)
            .map(|l| DecoderLayer::load(vb.pp("layers").pp(l), dim, ffn, heads))
            .collect::<Result<_>>()?;
        Ok(PromptDecoder { layers, norm: LayerNorm::load(vb.pp("norm"), dim)? })
    }

    /// Decode the prompt queries (B, N, E) against the image memory (B, T, E) with positional
    /// encodings `pos` (1 or B, T, E) added to the keys only.
    pub fn forward(&self, queries: &Tensor, memory: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let keys = memory.broadcast_add(pos)?;
        let mut x = queries.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &keys, memory)?;
        }
        self.norm.forward(&x)
    }
}
