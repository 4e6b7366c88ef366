//! Direct convolution with AVX-512 on channels-last windows of the input, in f32 or with bf16
//! products (AVX-512 BF16), for layers with 32 or more channels; any stride.
//!
//! Work is split into tasks of a few output depth slices. Each task copies the input slabs it
//! reads into a zero-padded channels-last window (`slabs × Hp × Wp × C`, kept per thread between
//! calls), so every tap is a plain shifted read. The micro-kernel holds [`X_T`] consecutive
//! output voxels along W × 32 output channels in 28 registers; for each tap and input channel it
//! loads two 16-channel weight vectors and broadcasts one input value per voxel (28 FMAs per 16
//! loads) — in bf16 one 32-bit pair of input channels per voxel and `vdpbf16ps`, two products
//! per lane. A stride only changes which window voxels a tile reads (every `s`-th along W,
//! every `s`-th row and slab). Each finished tile goes straight into the NCDHW output, so no
//! padded copy of the whole input and no channels-last output exist. The input is a volume, or
//! the output of a transposed convolution whose rows are computed as the windows need them
//! ([`Input::Upsampled`]: the decoder's upsampling never stored whole).

use rayon::prelude::*;

use super::cpu::{Avx512, Avx512Bf16};
use super::{ConvGeom, for_each_weight};

/// Output channels per tile (two 16-float vectors).
pub(crate) const CO_T: usize = 32;
/// Output voxels along W per tile.
const X_T: usize = 14;

/// One tile's result, voxel-major: `[voxel][CO_T]`.
type TileBuf = [f32; X_T * CO_T];

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

/// Convolution of `x` with `w` (forward, or, when `transpose_flip`, the input gradient of a
/// stride-1 convolution, with `g` describing that gradient convolution's own input and output).
/// `cpu` proves the CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    cpu: Avx512,
    x: Input<'_>,
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    w_c_out: usize,
    w_c_in: usize,
    transpose_flip: bool,
) -> Vec<f32> {
    let packed = pack(w, w_c_out, w_c_in, g.taps(), transpose_flip);
    let c = g.c_in;
    drive(
        x,
        bias,
        g,
        c,
        |channel_row: ChannelRow<'_>, row: &mut [f32]| {
            let blocks = c / 16;
            for b in 0..blocks {
                let rows = std::array::from_fn(|k| channel_row.get(16 * b + k));
                interleave16(rows, &mut row[16 * b..], c);
            }
            for ci in 16 * blocks..c {
                for (xx, &v) in channel_row.get(ci).iter().enumerate() {
                    row[xx * c + ci] = v;
                }
            }
        },
        |window: &[f32], cb: usize, tap_off: &[usize], vstride: usize, bias: &[f32], dst: &mut TileBuf| {
            let block = &packed[cb * tap_off.len() * c * CO_T..(cb + 1) * tap_off.len() * c * CO_T];
            tile(cpu, window, block, bias, tap_off, vstride, c, dst);
        },
    )
}

/// Where a convolution's input comes from.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    /// An NCDHW volume of the convolution's input size.
    Volume(&'a [f32]),
    /// The output of a transposed convolution, computed row by row as the windows need it.
    Upsampled(Upsample<'a>),
}

/// A transposed convolution with kernel == stride of an NCDHW volume (the upsampling of a U-Net
/// decoder stage), evaluated one output row at a time.
#[derive(Clone, Copy)]
pub(crate) struct Upsample<'a> {
    /// `batch × c_in × D × H × W`.
    pub x: &'a [f32],
    /// `c_in × c_out × s0 × s1 × s2` (PyTorch's layout).
    pub weight: &'a [f32],
    /// `c_out`.
    pub bias: Option<&'a [f32]>,
    pub c_in: usize,
    pub c_out: usize,
    /// (D, H, W) before upsampling.
    pub input: [usize; 3],
    pub stride: [usize; 3],
}

