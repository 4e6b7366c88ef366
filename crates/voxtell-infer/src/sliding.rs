//! Sliding-window blending exactly as the official predictor (voxtell-spec §7.3): each tile's
//! network output is weighted by the Gaussian importance map and added into per-prompt
//! accumulators in the official tile order; the weights are summed alongside; at the end the
//! accumulated logits are divided by the summed weights.
//!
//! With [`Accumulate::F16`] (the default) every step rounds as PyTorch does on the CPU with
//! half-precision accumulators: per tile `p = f32(pred · f32(g))`, `acc = f16(f32(acc) + p)`,
//! `w = f16(f32(w) + f32(g))`, and finally `f16(f32(acc) / f32(w))` — no fused multiply-add. With
//! [`Accumulate::F32`] the accumulators are f32 (twice the memory, no half-precision rounding).

use half::f16;
use half::slice::HalfFloatSliceExt;
use ndarray::{Array3, ArrayView3, s};
use rayon::prelude::*;

use crate::error::{InferError, Result};
use crate::window;

/// Precision of the sliding-window accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accumulate {
    /// Half precision, rounding exactly as the official predictor (the default).
    #[default]
    F16,
    /// Single precision: more accurate, twice the memory.
    F32,
}

impl Accumulate {
    /// Bytes per accumulated value.
    pub fn bytes(self) -> usize {
        match self {
            Accumulate::F16 => 2,
            Accumulate::F32 => 4,
        }
    }
}

impl std::str::FromStr for Accumulate {
    type Err = InferError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "half" | "fp16" => Ok(Accumulate::F16),
            "f32" | "float" | "fp32" => Ok(Accumulate::F32),
            other => {
                Err(InferError::Invalid(format!("unknown accumulator precision {other:?} (f16 or f32)")))
            }
        }
    }
}

/// Blended logits of one prompt over a (cropped) volume.
#[derive(Debug, Clone)]
pub enum Logits {
    /// Half precision (the official numerics).
    F16(Array3<f16>),
    /// Single precision.
    F32(Array3<f32>),
}

impl Logits {
    /// Shape of the volume.
    pub fn shape(&self) -> [usize; 3] {
        let s = match self {
            Logits::F16(a) => a.shape(),
            Logits::F32(a) => a.shape(),
        };
        [s[0], s[1], s[2]]
    }

    /// The logits as f32 (exact for both precisions).
    pub fn to_f32(&self) -> Array3<f32> {
        match self {
            Logits::F16(a) => a.mapv(f16::to_f32),
            Logits::F32(a) => a.clone(),
        }
    }

    /// The mask `logit > 0`, as 0/1.
    pub fn mask(&self) -> Array3<u8> {
        match self {
            Logits::F16(a) => a.mapv(|v| u8::from(v.to_f32() > 0.0)),
            Logits::F32(a) => a.mapv(|v| u8::from(v > 0.0)),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Logits::F16(a) => a.len() * 2,
            Logits::F32(a) => a.len() * 4,
        }
    }
}

/// One tile handed to the network: its index in the official order, its origin in the padded
/// volume and its voxels (the patch, C order).
#[derive(Debug)]
pub struct Tile<'a> {
    /// Position in the official tile order (0-based).
    pub index: usize,
    /// Origin of the tile in the padded volume.
    pub origin: [usize; 3],
    /// The tile's voxels, `patch` shaped, C order.
    pub data: &'a [f32],
}

/// The sliding-window geometry of a padded volume: the patch, the tile origins in the official
/// order and the Gaussian importance map.
#[derive(Debug, Clone)]
pub struct Window {
    patch: [usize; 3],
    tiles: Vec<[usize; 3]>,
    gaussian: Vec<f16>,
    gaussian_f32: Vec<f32>,
}

impl Window {
    /// The tiles of a padded volume of `shape` (every axis at least `patch`) with the given
    /// step (a fraction of the patch, 0.5 officially) and the official Gaussian (σ = patch/8,
    /// peak 10).
    pub fn new(shape: [usize; 3], patch: [usize; 3], step: f64) -> Result<Self> {
        if !(step > 0.0 && step <= 1.0) {
            return Err(InferError::Invalid(format!("step size {step} is not in (0, 1]")));
        }
        if patch.iter().any(|&p| (p as f64 * step) < 1.0) {
            return Err(InferError::Invalid(format!(
                "step size {step} moves the {patch:?} patch by less than one voxel"
            )));
        }
        if (0..3).any(|a| shape[a] < patch[a] || patch[a] == 0) {
            return Err(InferError::Invalid(format!(
                "volume {shape:?} is smaller than the patch {patch:?}; pad it first"
            )));
        }
        let gaussian = window::gaussian(patch, 1.0 / 8.0, 10.0);
        let gaussian_f32 = gaussian.iter().map(|g| g.to_f32()).collect();
        Ok(Window { patch, tiles: window::tiles(shape, patch, step), gaussian, gaussian_f32 })
    }

    /// Tile origins in the official order.
    pub fn tiles(&self) -> &[[usize; 3]] {
        &self.tiles
    }

