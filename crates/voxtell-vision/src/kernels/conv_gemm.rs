//! The general convolution path: tiled im2col + GEMM, for any kernel size, stride and padding,
//! in f32 and f64, forward and both backward passes.
//!
//! The im2col matrix is never built for the whole volume: output rows (pairs `(od, oh)`) are
//! processed in tiles whose column matrix holds at most [`TILE_ELEMS`] elements, so the
//! workspace is bounded whatever the volume size.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{ConvGeom, Elem, Mat, matmul, parallelism};

/// Upper bound on the elements of one im2col tile (64 MiB in f32).
pub(crate) const TILE_ELEMS: usize = 16 << 20;

/// Output rows per tile so that `k × rows × ow` stays within [`TILE_ELEMS`].
fn rows_per_tile(g: &ConvGeom) -> usize {
    let [_, _, ow] = g.output();
    (TILE_ELEMS / (g.k() * ow).max(1)).max(1)
}

/// The output-row tiles `(r0, r1)` of one batch item (a row is a pair `(od, oh)`).
fn row_tiles(g: &ConvGeom) -> impl Iterator<Item = (usize, usize)> + use<> {
    let [od, oh, _] = g.output();
    let rows = od * oh;
    let tile = rows_per_tile(g);
    (0..rows).step_by(tile).map(move |r0| (r0, (r0 + tile).min(rows)))
}

/// The column buffer the tiles share; a pointwise convolution needs none.
fn col_buffer<T: Elem>(g: &ConvGeom) -> Vec<T> {
    if is_pointwise(g) {
        return Vec::new();
    }
    let [od, oh, ow] = g.output();
    vec![T::ZERO; g.k() * rows_per_tile(g).min(od * oh) * ow]
}

fn is_pointwise(g: &ConvGeom) -> bool {
    g.kernel == [1, 1, 1] && g.stride == [1, 1, 1] && g.padding == [0, 0, 0]
}

/// Run `f(r0, n, tile)` on each tile of output rows of one batch item `x` (`c_in × D × H × W`):
/// `tile` is the `k × n` column matrix (row-major) of the `n = rows · ow` output voxels from
/// output row `r0`, filled by [`im2col`] into `buffer` — or, for a pointwise convolution, the
/// input itself as one tile of every voxel, with no copy.
fn for_each_column_tile<T: Elem>(
    x: &[T],
    g: &ConvGeom,
    buffer: &mut [T],
    mut f: impl FnMut(usize, usize, &[T]),
) {
    if is_pointwise(g) {
        return f(0, g.out_voxels(), x);
    }
    let [_, _, ow] = g.output();
    for (r0, r1) in row_tiles(g) {
        let n = (r1 - r0) * ow;
        let cols = &mut buffer[..g.k() * n];
        im2col(x, g, r0, r1, cols);
        f(r0, n, cols);
    }
}

/// Fill `cols` (`k × n`, row-major, `n = (r1 − r0) · ow`) with the input patches of output rows
/// `r0..r1` of one batch item `x` (`c_in × D × H × W`).
fn im2col<T: Elem>(x: &[T], g: &ConvGeom, r0: usize, r1: usize, cols: &mut [T]) {
    let [d, h, w] = g.input;
    let [_, oh, ow] = g.output();
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let taps = g.taps();
    let n = (r1 - r0) * ow;
    cols.par_chunks_mut(n).enumerate().for_each(|(k, row)| {
        let ci = k / taps;
        let t = k % taps;
        let (a, b, c) = (t / (kh * kw), (t / kw) % kh, t % kw);
        debug_assert!(a < kd);
        let plane = &x[ci * d * h * w..(ci + 1) * d * h * w];
        for (ri, r) in (r0..r1).enumerate() {
            let (zo, yo) = (r / oh, r % oh);
            let zi = (zo * sd + a) as isize - pd as isize;
            let yi = (yo * sh + b) as isize - ph as isize;
            let dst = &mut row[ri * ow..(ri + 1) * ow];
            if zi < 0 || zi >= d as isize || yi < 0 || yi >= h as isize {
                dst.fill(T::ZERO);
                continue;
            }
            let src = &plane[(zi as usize * h + yi as usize) * w..][..w];
            if sw == 1 {
                // Shifted copy with zero borders: xi = xo + c − pw.
                let shift = c as isize - pw as isize;
                let lo = (-shift).clamp(0, ow as isize) as usize;
                let hi = (w as isize - shift).clamp(lo as isize, ow as isize) as usize;
                dst[..lo].fill(T::ZERO);
                dst[lo..hi]
                    .copy_from_slice(&src[(lo as isize + shift) as usize..(hi as isize + shift) as usize]);
                dst[hi..].fill(T::ZERO);
            } else {
                for (xo, v) in dst.iter_mut().enumerate() {
                    let xi = (xo * sw + c) as isize - pw as isize;
                    *v = if xi >= 0 && xi < w as isize { src[xi as usize] } else { T::ZERO };
                }
            }
        }
    });
}

