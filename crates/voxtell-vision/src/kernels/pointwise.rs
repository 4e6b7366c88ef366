//! Kernels that are memory-bound rather than compute-bound: instance normalisation, leaky ReLU,
//! average pooling, and the transposed convolution with kernel == stride (a GEMM followed by a
//! pixel shuffle).

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::{Elem, threads};

/// Per-plane statistics with f64 accumulation: mean, then the biased variance about it (two
/// passes). Each pass sums in [`LANES`] interleaved partial sums, so that the additions are
/// independent and vectorise; one running sum made every element wait for the previous
/// addition (a 32-channel 192³ norm with its output: 374 → 283 ms).
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

/// Instance normalisation of `planes` planes of `vox` voxels (plane `p` is channel `p % c`):
/// `(x − mean) / sqrt(var + eps) · w + b`, biased variance, optionally fused with a leaky ReLU.
pub(crate) fn instance_norm<T: Elem>(
    x: &[T],
    c: usize,
    vox: usize,
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
    slope: Option<f64>,
) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(vox).zip(x.par_chunks(vox)).enumerate().for_each(|(p, (o, xp))| {
        PlaneNorm::of(xp, p % c, weight, bias, eps, slope).apply(xp, o);
    });
    out
}

/// [`instance_norm`] written over its input.
pub(crate) fn instance_norm_in_place<T: Elem>(
    x: &mut [T],
    c: usize,
    vox: usize,
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
    slope: Option<f64>,
) {
    x.par_chunks_mut(vox).enumerate().for_each(|(p, xp)| {
        PlaneNorm::of(xp, p % c, weight, bias, eps, slope).apply_in_place(xp);
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

/// Leaky ReLU: `x` where `x > 0`, else `slope · x`.
pub(crate) fn leaky_relu<T: Elem>(x: &[T], slope: f64) -> Vec<T> {
    let s = T::from_f64(slope);
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(1 << 16).zip(x.par_chunks(1 << 16)).for_each(|(o, xs)| {
        for (y, &v) in o.iter_mut().zip(xs) {
            *y = if v > T::ZERO { v } else { v * s };
        }
    });
    out
}

/// `leaky_relu(a + b)` in one pass and one output (the sum rounds as `a + b` does).
pub(crate) fn add_leaky_relu<T: Elem>(a: &[T], b: &[T], slope: f64) -> Vec<T> {
    assert_eq!(a.len(), b.len());
    let s = T::from_f64(slope);
    let mut out = vec![T::ZERO; a.len()];
    out.par_chunks_mut(1 << 16).zip(a.par_chunks(1 << 16).zip(b.par_chunks(1 << 16))).for_each(
        |(o, (xs, ys))| {
            for ((y, &u), &v) in o.iter_mut().zip(xs).zip(ys) {
                let sum = u + v;
                *y = if sum > T::ZERO { sum } else { sum * s };
            }
        },
    );
    out
}

/// `out[n] += addend[n / repeat]` over samples of `sample` elements each.
pub(crate) fn add_repeated<T: Elem>(out: &mut [T], addend: &[T], sample: usize, repeat: usize) {
    for (n, o) in out.chunks_mut(sample).enumerate() {
        let a = &addend[(n / repeat) * sample..][..sample];
        o.par_chunks_mut(1 << 16).zip(a.par_chunks(1 << 16)).for_each(|(o, a)| {
            for (y, &v) in o.iter_mut().zip(a) {
                *y += v;
            }
        });
    }
}

/// Gradient of [`leaky_relu`] (slope at 0, as PyTorch).
pub(crate) fn leaky_relu_backward<T: Elem>(x: &[T], slope: f64, gout: &[T]) -> Vec<T> {
    let s = T::from_f64(slope);
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(1 << 16).zip(x.par_chunks(1 << 16).zip(gout.par_chunks(1 << 16))).for_each(
        |(o, (xs, gs))| {
            for ((y, &v), &g) in o.iter_mut().zip(xs).zip(gs) {
                *y = if v > T::ZERO { g } else { g * s };
            }
        },
    );
    out
}

/// Output spatial size of a pooling with kernel == stride (floor).
pub(crate) fn pooled(input: [usize; 3], k: [usize; 3]) -> [usize; 3] {
    [input[0] / k[0], input[1] / k[1], input[2] / k[2]]
}

/// Average pooling with kernel == stride, no padding, floor mode, over `planes` planes.
pub(crate) fn avg_pool<T: Elem>(x: &[T], planes: usize, input: [usize; 3], k: [usize; 3]) -> Vec<T> {
    let [d, h, w] = input;
    let [od, oh, ow] = pooled(input, k);
    let inv = T::from_f64(1.0 / (k[0] * k[1] * k[2]) as f64);
    let mut out = vec![T::ZERO; planes * od * oh * ow];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(od * oh * ow).enumerate().for_each(|(p, o)| {
        let xp = &x[p * d * h * w..(p + 1) * d * h * w];
        for z in 0..od {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = T::ZERO;
                    for a in 0..k[0] {
                        for b in 0..k[1] {
                            let row = &xp[((z * k[0] + a) * h + y * k[1] + b) * w + xo * k[2]..][..k[2]];
                            for &v in row {
                                s += v;
                            }
                        }
                    }
                    o[(z * oh + y) * ow + xo] = s * inv;
                }
            }
        }
    });
    out
}

/// Gradient of [`avg_pool`]: each pooled voxel spreads `g / |k|`; voxels cut off by the floor
/// get zero.
pub(crate) fn avg_pool_backward<T: Elem>(
    gout: &[T],
    planes: usize,
    input: [usize; 3],
    k: [usize; 3],
) -> Vec<T> {
    let [d, h, w] = input;
    let [od, oh, ow] = pooled(input, k);
    let inv = T::from_f64(1.0 / (k[0] * k[1] * k[2]) as f64);
    let mut gx = vec![T::ZERO; planes * d * h * w];
    if od * oh * ow == 0 {
        return gx;
    }
    gx.par_chunks_mut(d * h * w).enumerate().for_each(|(p, gp)| {
        let go = &gout[p * od * oh * ow..(p + 1) * od * oh * ow];
        for z in 0..od * k[0] {
            for y in 0..oh * k[1] {
                for xi in 0..ow * k[2] {
                    gp[(z * h + y) * w + xi] = go[((z / k[0]) * oh + y / k[1]) * ow + xi / k[2]] * inv;
                }
            }
        }
    });
    gx
}

fn par(m: usize, n: usize, k: usize) -> Parallelism {
    if m * n * k >= 1 << 18 { Parallelism::Rayon(threads()) } else { Parallelism::None }
}

/// Geometry of a transposed convolution with kernel == stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransposeGeom {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    /// Input spatial size (D, H, W).
    pub input: [usize; 3],
    /// Kernel size and stride per axis.
    pub stride: [usize; 3],
}

