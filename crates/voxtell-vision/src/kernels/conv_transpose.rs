//! Transposed convolution with kernel == stride (`nn.ConvTranspose3d` of the official decoder's
//! `transpconvs`) and its backward pass: a GEMM per kernel tap followed by a pixel shuffle.

use rayon::prelude::*;

use super::{Elem, Mat, matmul, parallelism};

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
                        matmul(
                            c_out,
                            vox,
                            c_in,
                            y.as_mut_ptr().add(cc * c_out * vox),
                            vox,
                            false,
                            Mat { ptr: w.as_ptr().add(t), cs: (c_out * taps) as isize, rs: taps as isize },
                            Mat { ptr: xb.as_ptr(), cs: 1, rs: vox as isize },
                            parallelism(c_out, vox, c_in),
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
            matmul(
                c_in,
                vox,
                rows,
                gxb.as_mut_ptr(),
                vox,
                false,
                Mat { ptr: w.as_ptr(), cs: 1, rs: rows as isize },
                Mat { ptr: gy.as_ptr(), cs: 1, rs: vox as isize },
                parallelism(c_in, vox, rows),
            );
            // gw[in, (o,t)] += Σ_v x[in, v] · gy[(o,t), v]: rhs is gy read transposed.
            matmul(
                c_in,
                rows,
                vox,
                gw.as_mut_ptr(),
                rows,
                true,
                Mat { ptr: xb.as_ptr(), cs: 1, rs: vox as isize },
                Mat { ptr: gy.as_ptr(), cs: vox as isize, rs: 1 },
                parallelism(c_in, rows, vox),
            );
        }
    }
    (gx, gw)
}