/// Add the columns `cols` (`k × n`) of output rows `r0..r1` back onto their input positions of
/// one batch item `gx` (`c_in × D × H × W`): the adjoint of [`im2col`]. Channels are independent,
/// so they are processed in parallel without atomics.
fn col2im_add<T: Elem>(cols: &[T], g: &ConvGeom, r0: usize, r1: usize, gx: &mut [T]) {
    let [d, h, w] = g.input;
    let [_, oh, ow] = g.output();
    let [_, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let taps = g.taps();
    let n = (r1 - r0) * ow;
    gx.par_chunks_mut(d * h * w).enumerate().for_each(|(ci, plane)| {
        for t in 0..taps {
            let row = &cols[(ci * taps + t) * n..][..n];
            let (a, b, c) = (t / (kh * kw), (t / kw) % kh, t % kw);
            for (ri, r) in (r0..r1).enumerate() {
                let (zo, yo) = (r / oh, r % oh);
                let zi = (zo * sd + a) as isize - pd as isize;
                let yi = (yo * sh + b) as isize - ph as isize;
                if zi < 0 || zi >= d as isize || yi < 0 || yi >= h as isize {
                    continue;
                }
                let dst = &mut plane[(zi as usize * h + yi as usize) * w..][..w];
                let src = &row[ri * ow..(ri + 1) * ow];
                for (xo, &v) in src.iter().enumerate() {
                    let xi = (xo * sw + c) as isize - pw as isize;
                    if xi >= 0 && xi < w as isize {
                        dst[xi as usize] += v;
                    }
                }
            }
        }
    });
}

/// Forward convolution. `x`: `batch × c_in × D × H × W`; `w`: `c_out × c_in × kd × kh × kw`;
/// returns `batch × c_out × Do × Ho × Wo`.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeom) -> Vec<T> {
    let (in_vox, out_vox, k) = (g.in_voxels(), g.out_voxels(), g.k());
    let [_, _, ow] = g.output();
    let mut out = vec![T::ZERO; g.batch * g.c_out * out_vox];
    if let Some(b) = bias {
        out.par_chunks_mut(out_vox).enumerate().for_each(|(i, plane)| plane.fill(b[i % g.c_out]));
    }
    let mut cols = col_buffer::<T>(g);
    for bi in 0..g.batch {
        let xb = &x[bi * g.c_in * in_vox..(bi + 1) * g.c_in * in_vox];
        let ob = &mut out[bi * g.c_out * out_vox..(bi + 1) * g.c_out * out_vox];
        for_each_column_tile(xb, g, &mut cols, |r0, n, tile| {
            // SAFETY: dst addresses c_out rows of n elements at stride out_vox inside `ob`, from
            // output row r0; lhs is the c_out × k weight matrix, rhs the k × n column tile.
            unsafe {
                matmul(
                    g.c_out,
                    n,
                    k,
                    ob.as_mut_ptr().add(r0 * ow),
                    out_vox,
                    true,
                    Mat { ptr: w.as_ptr(), cs: 1, rs: k as isize },
                    Mat { ptr: tile.as_ptr(), cs: 1, rs: n as isize },
                    parallelism(g.c_out, n, k),
                );
            }
        });
    }
    out
}