/// Transposed convolution with kernel == stride `s`: `x` is `batch × c_in × D × H × W`, `w` is
/// `c_in × c_out × s0 × s1 × s2` (PyTorch's layout); the output is
/// `batch × c_out × D·s0 × H·s1 × W·s2`. Per batch item and per kernel row `(a, b)` (the taps
/// that write the same output rows): one GEMM per tap of the row into a buffer of
/// `s2 × c_out × D·H·W`, then those rows of the output written, the `s2` taps interleaved along
/// W. The buffer is `1 / (s0·s1)` of the output (at 2 × 2 × 2, 216 MB for a 32-channel 192³
/// output instead of a second 864 MB).
pub(crate) fn conv_transpose<T: Elem>(x: &[T], w: &[T], bias: Option<&[T]>, g: &TransposeGeom) -> Vec<T> {
    let TransposeGeom { batch, c_in, c_out, input, stride: s } = *g;
    let vox: usize = input.iter().product();
    let taps: usize = s.iter().product();
    let [d, h, wd] = input;
    let (oh, ow) = (h * s[1], wd * s[2]);
    let mut out = vec![T::ZERO; batch * c_out * vox * taps];
    let mut y = vec![T::ZERO; s[2] * c_out * vox];
    for bi in 0..batch {
        let xb = &x[bi * c_in * vox..(bi + 1) * c_in * vox];
        let ob = &mut out[bi * c_out * vox * taps..(bi + 1) * c_out * vox * taps];
        for a in 0..s[0] {
            for bb in 0..s[1] {
                for cc in 0..s[2] {
                    let t = (a * s[1] + bb) * s[2] + cc;
                    // y[cc][o, v] = Σ_in w[in, o, t] · x[in, v]: lhs is the weight at tap t read
                    // with row stride taps (o) and column stride c_out·taps (in).
                    // SAFETY: dst is c_out × vox inside y; lhs reads w[in·c_out·taps + o·taps +
                    // t] for in < c_in, o < c_out; rhs is c_in × vox.
                    unsafe {
                        gemm(
                            c_out,
                            vox,
                            c_in,
                            y.as_mut_ptr().add(cc * c_out * vox),
                            1,
                            vox as isize,
                            false,
                            w.as_ptr().add(t),
                            (c_out * taps) as isize,
                            taps as isize,
                            xb.as_ptr(),
                            1,
                            vox as isize,
                            T::ZERO,
                            T::ONE,
                            false,
                            false,
                            false,
                            par(c_out, vox, c_in),
                        );
                    }
                }
                let y = &y;
                ob.par_chunks_mut(vox * taps).enumerate().for_each(|(o, plane)| {
                    let b = bias.map_or(T::ZERO, |b| b[o]);
                    for cc in 0..s[2] {
                        let src = &y[(cc * c_out + o) * vox..][..vox];
                        for z in 0..d {
                            for yy in 0..h {
                                let row = &src[(z * h + yy) * wd..][..wd];
                                let base = ((z * s[0] + a) * oh + yy * s[1] + bb) * ow + cc;
                                for (xx, &v) in row.iter().enumerate() {
                                    plane[base + xx * s[2]] = v + b;
                                }
                            }
                        }
                    }
                });
            }
        }
    }
    out
}

