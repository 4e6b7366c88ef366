//! The 3-D sinusoidal positional encoding of the memory tokens, as `positional_encodings`'
//! `PositionalEncoding3D` computes it, in VoxTell's token order.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Positional encodings for a token grid of feature-map size `(n0, n1, n2)` (tensor axes 2, 3,
/// 4 of the memory stage) and width `dim`, as a (1, T, dim) tensor in VoxTell's token order
/// (axis 1 slowest, then axis 2, then axis 0).
///
/// Channels per axis: `c = ceil(dim / 6) · 2`; frequencies `1 / 10000^(2k / c)` computed in f32;
/// sin and cos interleaved; the blocks encode tensor axes 1, 2 and 0 in that order and the
/// vector is truncated to `dim` channels.
pub fn positional_encoding_3d(grid: [usize; 3], dim: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let c = dim.div_ceil(6) * 2;
    let inv_freq: Vec<f32> = (0..c).step_by(2).map(|k| 1.0 / 10000f32.powf(k as f32 / c as f32)).collect();
    let axis_emb = |len: usize| -> Vec<Vec<f32>> {
        (0..len)
            .map(|p| {
                let mut v = Vec::with_capacity(c);
                for &f in &inv_freq {
                    let a = p as f32 * f;
                    v.push(a.sin());
                    v.push(a.cos());
                }
                v
            })
            .collect()
    };
    let [n0, n1, n2] = grid;
    // (x, y, z) of the official call = tensor axes (1, 2, 0).
    let (ex, ey, ez) = (axis_emb(n1), axis_emb(n2), axis_emb(n0));
    let mut data: Vec<f32> = Vec::with_capacity(n0 * n1 * n2 * dim);
    for vx in &ex {
        for vy in &ey {
            for vz in &ez {
                data.extend(vx.iter().chain(vy).chain(vz).take(dim));
            }
        }
    }
    Ok(Tensor::from_vec(data, (1, n0 * n1 * n2, dim), device)?.to_dtype(dtype)?)
}
