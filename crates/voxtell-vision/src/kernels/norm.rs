//! Instance normalisation (`nn.InstanceNorm3d(affine=True)` of the official network, with
//! `nn.LeakyReLU` fused where it follows) and its backward pass, per (sample, channel) plane with
//! f64 statistics; and the per-channel sums that give a convolution's bias gradient.
//!
//! Memory-bound: each plane is read twice for its statistics and once to write the output.

use rayon::prelude::*;

use super::Elem;

/// Per-plane statistics with f64 accumulation: mean, then the biased variance about it (two
/// passes). Each pass sums in [`LANES`] interleaved partial sums, so that the additions are
/// independent and vectorise (figures: `docs/performance.md`, "Other ops").
fn mean_var<T: Elem>(plane: &[T]) -> (f64, f64) {
    let n = plane.len() as f64;
    let mean = lane_sum(plane, |v| v) / n;
    let var = lane_sum(plane, |v| (v - mean) * (v - mean)) / n;
    (mean, var)
}

/// Partial sums of [`mean_var`].
const LANES: usize = 8;

/// `Σ f(x)` in f64 over [`LANES`] partial sums (element `i` into sum `i mod LANES`), then the
/// partial sums and the tail in order.
fn lane_sum<T: Elem>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(v.to_f64());
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|v| f(v.to_f64())).sum::<f64>()
}

/// An instance norm over planes of `vox` voxels (plane `p` is channel `p % c`):
/// `(x − mean) / sqrt(var + eps) · weight + bias`, biased variance, the affine parameters per
/// channel when given, followed by a leaky ReLU with `slope` when given.
#[derive(Clone, Copy)]
pub(crate) struct NormParams<'a, T> {
    pub c: usize,
    pub vox: usize,
    pub weight: Option<&'a [T]>,
    pub bias: Option<&'a [T]>,
    pub eps: f64,
    pub slope: Option<f64>,
}

impl<T: Elem> NormParams<'_, T> {
    /// The normalisation of plane `p`, whose values are `xp`.
    fn plane(&self, p: usize, xp: &[T]) -> PlaneNorm<T> {
        PlaneNorm::of(xp, p % self.c, self.weight, self.bias, self.eps, self.slope)
    }
}

/// Instance normalisation of `x` into a new buffer.
pub(crate) fn instance_norm<T: Elem>(x: &[T], params: &NormParams<'_, T>) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(params.vox).zip(x.par_chunks(params.vox)).enumerate().for_each(|(p, (o, xp))| {
        params.plane(p, xp).apply(xp, o);
    });
    out
}

/// [`instance_norm`] written over its input.
pub(crate) fn instance_norm_in_place<T: Elem>(x: &mut [T], params: &NormParams<'_, T>) {
    x.par_chunks_mut(params.vox).enumerate().for_each(|(p, xp)| {
        params.plane(p, xp).apply_in_place(xp);
    });
}

/// One plane's normalisation: `y = x·scale + shift` (the affine folded in), then the leaky
/// ReLU's slope where fused.
struct PlaneNorm<T> {
    scale: T,
    shift: T,
    slope: Option<T>,
}

impl<T: Elem> PlaneNorm<T> {
    fn of(
        xp: &[T],
        ch: usize,
        weight: Option<&[T]>,
        bias: Option<&[T]>,
        eps: f64,
        slope: Option<f64>,
    ) -> Self {
        let (mean, var) = mean_var(xp);
        let r = 1.0 / (var + eps).sqrt();
        let w = weight.map_or(1.0, |w| w[ch].to_f64());
        let b = bias.map_or(0.0, |b| b[ch].to_f64());
        PlaneNorm {
            scale: T::from_f64(r * w),
            shift: T::from_f64(b - mean * r * w),
            slope: slope.map(T::from_f64),
        }
    }

    /// `out[i] = f(x[i])`.
    fn apply(&self, x: &[T], out: &mut [T]) {
        let (scale, shift) = (self.scale, self.shift);
        match self.slope {
            None => out.iter_mut().zip(x).for_each(|(y, &v)| *y = v * scale + shift),
            Some(s) => out.iter_mut().zip(x).for_each(|(y, &v)| {
                let z = v * scale + shift;
                *y = if z > T::ZERO { z } else { z * s };
            }),
        }
    }

