//! Element-wise kernels: leaky ReLU (`nn.LeakyReLU`), the residual sum fused with it, its
//! gradient, and the repeated addend of `conv3d_add`. Memory-bound; chunks of 64 Ki elements run
//! in parallel.

use rayon::prelude::*;

use super::Elem;

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