/// Gradients of [`conv_transpose`] with respect to the input and the weight (the bias gradient is
/// the sum of `gout` over batch and space, taken by the caller).
pub(crate) fn conv_transpose_backward<T: Elem>(
    x: &[T],
    w: &[T],
    gout: &[T],
    g: &TransposeGeom,
) -> (Vec<T>, Vec<T>) {
    let TransposeGeom { batch, c_in, c_out, input, stride: s } = *g;
    let vox: usize = input.iter().product();
    let taps: usize = s.iter().product();
    let rows = c_out * taps;
    let [d, h, wd] = input;
    let (oh, ow) = (h * s[1], wd * s[2]);
    let mut gx = vec![T::ZERO; batch * c_in * vox];
    let mut gw = vec![T::ZERO; c_in * rows];
    let mut gy = vec![T::ZERO; rows * vox];
    for bi in 0..batch {
        let gb = &gout[bi * c_out * vox * taps..(bi + 1) * c_out * vox * taps];
        // Inverse pixel shuffle: gy[(o, t), v].
        gy.par_chunks_mut(taps * vox).enumerate().for_each(|(o, rows_o)| {
            let plane = &gb[o * vox * taps..(o + 1) * vox * taps];
            for t in 0..taps {
                let (a, bb, cc) = (t / (s[1] * s[2]), (t / s[2]) % s[1], t % s[2]);
                let dst = &mut rows_o[t * vox..(t + 1) * vox];
                for z in 0..d {
                    for yy in 0..h {
                        let base = ((z * s[0] + a) * oh + yy * s[1] + bb) * ow + cc;
                        for xx in 0..wd {
                            dst[(z * h + yy) * wd + xx] = plane[base + xx * s[2]];
                        }
                    }
                }
            }
        });
        let xb = &x[bi * c_in * vox..(bi + 1) * c_in * vox];
        let gxb = &mut gx[bi * c_in * vox..(bi + 1) * c_in * vox];
        // SAFETY: gx[in, v] = Σ_(o,t) w[in, (o,t)] · gy[(o,t), v]; all slices sized accordingly.
        unsafe {
            gemm(
                c_in,
                vox,
                rows,
                gxb.as_mut_ptr(),
                1,
                vox as isize,
                false,
                w.as_ptr(),
                1,
                rows as isize,
                gy.as_ptr(),
                1,
                vox as isize,
                T::ZERO,
                T::ONE,
                false,
                false,
                false,
                par(c_in, vox, rows),
            );
            // gw[in, (o,t)] += Σ_v x[in, v] · gy[(o,t), v]: rhs is gy read transposed.
            gemm(
                c_in,
                rows,
                vox,
                gw.as_mut_ptr(),
                1,
                rows as isize,
                true,
                xb.as_ptr(),
                1,
                vox as isize,
                gy.as_ptr(),
                vox as isize,
                1,
                T::ONE,
                T::ONE,
                false,
                false,
                false,
                par(c_in, rows, vox),
            );
        }
    }
    (gx, gw)
}