impl Upsample<'_> {
    /// Row (n, z, y) of the upsampled volume, every channel: `out[o · W·s2 + x]`. Per tap along
    /// W, one small GEMM (`c_out × c_in` weights by `c_in × W` input row) written with stride
    /// `s2` into its voxels; the bias added last.
    fn row(&self, n: usize, z: usize, y: usize, out: &mut [f32]) {
        let [d, h, w] = self.input;
        let [s0, s1, s2] = self.stride;
        let (taps, plane, wo) = (s0 * s1 * s2, d * h * w, w * s2);
        let start = n * self.c_in * plane + ((z / s0) * h + y / s1) * w;
        assert!(z < d * s0 && y < h * s1 && w > 0);
        assert!(self.x.len() >= (n + 1) * self.c_in * plane);
        assert!(out.len() >= self.c_out * wo && self.weight.len() >= self.c_in * self.c_out * taps);
        for cc in 0..s2 {
            let t = ((z % s0) * s1 + y % s1) * s2 + cc;
            // SAFETY: dst (o, x) is out[o·wo + x·s2 + cc] for o < c_out, x < w, inside `out`;
            // lhs (o, i) is weight[(i·c_out + o)·taps + t] and rhs (i, x) is
            // self.x[start + i·plane + x], inside their slices (asserted above).
            unsafe {
                gemm::gemm(
                    self.c_out,
                    w,
                    self.c_in,
                    out.as_mut_ptr().add(cc),
                    s2 as isize,
                    wo as isize,
                    false,
                    self.weight.as_ptr().add(t),
                    (self.c_out * taps) as isize,
                    taps as isize,
                    self.x.as_ptr().add(start),
                    1,
                    plane as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        if let Some(b) = self.bias {
            for (o, r) in out.chunks_mut(wo).take(self.c_out).enumerate() {
                r.iter_mut().for_each(|v| *v += b[o]);
            }
        }
    }
}

/// One input row (fixed batch, depth and height) across the channels of an NCDHW volume.
#[derive(Clone, Copy)]
struct ChannelRow<'a> {
    x: &'a [f32],
    start: usize,
    plane: usize,
    len: usize,
}

impl<'a> ChannelRow<'a> {
    /// The row of channel `c`.
    fn get(&self, c: usize) -> &'a [f32] {
        &self.x[c * self.plane + self.start..][..self.len]
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks of `drive` write disjoint elements (each its own output depth slices) and
// the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer to element `i` (a method, so that closures capture the wrapper, not the raw
    /// pointer field).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Output depth slices per task at stride 1 (fewer when the volume is shallow), so that a
/// task's channels-last window of `slices + kd − 1` padded input slabs is converted about once;
/// at depth stride `s`, `(Z_CHUNK − 1) / s + 1` slices (a window of about as many slabs).
const Z_CHUNK: usize = 8;

thread_local! {
    /// Each worker thread's channels-last input window, kept between convolutions so that its
    /// pages are touched once.
    static WINDOW_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static WINDOW_U32: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's upsampled rows (every channel of one row) for [`Input::Upsampled`].
    static UPSAMPLED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's bf16 pair rows before they are interleaved into the window.
    static CONVERTED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A 32-bit element the window rows are made of (f32 channels or bf16 pairs).
trait Lane32: Copy {}
impl Lane32 for f32 {}
impl Lane32 for u32 {}

/// Interleave 16 rows of equal length `n` into a channels-last row: `dst[x · per_vox + k] =
/// rows[k][x]` for `k < 16`, `x < n` (`per_vox ≥ 16`). Blocks of 16 voxels are transposed in
/// registers with AVX-512 (the channels-last kernel only runs where the CPU has it), the last
/// `n mod 16` voxels one value at a time (32→32 at 192³: 1.16 → 1.12 s against writing every
/// value on its own; building windows is mostly reading the input's channel rows).
fn interleave16<T: Lane32>(rows: [&[T]; 16], dst: &mut [T], per_vox: usize) {
    let n = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == n) && per_vox >= 16);
    assert!(n == 0 || dst.len() >= (n - 1) * per_vox + 16);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        done = n - n % 16;
        // SAFETY: AVX-512F is present; T is 32 bits wide (f32 or u32, moved bit for bit); the
        // reads stay below `done ≤ n` in every row and the writes below
        // `(done − 1) · per_vox + 16 ≤ dst.len()` (asserted above).
        unsafe {
            avx512::interleave16(
                &rows.map(|r| r.as_ptr().cast::<f32>()),
                dst.as_mut_ptr().cast(),
                per_vox,
                done,
            )
        };
    }
    for x in done..n {
        for (k, r) in rows.iter().enumerate() {
            dst[x * per_vox + k] = r[x];
        }
    }
}

