//! Direct convolution for stride 1 in f32 with AVX-512: no im2col, input and output in NCDHW.
//!
//! The input is copied once into a zero-padded buffer, so every tap of the kernel is a plain
//! shifted load. The micro-kernel keeps a tile of [`CO_BLK`] output channels × [`X_VECS`]·16
//! consecutive voxels along W in 24 registers; for each input channel and tap it loads three
//! input vectors and broadcasts eight packed weights (24 FMAs per 11 loads). Work is split over
//! (output-channel block, output depth slice) pairs across threads; each task writes its own part
//! of the output.
//!
//! Applies to f32, stride 1, odd kernels larger than 1×1×1, on CPUs with AVX-512F;
//! [`super::select`] decides when (layers with few channels: with ≥ 32 input and output
//! channels, or volumes narrower than 16 voxels along W, the channels-last kernel of
//! [`super::direct_channels_last`] runs instead).

use rayon::prelude::*;

use super::cpu::Avx512;
use super::{ConvGeom, for_each_weight};

/// Output channels per micro-kernel tile.
const CO_BLK: usize = 8;
/// 16-float vectors per micro-kernel tile along W.
const X_VECS: usize = 3;
/// Voxels along W per tile.
const X_TILE: usize = 16 * X_VECS;

/// Forward convolution (stride 1, odd kernel) of `x` with `w` and the optional bias.
pub(crate) fn forward(cpu: Avx512, x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let packed = pack_weights(w, g.c_out, g.c_in, g.taps(), false);
    run(cpu, x, &packed, b, g)
}

/// Stride-1 input gradient: a convolution of the output gradient with the spatially flipped,
/// channel-transposed kernel (same padding for odd kernels).
pub(crate) fn backward_input(cpu: Avx512, w: &[f32], gout: &[f32], g: &ConvGeom) -> Vec<f32> {
    let flipped = ConvGeom { c_in: g.c_out, c_out: g.c_in, ..*g };
    let packed = pack_weights(w, g.c_out, g.c_in, g.taps(), true);
    run(cpu, gout, &packed, None, &flipped)
}

/// Pack `w` (`c_out × c_in × taps`) as `[co_block][ci][tap][CO_BLK]`, zero-filled past `c_out`.
/// With `transpose_flip`, pack the adjoint kernel instead: output channel ↔ input channel and
/// tap `t` ↔ `taps − 1 − t`.
fn pack_weights(w: &[f32], c_out: usize, c_in: usize, taps: usize, transpose_flip: bool) -> Vec<f32> {
    let (n_out, n_in) = if transpose_flip { (c_in, c_out) } else { (c_out, c_in) };
    let mut p = vec![0.0f32; n_out.div_ceil(CO_BLK) * n_in * taps * CO_BLK];
    for_each_weight(w, c_out, c_in, taps, transpose_flip, |o, i, t, v| {
        p[(((o / CO_BLK) * n_in + i) * taps + t) * CO_BLK + o % CO_BLK] = v;
    });
    p
}

/// The padded input: `batch × c × Dp × Hp × Wp`, with slack at the end for full-vector reads.
struct Padded {
    data: Vec<f32>,
    dims: [usize; 3],
}

fn pad_input(x: &[f32], g: &ConvGeom) -> Padded {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let (dp, hp, wp) = (d + 2 * pd, h + 2 * ph, w + 2 * pw);
    let plane = dp * hp * wp;
    let mut data = vec![0.0f32; g.batch * g.c_in * plane + X_TILE + 16];
    data[..g.batch * g.c_in * plane].par_chunks_mut(plane).zip(x.par_chunks(d * h * w)).for_each(
        |(dst, src)| {
            for z in 0..d {
                for y in 0..h {
                    let s = &src[(z * h + y) * w..][..w];
                    dst[((z + pd) * hp + y + ph) * wp + pw..][..w].copy_from_slice(s);
                }
            }
        },
    );
    Padded { data, dims: [dp, hp, wp] }
}

fn run(cpu: Avx512, x: &[f32], packed: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let padded = pad_input(x, g);
    let [od, oh, ow] = g.output();
    let out_plane = od * oh * ow;
    let mut out = vec![0.0f32; g.batch * g.c_out * out_plane];
    let blocks = g.c_out.div_ceil(CO_BLK);
    let slice_len = oh * ow;
    // Tasks: (batch, co block, output depth slice). Each writes CO_BLK planes' slice z.
    let tasks: Vec<(usize, usize, usize)> =
        (0..g.batch).flat_map(|n| (0..blocks).flat_map(move |cb| (0..od).map(move |z| (n, cb, z)))).collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(n, cb, z)| {
        let co0 = cb * CO_BLK;
        let nco = CO_BLK.min(g.c_out - co0);
        let mut bias_blk = [0.0f32; CO_BLK];
        if let Some(b) = bias {
            bias_blk[..nco].copy_from_slice(&b[co0..co0 + nco]);
        }
        // Output slice z of channel co0 + c starts at this offset; channels are `od · slice_len`
        // apart. Distinct tasks write distinct (n, channel, z) slices.
        let first = ((n * g.c_out + co0) * od + z) * slice_len;
        let dst = Dst { ptr: out_ptr, first, channel_stride: od * slice_len, channels: nco };
        let task = Task { p: &padded, packed, cb, n, z, g, bias: &bias_blk, dst };
        slice_kernel(cpu, &task);
    });
    out
}

