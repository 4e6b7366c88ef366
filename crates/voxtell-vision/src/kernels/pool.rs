//! Average pooling with kernel == stride (`nn.AvgPool3d` as the official residual blocks'
//! strided skip path uses it: no padding, floor mode) and its backward pass, one plane per task.

use rayon::prelude::*;

use super::Elem;

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
