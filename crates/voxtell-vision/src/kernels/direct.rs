//! Direct convolution for stride 1 in f32 with AVX-512: no im2col, input and output in NCDHW.
//!
//! The input is copied once into a zero-padded buffer, so every tap of the kernel is a plain
//! shifted load. The micro-kernel keeps a tile of [`CO_BLK`] output channels × [`X_VECS`]·16
//! consecutive voxels along W in 24 registers; for each input channel and tap it loads three
//! input vectors and broadcasts eight packed weights (24 FMAs per 11 loads). Work is split over
//! (output-channel block, output depth slice) pairs across threads; each task writes its own part
//! of the output.
//!
//! Applies to f32, stride 1, odd kernels, on CPUs with AVX-512F; [`forward`] returns `None`
//! otherwise and the caller falls back to the GEMM path. Layers with ≥ 32 input and output
//! channels, and volumes narrower than 16 voxels along W, go to the channels-last kernel of
//! [`super::direct_cl`] instead (`VOXTELL_CONV_CL=0|1` forces the choice, for benchmarking);
//! so do strided layers with ≥ 32 input and output channels.

use std::any::TypeId;

use rayon::prelude::*;

use super::{ConvGeom, Elem, direct_cl, for_each_weight};

/// Output channels per micro-kernel tile.
const CO_BLK: usize = 8;
/// 16-float vectors per micro-kernel tile along W.
const X_VECS: usize = 3;
/// Voxels along W per tile.
const X_TILE: usize = 16 * X_VECS;

/// Whether a direct kernel handles this geometry on this CPU for element type `T`.
pub(crate) fn applies<T: Elem>(g: &ConvGeom) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && g.stride == [1, 1, 1] && direct_kernel(g)
}

/// What every direct kernel needs whatever the stride: odd kernel sizes, larger than 1×1×1,
/// and AVX-512F.
fn direct_kernel(g: &ConvGeom) -> bool {
    g.kernel.iter().all(|k| k % 2 == 1) && g.kernel != [1, 1, 1] && avx512()
}

/// Which of the two direct kernels to use: the channels-last one when both channel counts fill
/// its 32-channel blocks or the volume is too narrow to fill 16-lane vectors along W. (32→32
/// at 192³: 239 GFLOP/s channels-last against 113 W-vectorised, whose working set outgrows the
/// caches; at 96³ 238 against 215; `cargo bench -p voxtell --bench ops`.)
fn channels_last(g: &ConvGeom) -> bool {
    g.input[2] < 16 || std::env::var_os("VOXTELL_CONV_CL").map_or(g.c_in >= 32 && g.c_out >= 32, |v| v == "1")
}

/// Whether the channels-last kernel runs this strided forward convolution: f32, odd kernels
/// larger than 1×1×1, AVX-512F, ≥ 32 input and output channels and output rows of ≥ 8 voxels
/// (`VOXTELL_CONV_CL=0|1` forces the choice). Stride 2 (`cargo bench -p voxtell --bench ops --
/// _s2/`): 32→64 at 192³ 107 GFLOP/s on the GEMM path, 256 on this one; 256→320 at 24³ 156
/// and 262; but 320→320 at 12³ (rows of 6, under half a tile, and 1.1 MB of weights per
/// 32-channel block streamed for every tile) 194 and 68.
fn strided_channels_last<T: Elem>(g: &ConvGeom) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
        && g.stride != [1, 1, 1]
        && direct_kernel(g)
        && std::env::var_os("VOXTELL_CONV_CL")
            .map_or(g.c_in >= 32 && g.c_out >= 32 && g.output()[2] >= 8, |v| v == "1")
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn as_f32<T: 'static>(s: &[T]) -> &[f32] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>());
    // SAFETY: T is f32 (checked above); same layout, same length.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) }
}

fn into_t<T: 'static>(v: Vec<f32>) -> Vec<T> {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>());
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: T is f32 (checked above): the allocation, length and capacity are reused as is.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// Forward convolution on a direct kernel (stride 1, or strided on the channels-last kernel),
/// or `None` when none applies.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, g: &ConvGeom) -> Option<Vec<T>> {
    let strided = strided_channels_last::<T>(g);
    if !applies::<T>(g) && !strided {
        return None;
    }
    if strided || channels_last(g) {
        return Some(into_t(direct_cl::run(
            direct_cl::Input::Volume(as_f32(x)),
            as_f32(w),
            b.map(as_f32),
            g,
            g.c_out,
            g.c_in,
            false,
        )));
    }
    let packed = pack_weights(as_f32(w), g.c_out, g.c_in, g.taps(), false);
    Some(into_t(run(as_f32(x), &packed, b.map(as_f32), g)))
}

/// Forward convolution with bf16 products and f32 sums ([`direct_cl::run_bf16`]), or `None`
/// where it does not apply: not f32, not an odd kernel larger than 1×1×1 with stride 1 or on
/// the strided channels-last path, fewer than 8 input channels (nothing to gain), or no
/// AVX-512 BF16.
pub(crate) fn forward_bf16<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, g: &ConvGeom) -> Option<Vec<T>> {
    if !(applies::<T>(g) || strided_channels_last::<T>(g)) || g.c_in < 8 || !direct_cl::bf16_available() {
        return None;
    }
    Some(into_t(direct_cl::run_bf16(direct_cl::Input::Volume(as_f32(x)), as_f32(w), b.map(as_f32), g)))
}

/// Stride-1 input gradient: a convolution of the output gradient with the spatially flipped,
/// channel-transposed kernel (same padding for odd kernels), or `None` when this path does not
/// apply.
pub(crate) fn backward_input<T: Elem>(w: &[T], gout: &[T], g: &ConvGeom) -> Option<Vec<T>> {
    if !applies::<T>(g) {
        return None;
    }
    let flipped = ConvGeom { c_in: g.c_out, c_out: g.c_in, ..*g };
    if channels_last(&flipped) {
        return Some(into_t(direct_cl::run(
            direct_cl::Input::Volume(as_f32(gout)),
            as_f32(w),
            None,
            &flipped,
            g.c_out,
            g.c_in,
            true,
        )));
    }
    let packed = pack_weights(as_f32(w), g.c_out, g.c_in, g.taps(), true);
    Some(into_t(run(as_f32(gout), &packed, None, &flipped)))
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

fn run(x: &[f32], packed: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
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
        slice_kernel(&padded, packed, cb, n, z, g, &bias_blk, dst);
    });
    out
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

/// Compute output slice `z` of batch item `n` for channel block `cb` into `dst`.
#[allow(clippy::too_many_arguments)]
fn slice_kernel(
    p: &Padded,
    packed: &[f32],
    cb: usize,
    n: usize,
    z: usize,
    g: &ConvGeom,
    bias: &[f32; CO_BLK],
    dst: Dst,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` checked AVX-512F support before any call reaches this point; `dst`
    // addresses output slices owned by this task alone.
    unsafe {
        avx512::slice(p, packed, cb, n, z, g, bias, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, packed, cb, n, z, g, bias, dst);
        unreachable!("direct path requires x86_64 AVX-512");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{CO_BLK, ConvGeom, Dst, Padded, X_TILE, X_VECS};

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn slice(
        p: &Padded,
        packed: &[f32],
        cb: usize,
        n: usize,
        z: usize,
        g: &ConvGeom,
        bias: &[f32; CO_BLK],
        dst: Dst,
    ) {
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