/// One task of [`run`]: output slice `z` of batch item `n` for output-channel block `cb`, from
/// the padded input `p` and the packed weights, with the block's bias, into `dst`.
struct Task<'a> {
    p: &'a Padded,
    packed: &'a [f32],
    cb: usize,
    n: usize,
    z: usize,
    g: &'a ConvGeom,
    bias: &'a [f32; CO_BLK],
    dst: Dst,
}

/// Where a task writes: `channels` output slices of `Ho × Wo`, `channel_stride` apart.
#[derive(Clone, Copy)]
struct Dst {
    ptr: SendPtr,
    first: usize,
    channel_stride: usize,
    channels: usize,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint ranges from parallel tasks (see `run`).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Compute one [`Task`].
fn slice_kernel(cpu: Avx512, task: &Task<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        let _proof: Avx512 = cpu;
        // SAFETY: `cpu` proves AVX-512F (an `Avx512` exists only where it was detected); the
        // task's `dst` addresses output slices owned by this task alone.
        unsafe { avx512::slice(task) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, task);
        unreachable!("direct path requires x86_64 AVX-512");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{CO_BLK, Task, X_TILE, X_VECS};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn slice(task: &Task<'_>) {
        let Task { p, packed, cb, n, z, g, bias, dst } = *task;
        // SAFETY: every pointer below stays inside `p.data` (padded input plus slack for the
        // last full-vector reads), `packed` or the output slices of `dst`.
        unsafe {
            let [_, oh, ow] = g.output();
            let [dp, hp, wp] = p.dims;
            let [kd, kh, kw] = g.kernel;
            let taps = kd * kh * kw;
            let plane = dp * hp * wp;
            let w_blk = &packed[cb * g.c_in * taps * CO_BLK..(cb + 1) * g.c_in * taps * CO_BLK];
            let xbase = p.data.as_ptr().add(n * g.c_in * plane);
            // Offsets of every tap relative to the output voxel's top-left-front input voxel.
            let mut tap_off = Vec::with_capacity(taps);
            for a in 0..kd {
                for b in 0..kh {
                    for c in 0..kw {
                        tap_off.push((a * hp + b) * wp + c);
                    }
                }
            }
            let bias_v: [__m512; CO_BLK] = std::array::from_fn(|c| _mm512_set1_ps(bias[c]));
            for y in 0..oh {
                let mut x0 = 0;
                while x0 < ow {
                    let valid = (ow - x0).min(X_TILE);
                    let mut acc = [[_mm512_setzero_ps(); X_VECS]; CO_BLK];
                    for (c, row) in acc.iter_mut().enumerate() {
                        for v in row.iter_mut() {
                            *v = bias_v[c];
                        }
                    }
                    let row_base = (z * hp + y) * wp + x0;
                    for ci in 0..g.c_in {
                        let xc = xbase.add(ci * plane + row_base);
                        let wc = w_blk.as_ptr().add(ci * taps * CO_BLK);
                        for (t, &off) in tap_off.iter().enumerate() {
                            let src = xc.add(off);
                            let xv: [__m512; X_VECS] =
                                std::array::from_fn(|v| _mm512_loadu_ps(src.add(16 * v)));
                            let wt = wc.add(t * CO_BLK);
                            for (c, row) in acc.iter_mut().enumerate() {
                                let wv = _mm512_set1_ps(*wt.add(c));
                                for v in 0..X_VECS {
                                    row[v] = _mm512_fmadd_ps(wv, xv[v], row[v]);
                                }
                            }
                        }
                    }
                    for (c, row) in acc.iter().enumerate().take(dst.channels) {
                        let out = dst.ptr.get().add(dst.first + c * dst.channel_stride + y * ow + x0);
                        for (v, val) in row.iter().enumerate() {
                            let lo = 16 * v;
                            if lo >= valid {
                                break;
                            }
                            let lanes = (valid - lo).min(16);
                            let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
                            _mm512_mask_storeu_ps(out.add(lo), mask, *val);
                        }
                    }
                    x0 += X_TILE;
                }
            }
        }
    }
}