/// Gradient with respect to the input: `Wᵀ · grad_out`, scattered back (col2im).
pub(crate) fn backward_input<T: Elem>(w: &[T], gout: &[T], g: &ConvGeom) -> Vec<T> {
    let (in_vox, out_vox, k) = (g.in_voxels(), g.out_voxels(), g.k());
    let [_, _, ow] = g.output();
    let mut gx = vec![T::ZERO; g.batch * g.c_in * in_vox];
    let mut cols = col_buffer::<T>(g);
    for bi in 0..g.batch {
        let gb = &gout[bi * g.c_out * out_vox..(bi + 1) * g.c_out * out_vox];
        let xb = &mut gx[bi * g.c_in * in_vox..(bi + 1) * g.c_in * in_vox];
        if is_pointwise(g) {
            // SAFETY: dst is the c_in × in_vox gradient of this batch item; lhs is Wᵀ read with
            // swapped strides; rhs the c_out × out_vox output gradient.
            unsafe {
                matmul(
                    g.c_in,
                    in_vox,
                    g.c_out,
                    xb.as_mut_ptr(),
                    in_vox,
                    false,
                    Mat { ptr: w.as_ptr(), cs: k as isize, rs: 1 },
                    Mat { ptr: gb.as_ptr(), cs: 1, rs: out_vox as isize },
                    parallelism(g.c_in, in_vox, g.c_out),
                );
            }
            continue;
        }
        for (r0, r1) in row_tiles(g) {
            let n = (r1 - r0) * ow;
            let cols = &mut cols[..k * n];
            // SAFETY: dst is the k × n column tile; lhs is Wᵀ (k × c_out) read with swapped
            // strides; rhs the c_out × n slice of the output gradient at stride out_vox.
            unsafe {
                matmul(
                    k,
                    n,
                    g.c_out,
                    cols.as_mut_ptr(),
                    n,
                    false,
                    Mat { ptr: w.as_ptr(), cs: k as isize, rs: 1 },
                    Mat { ptr: gb.as_ptr().add(r0 * ow), cs: 1, rs: out_vox as isize },
                    parallelism(k, n, g.c_out),
                );
            }
            col2im_add(cols, g, r0, r1, xb);
        }
    }
    gx
}

/// Whether [`backward_weight_shifted`] applies: stride 1, "same" output size, at most
/// [`SHIFTED_MAX_PAIRS`] channel pairs (wide layers have small volumes, where im2col is cheap
/// next to the GEMM) and padded copies of one batch item within [`TILE_ELEMS`] elements.
pub(crate) fn shifted_applies(g: &ConvGeom) -> bool {
    let padded: usize = (0..3).map(|a| g.input[a] + 2 * g.padding[a]).product();
    g.stride == [1, 1, 1]
        && g.output() == g.input
        && g.taps() > 1
        && g.c_in * g.c_out <= SHIFTED_MAX_PAIRS
        && (g.c_in + g.c_out) * padded <= TILE_ELEMS
}

/// Largest `c_in · c_out` for [`backward_weight_shifted`].
const SHIFTED_MAX_PAIRS: usize = 64 * 64;