    /// The patch size.
    pub fn patch(&self) -> [usize; 3] {
        self.patch
    }

    /// The Gaussian importance map (f16, C order over the patch).
    pub fn gaussian(&self) -> &[f16] {
        &self.gaussian
    }
}

/// Per-prompt accumulators plus the shared weight map.
enum Accumulators {
    F16 { logits: Vec<Vec<f16>>, weights: Vec<f16> },
    F32 { logits: Vec<Vec<f32>>, weights: Vec<f32> },
}

/// Run the sliding window over a padded volume for `n_prompts` prompts.
///
/// `net` gets each tile and returns the network's logits for it: `n_prompts` consecutive
/// patch-sized blocks (prompt-major, C order within). `progress(done, total)` runs after each
/// tile; returning `false` stops with [`InferError::Cancelled`]. Returns one [`Logits`] per prompt
/// over the whole padded volume.
pub fn blend(
    padded: ArrayView3<'_, f32>,
    window: &Window,
    n_prompts: usize,
    accumulate: Accumulate,
    mut net: impl FnMut(&Tile<'_>) -> Result<Vec<f32>>,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<Vec<Logits>> {
    let shape = [padded.shape()[0], padded.shape()[1], padded.shape()[2]];
    let voxels: usize = shape.iter().product();
    let patch = window.patch;
    let tile_len: usize = patch.iter().product();
    let mut acc = match accumulate {
        Accumulate::F16 => Accumulators::F16 {
            logits: (0..n_prompts).map(|_| vec![f16::ZERO; voxels]).collect(),
            weights: vec![f16::ZERO; voxels],
        },
        Accumulate::F32 => Accumulators::F32 {
            logits: (0..n_prompts).map(|_| vec![0f32; voxels]).collect(),
            weights: vec![0f32; voxels],
        },
    };
    let mut tile_buf = vec![0f32; tile_len];
    let total = window.tiles.len();
    for (index, &origin) in window.tiles.iter().enumerate() {
        let view = padded.slice(s![
            origin[0]..origin[0] + patch[0],
            origin[1]..origin[1] + patch[1],
            origin[2]..origin[2] + patch[2]
        ]);
        for (dst, src) in tile_buf.iter_mut().zip(view.iter()) {
            *dst = *src;
        }
        let pred = net(&Tile { index, origin, data: &tile_buf })?;
        if pred.len() != n_prompts * tile_len {
            return Err(InferError::Invalid(format!(
                "the network returned {} values for a tile of {n_prompts} prompt(s) × {patch:?}",
                pred.len()
            )));
        }
        add_tile(&mut acc, &pred, &window.gaussian_f32, shape, patch, origin);
        if !progress(index + 1, total) {
            return Err(InferError::Cancelled);
        }
    }
    finish(acc, shape)
}

/// Add one tile's weighted prediction into the accumulators (prompts in parallel).
fn add_tile(
    acc: &mut Accumulators,
    pred: &[f32],
    g: &[f32],
    shape: [usize; 3],
    patch: [usize; 3],
    origin: [usize; 3],
) {
    let tile_len: usize = patch.iter().product();
    // Offsets of each patch row in the volume and in the tile.
    let rows = || {
        (0..patch[0]).flat_map(move |z| {
            (0..patch[1]).map(move |y| {
                (
                    ((origin[0] + z) * shape[1] + origin[1] + y) * shape[2] + origin[2],
                    (z * patch[1] + y) * patch[2],
                )
            })
        })
    };
    let px = patch[2];
    match acc {
        Accumulators::F16 { logits, weights } => {
            // Rows go through an f32 buffer with half's slice conversions (F16C where the CPU
            // has it): the same round-to-nearest-even as the scalar conversion, vectorised.
            logits.par_iter_mut().zip(pred.par_chunks(tile_len)).for_each(|(a, p)| {
                let mut row = vec![0f32; px];
                for (v, t) in rows() {
                    let (a, p, g) = (&mut a[v..v + px], &p[t..t + px], &g[t..t + px]);
                    a.convert_to_f32_slice(&mut row);
                    for x in 0..px {
                        let weighted = p[x] * g[x];
                        row[x] += weighted;
                    }
                    a.convert_from_f32_slice(&row);
                }
            });
            let mut row = vec![0f32; px];
            for (v, t) in rows() {
                let w = &mut weights[v..v + px];
                w.convert_to_f32_slice(&mut row);
                for (r, g) in row.iter_mut().zip(&g[t..t + px]) {
                    *r += g;
                }
                w.convert_from_f32_slice(&row);
            }
        }
        Accumulators::F32 { logits, weights } => {
            logits.par_iter_mut().zip(pred.par_chunks(tile_len)).for_each(|(a, p)| {
                for (v, t) in rows() {
                    let (a, p, g) = (&mut a[v..v + px], &p[t..t + px], &g[t..t + px]);
                    for x in 0..px {
                        a[x] += p[x] * g[x];
                    }
                }
            });
            for (v, t) in rows() {
                for (w, g) in weights[v..v + px].iter_mut().zip(&g[t..t + px]) {
                    *w += g;
                }
            }
        }
    }
}

/// Elements converted at once when dividing.
const CHUNK: usize = 4096;

/// Divide by the weights (in place, prompts in parallel).
fn finish(acc: Accumulators, shape: [usize; 3]) -> Result<Vec<Logits>> {
    fn wrap<T>(v: Vec<T>, shape: [usize; 3]) -> Result<Array3<T>> {
        Array3::from_shape_vec(shape, v).map_err(|e| InferError::Invalid(format!("accumulator shape: {e}")))
    }
    match acc {
        Accumulators::F16 { logits, weights } => logits
            .into_par_iter()
            .map(|mut a| {
                let (mut num, mut den) = (vec![0f32; CHUNK], vec![0f32; CHUNK]);
                for (a, w) in a.chunks_mut(CHUNK).zip(weights.chunks(CHUNK)) {
                    let n = a.len();
                    a.convert_to_f32_slice(&mut num[..n]);
                    w.convert_to_f32_slice(&mut den[..n]);
                    for (x, d) in num[..n].iter_mut().zip(&den[..n]) {
                        *x /= d;
                    }
                    a.convert_from_f32_slice(&num[..n]);
                }
                wrap(a, shape).map(Logits::F16)
            })
            .collect(),
        Accumulators::F32 { logits, weights } => logits
            .into_par_iter()
            .map(|mut a| {
                for (a, w) in a.iter_mut().zip(&weights) {
                    *a /= w;
                }
                wrap(a, shape).map(Logits::F32)
            })
            .collect(),
    }
}

/// Whether any blended logit is ±inf (the official predictor aborts then).
pub fn has_inf(logits: &Logits) -> bool {
    match logits {
        Logits::F16(a) => a.iter().any(|v| v.is_infinite()),
        Logits::F32(a) => a.iter().any(|v| v.is_infinite()),
    }
}

/// Cut `[offset, offset + shape)` out of padded logits (undo the centred padding).
pub fn unpad(logits: Logits, offset: [usize; 3], shape: [usize; 3]) -> Logits {
    let sl =
        s![offset[0]..offset[0] + shape[0], offset[1]..offset[1] + shape[1], offset[2]..offset[2] + shape[2]];
    if logits.shape() == shape {
        return logits;
    }
    match logits {
        Logits::F16(a) => Logits::F16(a.slice(sl).to_owned()),
        Logits::F32(a) => Logits::F32(a.slice(sl).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_network_blends_to_itself() {
        let padded = Array3::<f32>::zeros([12, 10, 9]);
        let w = Window::new([12, 10, 9], [8, 8, 8], 0.5).unwrap();
        assert_eq!(w.tiles().len(), 2 * 2 * 2);
        for acc in [Accumulate::F16, Accumulate::F32] {
            let out = blend(padded.view(), &w, 2, acc, |_t| Ok(vec![1.5f32; 2 * 512]), |_, _| true).unwrap();
            assert_eq!(out.len(), 2);
            for l in &out {
                let v = l.to_f32();
                // f32: the ratio is exact up to rounding everywhere. f16: near the tile corners
                // the Gaussian (σ = 1 voxel here) is subnormal in f16 and the weighted sums
                // quantise coarsely (as in the official code); the centre is accurate.
                let worst = match acc {
                    Accumulate::F32 => v.iter().fold(0f32, |m, x| m.max((x - 1.5).abs())),
                    Accumulate::F16 => (v[[6, 5, 4]] - 1.5).abs(),
                };
                assert!(worst <= 1e-3, "{acc:?}: {worst}");
                assert!(l.mask().iter().all(|&m| m == 1));
            }
        }
    }

    #[test]
    fn progress_can_cancel_and_wrong_sizes_are_errors() {
        let padded = Array3::<f32>::zeros([8, 8, 16]);
        let w = Window::new([8, 8, 16], [8, 8, 8], 0.5).unwrap();
        let mut seen = vec![];
        let r = blend(
            padded.view(),
            &w,
            1,
            Accumulate::F16,
            |_t| Ok(vec![0.0; 512]),
            |d, t| {
                seen.push((d, t));
                false
            },
        );
        assert!(matches!(r, Err(InferError::Cancelled)));
        assert_eq!(seen, vec![(1, 3)]);
        let r = blend(padded.view(), &w, 1, Accumulate::F16, |_t| Ok(vec![0.0; 3]), |_, _| true);
        assert!(matches!(r, Err(InferError::Invalid(_))));
        assert!(Window::new([4, 8, 8], [8, 8, 8], 0.5).is_err());
        assert!(Window::new([8, 8, 8], [8, 8, 8], 0.0).is_err());
    }

    #[test]
    fn unpad_cuts_the_offset_box() {
        let a = Array3::from_shape_fn([4, 5, 6], |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        let l = unpad(Logits::F32(a), [1, 2, 0], [2, 3, 6]);
        let v = l.to_f32();
        assert_eq!(v.shape(), &[2, 3, 6]);
        assert_eq!(v[[0, 0, 0]], 120.0);
        assert_eq!(v[[1, 2, 5]], 245.0);
    }
}