    /// `x[i] = f(x[i])`.
    fn apply_in_place(&self, x: &mut [T]) {
        let (scale, shift) = (self.scale, self.shift);
        match self.slope {
            None => x.iter_mut().for_each(|v| *v = *v * scale + shift),
            Some(s) => x.iter_mut().for_each(|v| {
                let z = *v * scale + shift;
                *v = if z > T::ZERO { z } else { z * s };
            }),
        }
    }
}

/// Gradients of the affine parameters (weight, bias) of an instance norm, when it has them.
pub(crate) type AffineGrads<T> = Option<(Vec<T>, Vec<T>)>;

/// Gradients of [`instance_norm`]: input, and weight and bias when the norm is affine.
pub(crate) fn instance_norm_backward<T: Elem>(
    x: &[T],
    c: usize,
    vox: usize,
    weight: Option<&[T]>,
    eps: f64,
    gout: &[T],
) -> (Vec<T>, AffineGrads<T>) {
    let mut gx = vec![T::ZERO; x.len()];
    // Per plane: (Σ g·x̂, Σ g) for the affine gradients.
    let sums: Vec<(f64, f64)> = gx
        .par_chunks_mut(vox)
        .zip(x.par_chunks(vox).zip(gout.par_chunks(vox)))
        .enumerate()
        .map(|(p, (gxp, (xp, gp)))| {
            let ch = p % c;
            let (mean, var) = mean_var(xp);
            let r = 1.0 / (var + eps).sqrt();
            let w = weight.map_or(1.0, |w| w[ch].to_f64());
            let n = vox as f64;
            let (mut sum_g, mut sum_gx) = (0.0, 0.0);
            for (&g, &v) in gp.iter().zip(xp) {
                let g = g.to_f64();
                sum_g += g;
                sum_gx += g * (v.to_f64() - mean) * r;
            }
            // grad_x = r·w·(g − mean(g) − x̂·mean(g·x̂))
            let (mg, mgx) = (sum_g / n, sum_gx / n);
            for ((o, &g), &v) in gxp.iter_mut().zip(gp).zip(xp) {
                let xh = (v.to_f64() - mean) * r;
                *o = T::from_f64(r * w * (g.to_f64() - mg - xh * mgx));
            }
            (sum_gx, sum_g)
        })
        .collect();
    let affine = weight.map(|_| {
        let mut gw = vec![T::ZERO; c];
        let mut gb = vec![T::ZERO; c];
        let mut acc = vec![(0.0f64, 0.0f64); c];
        for (p, (sgx, sg)) in sums.iter().enumerate() {
            acc[p % c].0 += sgx;
            acc[p % c].1 += sg;
        }
        for ch in 0..c {
            gw[ch] = T::from_f64(acc[ch].0);
            gb[ch] = T::from_f64(acc[ch].1);
        }
        (gw, gb)
    });
    (gx, affine)
}

/// Per-channel sums of an (N, C, vox) array over N and the voxels (the bias gradient of a
/// convolution): each plane is summed in f64 with four interleaved partial sums, planes run in
/// parallel, and the planes of a channel are added in batch order, so the result does not
/// depend on the thread count.
pub(crate) fn channel_sums<T: Elem>(x: &[T], c: usize, vox: usize) -> Vec<T> {
    if vox == 0 || c == 0 {
        return vec![T::ZERO; c];
    }
    let planes: Vec<f64> = x
        .par_chunks(vox)
        .map(|p| {
            let mut acc = [0.0f64; 4];
            let mut quads = p.chunks_exact(4);
            for q in &mut quads {
                for (a, &v) in acc.iter_mut().zip(q) {
                    *a += v.to_f64();
                }
            }
            let tail: f64 = quads.remainder().iter().map(|v| v.to_f64()).sum();
            (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
        })
        .collect();
    let mut out = vec![0.0f64; c];
    for (p, s) in planes.iter().enumerate() {
        out[p % c] += s;
    }
    out.into_iter().map(T::from_f64).collect()
}
