//! Direct convolution for stride 1 in f32 with AVX-512 on a channels-last copy of the input, for
//! layers with many channels (where vectorising over W wastes lanes on small volumes and the
//! GEMM library leaves half the machine idle).
//!
//! The input is copied once into a zero-padded `N × Dp × Hp × Wp × C` buffer. The micro-kernel
//! holds [`X_T`] consecutive output voxels along W × 32 output channels in 28 registers; for each
//! tap and input channel it loads two 16-channel weight vectors and broadcasts one input value
//! per voxel (28 FMAs per 16 loads). The result is written channels-last and transposed back to
//! NCDHW at the end; at the sizes this path is chosen for, both copies are small next to the
//! arithmetic.

use rayon::prelude::*;

use super::{ConvGeom, for_each_weight};

/// Output channels per tile (two 16-float vectors).
pub(crate) const CO_T: usize = 32;
/// Output voxels along W per tile.
const X_T: usize = 14;

/// Pack `w` (`c_out × c_in × taps`) as `[co_block][tap][ci][CO_T]`, zero-filled past `c_out`;
/// with `transpose_flip`, pack the adjoint kernel (channels swapped, taps reversed).
fn pack(w: &[f32], c_out: usize, c_in: usize, taps: usize, transpose_flip: bool) -> Vec<f32> {
    let (n_out, n_in) = if transpose_flip { (c_in, c_out) } else { (c_out, c_in) };
    let mut p = vec![0.0f32; n_out.div_ceil(CO_T) * taps * n_in * CO_T];
    for_each_weight(w, c_out, c_in, taps, transpose_flip, |o, i, t, v| {
        p[(((o / CO_T) * taps + t) * n_in + i) * CO_T + o % CO_T] = v;
    });
    p
}

/// Zero-padded channels-last copy of `x` (`batch × c × D × H × W`), with slack at the end for the
/// last tile's reads.
fn pad_cl(x: &[f32], g: &ConvGeom) -> (Vec<f32>, [usize; 3]) {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let (dp, hp, wp) = (d + 2 * pd, h + 2 * ph, w + 2 * pw);
    let c = g.c_in;
    let mut out = vec![0.0f32; g.batch * dp * hp * wp * c + (X_T + 2 * pw + 2) * c];
    let plane = d * h * w;
    let body = g.batch * dp * hp * wp * c;
    // One task per (batch, padded depth) slab; each transposes its rows.
    out[..body].par_chunks_mut(hp * wp * c).enumerate().for_each(|(i, slab)| {
        let (n, zp) = (i / dp, i % dp);
        if zp < pd || zp >= pd + d {
            return;
        }
        let z = zp - pd;
        let xb = &x[n * c * plane..(n + 1) * c * plane];
        for y in 0..h {
            let row = &mut slab[((y + ph) * wp + pw) * c..][..w * c];
            for ci in 0..c {
                let src = &xb[ci * plane + (z * h + y) * w..][..w];
                for (xx, &v) in src.iter().enumerate() {
                    row[xx * c + ci] = v;
                }
            }
        }
    });
    (out, [dp, hp, wp])
}