/// The weight gradient of a stride-1 convolution without an im2col matrix: the input is
/// zero-padded to `(Dp, Hp, Wp)` and the output gradient is laid into a grid with the same
/// strides (zero outside the output), so that for every tap `(a, b, c)` the gradient is one GEMM
/// `gw[:, :, tap] += G · Xᵀ` of the output gradient with the padded input shifted by
/// `a·Hp·Wp + b·Wp + c`, both read contiguously. Taps run in parallel, each into its own
/// accumulator over the batch items in order, so the result does not depend on the thread
/// count. Same result as [`backward_weight`] up to the summation order.
pub(crate) fn backward_weight_shifted<T: Elem>(x: &[T], gout: &[T], g: &ConvGeom) -> Vec<T> {
    debug_assert!(shifted_applies(g));
    let [d, h, w] = g.input;
    let [_, kh, kw] = g.kernel;
    let [pd, ph, pw] = g.padding;
    let (dp, hp, wp) = (d + 2 * pd, h + 2 * ph, w + 2 * pw);
    let plane = dp * hp * wp;
    let taps = g.taps();
    let vox = d * h * w;
    let pairs = g.c_out * g.c_in;
    // Positions 0..len of the grid cover every output voxel (the last one is (d−1, h−1, w−1)).
    let len = ((d - 1) * hp + (h - 1)) * wp + w;
    let mut acc = vec![T::ZERO; taps * pairs];
    let mut xp = vec![T::ZERO; g.c_in * plane];
    let mut gp = vec![T::ZERO; g.c_out * plane];
    // Copy `src` planes into `dst` grids at (z, y, x) + offset; the rest stays zero.
    let place = |dst: &mut [T], src: &[T], offset: [usize; 3]| {
        dst.par_chunks_mut(plane).zip(src.par_chunks(vox)).for_each(|(dst, src)| {
            for z in 0..d {
                for y in 0..h {
                    let at = ((z + offset[0]) * hp + y + offset[1]) * wp + offset[2];
                    dst[at..at + w].copy_from_slice(&src[(z * h + y) * w..][..w]);
                }
            }
        });
    };
    for bi in 0..g.batch {
        place(&mut xp, &x[bi * g.c_in * vox..][..g.c_in * vox], [pd, ph, pw]);
        place(&mut gp, &gout[bi * g.c_out * vox..][..g.c_out * vox], [0, 0, 0]);
        acc.par_chunks_mut(pairs).enumerate().for_each(|(tap, dst)| {
            let (a, b, c) = (tap / (kh * kw), (tap / kw) % kh, tap % kw);
            let shift = (a * hp + b) * wp + c;
            debug_assert!(shift + len <= plane);
            // SAFETY: dst is this tap's c_out × c_in accumulator (row stride c_in); lhs the
            // c_out × len gradient grid (row stride plane); rhs the len × c_in shifted input
            // (element (q, ci) at ci·plane + shift + q); every read stays within its buffer.
            unsafe {
                matmul(
                    g.c_out,
                    g.c_in,
                    len,
                    dst.as_mut_ptr(),
                    g.c_in,
                    true,
                    Mat { ptr: gp.as_ptr(), cs: 1, rs: plane as isize },
                    Mat { ptr: xp.as_ptr().add(shift), cs: plane as isize, rs: 1 },
                    Parallelism::None,
                );
            }
        });
    }
    // (tap, co, ci) → (co, ci, tap).
    let mut gw = vec![T::ZERO; taps * pairs];
    for (tap, block) in acc.chunks(pairs).enumerate() {
        for (pair, &v) in block.iter().enumerate() {
            gw[pair * taps + tap] = v;
        }
    }
    gw
}

/// Gradients with respect to the weight (`c_out × c_in × taps`) and, when asked, the bias.
pub(crate) fn backward_weight<T: Elem>(
    x: &[T],
    gout: &[T],
    g: &ConvGeom,
    with_bias: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let (in_vox, out_vox, k) = (g.in_voxels(), g.out_voxels(), g.k());
    let [_, _, ow] = g.output();
    let mut gw = vec![T::ZERO; g.c_out * k];
    let mut cols = col_buffer::<T>(g);
    for bi in 0..g.batch {
        let xb = &x[bi * g.c_in * in_vox..(bi + 1) * g.c_in * in_vox];
        let gb = &gout[bi * g.c_out * out_vox..(bi + 1) * g.c_out * out_vox];
        for_each_column_tile(xb, g, &mut cols, |r0, n, tile| {
            // SAFETY: dst is the c_out × k weight gradient; lhs the c_out × n output-gradient
            // tile at stride out_vox from output row r0; rhs the column tile read transposed
            // (n × k).
            unsafe {
                matmul(
                    g.c_out,
                    k,
                    n,
                    gw.as_mut_ptr(),
                    k,
                    true,
                    Mat { ptr: gb.as_ptr().add(r0 * ow), cs: 1, rs: out_vox as isize },
                    Mat { ptr: tile.as_ptr(), cs: n as isize, rs: 1 },
                    parallelism(g.c_out, k, n),
                );
            }
        });
    }
    let gbias = with_bias.then(|| {
        (0..g.c_out)
            .into_par_iter()
            .map(|co| {
                let mut s = T::ZERO;
                for bi in 0..g.batch {
                    let plane = &gout[(bi * g.c_out + co) * out_vox..][..out_vox];
                    s += plane.iter().fold(T::ZERO, |acc, &v| acc + v);
                }
                s
            })
            .collect()
    });
    (gw, gbias)
}