/// A window element: f32 channels, or bf16 pairs of channels in a `u32`.
trait WindowElem: Copy + Default + Send + Sync + 'static {
    fn with_window<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

/// The first `len` elements of a thread's window buffer, grown when too short.
fn with_buffer<T: Copy + Default, R>(
    buffer: &std::cell::RefCell<Vec<T>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut w = buffer.borrow_mut();
    if w.len() < len {
        w.resize(len, T::default());
    }
    f(&mut w[..len])
}

impl WindowElem for f32 {
    fn with_window<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        WINDOW_F32.with(|w| with_buffer(w, len, f))
    }
}

impl WindowElem for u32 {
    fn with_window<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        WINDOW_U32.with(|w| with_buffer(w, len, f))
    }
}

/// The channels-last driver shared by the f32 and the bf16 kernel. Tasks take (batch, chunk of
/// output depth slices); each builds a zero-padded channels-last window of the input slabs its
/// slices read (`per_vox` elements per voxel, one row at a time by
/// `fill_row(channel_rows, row)`), runs `tile(window, co_block, tap_offsets, voxel_stride, bias,
/// buffer)` over its outputs (a full tile of [`X_T`] voxels, `voxel_stride` window elements
/// apart; past the row's end they are discarded) and writes each tile straight into the NCDHW
/// output. No padded copy of the whole input and no channels-last copy of the output exist at
/// any time.
fn drive<E: WindowElem>(
    x: Input<'_>,
    bias: Option<&[f32]>,
    g: &ConvGeom,
    per_vox: usize,
    fill_row: impl Fn(ChannelRow<'_>, &mut [E]) + Sync,
    tile: impl Fn(&[E], usize, &[usize], usize, &[f32], &mut TileBuf) + Sync,
) -> Vec<f32> {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let [od, oh, ow] = g.output();
    let kd = g.kernel[0];
    let [sd, sh, sw] = g.stride;
    let taps = g.taps();
    let blocks = g.c_out.div_ceil(CO_T);
    let mut bias_p = vec![0.0f32; blocks * CO_T];
    if let Some(b) = bias {
        bias_p[..g.c_out].copy_from_slice(b);
    }
    let mut tap_off = Vec::with_capacity(taps);
    for a in 0..kd {
        for b in 0..g.kernel[1] {
            for c in 0..g.kernel[2] {
                tap_off.push(((a * hp + b) * wp + c) * per_vox);
            }
        }
    }
    let chunk = od.div_ceil(4 * super::threads()).clamp(1, (Z_CHUNK - 1) / sd + 1);
    let chunks = od.div_ceil(chunk);
    let slab = hp * wp * per_vox;
    let (plane_in, vox_out) = (d * h * w, od * oh * ow);
    let mut out = vec![0.0f32; g.batch * g.c_out * vox_out];
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..g.batch * chunks).into_par_iter().for_each(|task| {
        let (n, z0) = (task / chunks, (task % chunks) * chunk);
        let nz = (od - z0).min(chunk);
        let depth = sd * (nz - 1) + kd;
        // Past the last slab, the last tile of a row reads up to `sw · X_T` voxels on.
        E::with_window(depth * slab + (sw * X_T + 2 * pw + 2) * per_vox, |window| {
            // Padded input slabs sd·z0 .. sd·z0 + depth (padded coordinates): zero where
            // padding, converted rows elsewhere.
            for (s, slab_buf) in window[..depth * slab].chunks_mut(slab).enumerate() {
                let zp = sd * z0 + s;
                if zp < pd || zp >= pd + d {
                    slab_buf.fill(E::default());
                    continue;
                }
                let z = zp - pd;
                slab_buf[..ph * wp * per_vox].fill(E::default());
                slab_buf[(ph + h) * wp * per_vox..].fill(E::default());
                for y in 0..h {
                    let row = &mut slab_buf[(y + ph) * wp * per_vox..][..wp * per_vox];
                    row[..pw * per_vox].fill(E::default());
                    row[(pw + w) * per_vox..].fill(E::default());
                    let dst = &mut row[pw * per_vox..(pw + w) * per_vox];
                    match x {
                        Input::Volume(x) => {
                            let xb = &x[n * g.c_in * plane_in..(n + 1) * g.c_in * plane_in];
                            fill_row(
                                ChannelRow { x: xb, start: (z * h + y) * w, plane: plane_in, len: w },
                                dst,
                            );
                        }
                        Input::Upsampled(up) => UPSAMPLED.with(|buffer| {
                            with_buffer(buffer, g.c_in * w, |rows| {
                                up.row(n, z, y, rows);
                                fill_row(ChannelRow { x: rows, start: 0, plane: w, len: w }, dst);
                            })
                        }),
                    }
                }
            }
            window[depth * slab..].fill(E::default());
            let mut buf: TileBuf = [0.0; X_T * CO_T];
            for cb in 0..blocks {
                let co0 = cb * CO_T;
                let nco = (g.c_out - co0).min(CO_T);
                let bb = &bias_p[co0..co0 + CO_T];
                for zl in 0..nz {
                    for y in 0..oh {
                        let mut x0 = 0;
                        while x0 < ow {
                            let n_vox = (ow - x0).min(X_T);
                            let at = ((sd * zl * hp + sh * y) * wp + sw * x0) * per_vox;
                            tile(&window[at..], cb, &tap_off, sw * per_vox, bb, &mut buf);
                            let first = (n * g.c_out + co0) * vox_out + ((z0 + zl) * oh + y) * ow + x0;
                            for c in 0..nco {
                                // SAFETY: element (n, co0 + c, z0 + zl, y, x0 .. x0 + n_vox) lies
                                // in `out` and belongs to this task's depth slices alone.
                                let dst = unsafe {
                                    std::slice::from_raw_parts_mut(out_ptr.at(first + c * vox_out), n_vox)
                                };
                                for (v, o) in dst.iter_mut().enumerate() {
                                    *o = buf[v * CO_T + c];
                                }
                            }
                            x0 += X_T;
                        }
                    }
                }
            }
        });
    });
    out
}