/// Stride-1 convolution of `x` with `w` (forward, or the input gradient when `transpose_flip`,
/// with `g` describing that convolution's own input and output).
pub(crate) fn run(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    w_c_out: usize,
    w_c_in: usize,
    transpose_flip: bool,
) -> Vec<f32> {
    let taps = g.taps();
    let packed = pack(w, w_c_out, w_c_in, taps, transpose_flip);
    let (xp, [_, hp, wp]) = pad_cl(x, g);
    let [od, oh, ow] = g.output();
    let blocks = g.c_out.div_ceil(CO_T);
    let cpad = blocks * CO_T;
    let dp = od + g.kernel[0] - 1;
    // Channels-last output with padded channels: batch × Do × Ho × Wo × cpad.
    let mut out_cl = vec![0.0f32; g.batch * od * oh * ow * cpad];
    let mut tap_off = Vec::with_capacity(taps);
    for a in 0..g.kernel[0] {
        for b in 0..g.kernel[1] {
            for c in 0..g.kernel[2] {
                tap_off.push(((a * hp + b) * wp + c) * g.c_in);
            }
        }
    }
    let mut bias_p = vec![0.0f32; cpad];
    if let Some(b) = bias {
        bias_p[..g.c_out].copy_from_slice(b);
    }
    // Tasks: (batch, output depth slice); each writes its own slice of the output.
    out_cl.par_chunks_mut(oh * ow * cpad).enumerate().for_each(|(i, slice)| {
        let (n, z) = (i / od, i % od);
        let base = ((n * dp + z) * hp) * wp * g.c_in;
        for cb in 0..blocks {
            let wb = &packed[cb * taps * g.c_in * CO_T..(cb + 1) * taps * g.c_in * CO_T];
            let bb = &bias_p[cb * CO_T..(cb + 1) * CO_T];
            for y in 0..oh {
                let mut x0 = 0;
                while x0 < ow {
                    let n_vox = (ow - x0).min(X_T);
                    let src = base + (y * wp + x0) * g.c_in;
                    let dst = &mut slice[(y * ow + x0) * cpad + cb * CO_T..];
                    tile(&xp[src..], wb, bb, &tap_off, g.c_in, n_vox, cpad, dst);
                    x0 += X_T;
                }
            }
        }
    });
    // Back to NCDHW, dropping the padding channels.
    let vox = od * oh * ow;
    let mut out = vec![0.0f32; g.batch * g.c_out * vox];
    out.par_chunks_mut(vox).enumerate().for_each(|(p, plane)| {
        let (n, co) = (p / g.c_out, p % g.c_out);
        let src = &out_cl[n * vox * cpad..(n + 1) * vox * cpad];
        for (v, o) in plane.iter_mut().enumerate() {
            *o = src[v * cpad + co];
        }
    });
    out
}

/// One tile: `n_vox` (≤ X_T) voxels × CO_T channels.
#[allow(clippy::too_many_arguments)]
fn tile(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    tap_off: &[usize],
    c_in: usize,
    n_vox: usize,
    vox_stride: usize,
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        // Bounds the kernel relies on: the last voxel's last tap reads within `x`; the last
        // stored voxel lies within `dst`.
        let last_read = tap_off.last().copied().unwrap_or(0) + (X_T - 1) * c_in + c_in;
        assert!(
            last_read <= x.len()
                && (n_vox - 1) * vox_stride + CO_T <= dst.len()
                && w.len() >= tap_off.len() * c_in * CO_T
        );
        // SAFETY: AVX-512F was detected by the caller (`direct::applies`); the reads and writes
        // stay within the bounds asserted above.
        unsafe { avx512::tile(x, w, bias, tap_off, c_in, n_vox, vox_stride, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, bias, tap_off, c_in, n_vox, vox_stride, dst);
        unreachable!("the channels-last kernel requires x86_64 AVX-512");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{CO_T, X_T};

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        tap_off: &[usize],
        c_in: usize,
        n_vox: usize,
        vox_stride: usize,
        dst: &mut [f32],
    ) {
        // SAFETY: bounds checked by the caller; see `super::tile`.
        unsafe {
            let b0 = _mm512_loadu_ps(bias.as_ptr());
            let b1 = _mm512_loadu_ps(bias.as_ptr().add(16));
            let mut acc0 = [b0; X_T];
            let mut acc1 = [b1; X_T];
            let xp = x.as_ptr();
            let mut wp = w.as_ptr();
            for &off in tap_off {
                let xt = xp.add(off);
                for ci in 0..c_in {
                    let w0 = _mm512_loadu_ps(wp);
                    let w1 = _mm512_loadu_ps(wp.add(16));
                    wp = wp.add(CO_T);
                    for v in 0..X_T {
                        let xv = _mm512_set1_ps(*xt.add(v * c_in + ci));
                        acc0[v] = _mm512_fmadd_ps(xv, w0, acc0[v]);
                        acc1[v] = _mm512_fmadd_ps(xv, w1, acc1[v]);
                    }
                }
            }
            let d = dst.as_mut_ptr();
            for v in 0..n_vox {
                _mm512_storeu_ps(d.add(v * vox_stride), acc0[v]);
                _mm512_storeu_ps(d.add(v * vox_stride + 16), acc1[v]);
            }
        }
    }
}