/// One tile: [`X_T`] voxels `vstride` elements apart × [`CO_T`] channels into `dst`.
#[allow(clippy::too_many_arguments)]
fn tile(
    cpu: Avx512,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    tap_off: &[usize],
    vstride: usize,
    c_in: usize,
    dst: &mut TileBuf,
) {
    #[cfg(target_arch = "x86_64")]
    {
        // Bounds the kernel relies on: the last voxel's last tap reads within `x`; `dst` holds
        // the whole tile by its type.
        let last_read = tap_off.last().copied().unwrap_or(0) + (X_T - 1) * vstride + c_in;
        assert!(last_read <= x.len() && w.len() >= tap_off.len() * c_in * CO_T && bias.len() >= CO_T);
        let _proof: Avx512 = cpu;
        // SAFETY: `cpu` proves AVX-512F (an `Avx512` exists only where it was detected); the
        // reads and writes stay within the bounds asserted above.
        unsafe { avx512::tile(x, w, bias, tap_off, vstride, c_in, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, x, w, bias, tap_off, vstride, c_in, dst);
        unreachable!("the channels-last kernel requires x86_64 AVX-512");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{CO_T, TileBuf, X_T};

    /// [`super::interleave16`] for the first `n` voxels (`n` a multiple of 16): each block of
    /// 16 × 16 values is transposed in four stages; the stage for bit `b` swaps, in every pair
    /// of registers `i`, `i + b` (`i & b == 0`), the lanes with bit `b` set in register `i` with
    /// the lanes without it in register `i + b` — one bit of the row index exchanged with the
    /// same bit of the lane index.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn interleave16(rows: &[*const f32; 16], dst: *mut f32, per_vox: usize, n: usize) {
        let index = |b: usize, upper: bool| {
            let idx: [i32; 16] = std::array::from_fn(|x| {
                let v = match (upper, x & b == 0) {
                    (false, true) => x,
                    (false, false) => 16 + x - b,
                    (true, true) => x + b,
                    (true, false) => 16 + x,
                };
                v as i32
            });
            // SAFETY: reads 16 i32 from a local array.
            unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
        };
        let stages = [8usize, 4, 2, 1].map(|b| (b, index(b, false), index(b, true)));
        // SAFETY: the caller guarantees `n` readable values in every row and
        // `(n − 1) · per_vox + 16` writable values at `dst`.
        unsafe {
            for x0 in (0..n).step_by(16) {
                let mut r: [__m512; 16] = std::array::from_fn(|k| _mm512_loadu_ps(rows[k].add(x0)));
                for &(b, lo, hi) in &stages {
                    for i in (0..16).filter(|i| i & b == 0) {
                        let (a, c) = (r[i], r[i + b]);
                        r[i] = _mm512_permutex2var_ps(a, lo, c);
                        r[i + b] = _mm512_permutex2var_ps(a, hi, c);
                    }
                }
                for (x, v) in r.iter().enumerate() {
                    _mm512_storeu_ps(dst.add((x0 + x) * per_vox), *v);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        tap_off: &[usize],
        vstride: usize,
        c_in: usize,
        dst: &mut TileBuf,
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
                        let xv = _mm512_set1_ps(*xt.add(v * vstride + ci));
                        acc0[v] = _mm512_fmadd_ps(xv, w0, acc0[v]);
                        acc1[v] = _mm512_fmadd_ps(xv, w1, acc1[v]);
                    }
                }
            }
            let d = dst.as_mut_ptr();
            for v in 0..X_T {
                _mm512_storeu_ps(d.add(v * CO_T), acc0[v]);
                _mm512_storeu_ps(d.add(v * CO_T + 16), acc1[v]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 products, f32 accumulation (AVX-512 BF16)

/// Round to bf16 (nearest, ties to even; what `vcvtneps2bf16` does).
fn bf16_bits(v: f32) -> u32 {
    u32::from(half::bf16::from_f32(v).to_bits())
}

/// Two bf16 values in one 32-bit lane: `lo` in the low half (the even element of a
/// `vdpbf16ps` pair), `hi` in the high half.
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// Pack `w` (`c_out × c_in × taps`) as bf16 pairs of input channels:
/// `[co_block][tap][ci_pair][CO_T]`, each lane `(w[o, 2p], w[o, 2p + 1])`, zero-filled past
/// `c_out` and past an odd `c_in`.
fn pack_bf16(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> Vec<u32> {
    let pairs = c_in.div_ceil(2);
    let mut p = vec![0u32; c_out.div_ceil(CO_T) * taps * pairs * CO_T];
    for o in 0..c_out {
        for t in 0..taps {
            for q in 0..pairs {
                let at = |i: usize| if i < c_in { w[(o * c_in + i) * taps + t] } else { 0.0 };
                p[(((o / CO_T) * taps + t) * pairs + q) * CO_T + o % CO_T] = pair(at(2 * q), at(2 * q + 1));
            }
        }
    }
    p
}

/// `out[i] = pair(lo[i], hi[i])` (`hi` zero when `None`), 16 at a time with
/// `vcvtne2ps2bf16` where the CPU has it. The instruction flushes denormal inputs to zero, which
/// the scalar rounding does not; nothing else differs.
fn pairs_of_row(cpu: Avx512Bf16, lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    let n = lo.len();
    assert!(out.len() >= n && hi.is_none_or(|h| h.len() >= n));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        let _proof: Avx512Bf16 = cpu;
        done = n - n % 16;
        // SAFETY: `cpu` proves AVX-512F and AVX-512 BF16, AVX-512BW was detected just above;
        // every access is below `done` ≤ the lengths asserted above.
        unsafe { avx512bf16::pairs(lo, hi, out, done) };
    }
    for i in done..n {
        out[i] = pair(lo[i], hi.map_or(0.0, |h| h[i]));
    }
}

/// Forward convolution with inputs and weights rounded to bf16 and products summed in f32
/// (`vdpbf16ps`); the bias is added in f32. `cpu` proves the CPU has AVX-512 BF16.
pub(crate) fn run_bf16(
    cpu: Avx512Bf16,
    x: Input<'_>,
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
) -> Vec<f32> {
    let (c, pairs) = (g.c_in, g.c_in.div_ceil(2));
    let packed = pack_bf16(w, g.c_out, c, g.taps());
    drive(
        x,
        bias,
        g,
        pairs,
        |channel_row: ChannelRow<'_>, row: &mut [u32]| {
            let n = channel_row.len;
            // Up to 16 converted pair rows at a time, then interleaved into the window row.
            CONVERTED.with(|buffer| {
                with_buffer(buffer, 16 * n, |converted| {
                    for q0 in (0..pairs).step_by(16) {
                        let m = (pairs - q0).min(16);
                        for (k, out) in converted.chunks_mut(n).take(m).enumerate() {
                            let q = q0 + k;
                            let hi = (2 * q + 1 < c).then(|| channel_row.get(2 * q + 1));
                            pairs_of_row(cpu, channel_row.get(2 * q), hi, out);
                        }
                        if m == 16 {
                            let rows = std::array::from_fn(|k| &converted[k * n..(k + 1) * n]);
                            interleave16(rows, &mut row[q0..], pairs);
                        } else {
                            for (k, conv) in converted.chunks(n).take(m).enumerate() {
                                for (xx, &v) in conv.iter().enumerate() {
                                    row[xx * pairs + q0 + k] = v;
                                }
                            }
                        }
                    }
                })
            })
        },
        |window: &[u32], cb: usize, tap_off: &[usize], vstride: usize, bias: &[f32], dst: &mut TileBuf| {
            let block = &packed[cb * tap_off.len() * pairs * CO_T..(cb + 1) * tap_off.len() * pairs * CO_T];
            tile_bf16(cpu, window, block, bias, tap_off, vstride, pairs, dst);
        },
    )
}

/// One bf16 tile: [`X_T`] voxels `vstride` elements apart × [`CO_T`] channels into `dst`,
/// input channels in pairs.
#[allow(clippy::too_many_arguments)]
fn tile_bf16(
    cpu: Avx512Bf16,
    x: &[u32],
    w: &[u32],
    bias: &[f32],
    tap_off: &[usize],
    vstride: usize,
    pairs: usize,
    dst: &mut TileBuf,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let last_read = tap_off.last().copied().unwrap_or(0) + (X_T - 1) * vstride + pairs;
        assert!(last_read <= x.len() && w.len() >= tap_off.len() * pairs * CO_T && bias.len() >= CO_T);
        let _proof: Avx512Bf16 = cpu;
        // SAFETY: `cpu` proves AVX-512F and AVX-512 BF16 (an `Avx512Bf16` exists only where both
        // were detected); the reads and writes stay within the bounds asserted above.
        unsafe { avx512bf16::tile(x, w, bias, tap_off, vstride, pairs, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cpu, x, w, bias, tap_off, vstride, pairs, dst);
        unreachable!("the bf16 kernel requires x86_64 AVX-512 BF16");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use std::arch::x86_64::*;

    use super::{CO_T, TileBuf, X_T};

    /// `out[i] = bf16(lo[i]) | bf16(hi[i]) << 16` for `i < n` (`n` a multiple of 16).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pairs(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32], n: usize) {
        // 16-bit lane 2i takes converted element i (from `lo`), lane 2i + 1 element 16 + i
        // (from `hi`).
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
            18, 2, 17, 1, 16, 0,
        );
        let zero = _mm512_setzero_ps();
        // SAFETY: i + 16 ≤ n ≤ the slices' lengths (the caller's contract).
        unsafe {
            for i in (0..n).step_by(16) {
                let a = _mm512_loadu_ps(lo.as_ptr().add(i));
                let b = hi.map_or(zero, |h| _mm512_loadu_ps(h.as_ptr().add(i)));
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
                let r = _mm512_permutexvar_epi16(interleave, both);
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), r);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(
        x: &[u32],
        w: &[u32],
        bias: &[f32],
        tap_off: &[usize],
        vstride: usize,
        pairs: usize,
        dst: &mut TileBuf,
    ) {
        // SAFETY: bounds checked by the caller; see `super::tile_bf16`.
        unsafe {
            let b0 = _mm512_loadu_ps(bias.as_ptr());
            let b1 = _mm512_loadu_ps(bias.as_ptr().add(16));
            let mut acc0 = [b0; X_T];
            let mut acc1 = [b1; X_T];
            let xp = x.as_ptr();
            let mut wp = w.as_ptr();
            for &off in tap_off {
                let xt = xp.add(off);
                for q in 0..pairs {
                    let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.cast()));
                    let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(16).cast()));
                    wp = wp.add(CO_T);
                    for v in 0..X_T {
                        let xv: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(*xt.add(v * vstride + q) as i32));
                        acc0[v] = _mm512_dpbf16_ps(acc0[v], xv, w0);
                        acc1[v] = _mm512_dpbf16_ps(acc1[v], xv, w1);
                    }
                }
            }
            let d = dst.as_mut_ptr();
            for v in 0..X_T {
                _mm512_storeu_ps(d.add(v * CO_T), acc0[v]);
                _mm512_storeu_ps(d.add(v * CO_T + 16), acc1[v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interleave16;

    /// The register transposition gives the plain interleaving, for row lengths with and
    /// without a partial block and for voxels wider than 16 values, in both element types.
    #[test]
    fn interleave16_matches_the_plain_interleaving() {
        for n in [0usize, 1, 15, 16, 17, 33, 48] {
            for per_vox in [16usize, 20, 37] {
                let rows: Vec<Vec<u32>> = (0..16)
                    .map(|k| {
                        (0..n)
                            .map(|x| ((k * 1000 + x) as u32).wrapping_mul(2654435761) % 1_000_000_007)
                            .collect()
                    })
                    .collect();
                let len = if n == 0 { 0 } else { (n - 1) * per_vox + 16 };
                let mut ours = vec![u32::MAX; len + 3];
                interleave16(std::array::from_fn(|k| &rows[k][..]), &mut ours, per_vox);
                let mut expected = vec![u32::MAX; len + 3];
                for (k, r) in rows.iter().enumerate() {
                    for (x, &v) in r.iter().enumerate() {
                        expected[x * per_vox + k] = v;
                    }
                }
                assert_eq!(ours, expected, "n {n}, per_vox {per_vox}");
                let as_f32: Vec<Vec<f32>> =
                    rows.iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect();
                let mut ours = vec![-1.0f32; len];
                interleave16(std::array::from_fn(|k| &as_f32[k][..]), &mut ours, per_vox);
                let back: Vec<f32> =
                    expected[..len].iter().map(|&v| if v == u32::MAX { -1.0 } else { v as f32 }).collect();
                assert_eq!(ours, back, "f32: n {n}, per_vox {per_vox}");
            }
        }
    }
}
