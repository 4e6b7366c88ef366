//! Geometry helpers of the phantom generator: small vector arithmetic, deformed ellipsoids, the
//! voxel grid the anatomy is painted on, and separable Gaussian smoothing.

use std::ops::Range;

use crate::rng::Rng;

/// A point or vector in patient world coordinates (RAS+ mm).
pub(crate) type V3 = [f64; 3];

pub(crate) fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub(crate) fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}

/// `a / |a|`, or `+z` for a (near) zero vector.
pub(crate) fn normalize(a: V3) -> V3 {
    let n = norm(a);
    if n > 1e-12 { scale(a, 1.0 / n) } else { [0.0, 0.0, 1.0] }
}

/// Hermite smoothstep of `t` clamped to `[0, 1]`.
pub(crate) fn smoothstep(t: f64) -> f64 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// The columns of `Rz(z) · Ry(y) · Rx(x)` (angles in radians): the local axes of a rotated
/// shape expressed in world coordinates.
pub(crate) fn rotation(z: f64, y: f64, x: f64) -> [V3; 3] {
    let (sz, cz) = z.sin_cos();
    let (sy, cy) = y.sin_cos();
    let (sx, cx) = x.sin_cos();
    // Row-major R = Rz · Ry · Rx.
    let r = [
        [cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
        [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
        [-sy, cy * sx, cy * cx],
    ];
    [[r[0][0], r[1][0], r[2][0]], [r[0][1], r[1][1], r[2][1]], [r[0][2], r[1][2], r[2][2]]]
}

/// A smooth, low-frequency perturbation of the unit sphere's radius:
/// `ρ(u) = 1 + Σ aₖ sin(fₖ (u · dₖ) + φₖ)` for unit vectors `u`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wobble {
    terms: [(V3, f64, f64, f64); 3],
}

impl Wobble {
    /// Three random terms with amplitudes up to `amplitude` each.
    pub(crate) fn random(rng: &mut Rng, amplitude: f64) -> Self {
        let mut terms = [([0.0, 0.0, 1.0], 0.0, 0.0, 0.0); 3];
        for t in &mut terms {
            let dir = normalize([rng.normal(), rng.normal(), rng.normal()]);
            let freq = rng.range(1.5, 4.0);
            let phase = rng.range(0.0, std::f64::consts::TAU);
            let amp = rng.range(0.3, 1.0) * amplitude;
            *t = (dir, freq, phase, amp);
        }
        Wobble { terms }
    }

    /// The radius factor in direction `u` (a unit vector).
    pub(crate) fn radius(&self, u: V3) -> f64 {
        let mut r = 1.0;
        for &(d, f, p, a) in &self.terms {
            if a != 0.0 {
                r += a * (f * dot(u, d) + p).sin();
            }
        }
        r
    }

    /// The largest radius factor possible.
    pub(crate) fn max_radius(&self) -> f64 {
        1.0 + self.terms.iter().map(|t| t.3.abs()).sum::<f64>()
    }
}

/// A deformed, rotated ellipsoid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blob {
    /// Centre (mm).
    pub(crate) centre: V3,
    /// Semi-axes along the local axes (mm).
    pub(crate) semi: V3,
    /// The local axes in world coordinates (orthonormal).
    pub(crate) axes: [V3; 3],
    /// The radial deformation.
    pub(crate) wobble: Wobble,
}

impl Blob {
    /// Local coordinates scaled by the semi-axes (the undeformed ellipsoid is `|q| < 1`).
    pub(crate) fn local(&self, p: V3) -> V3 {
        let d = sub(p, self.centre);
        [
            dot(self.axes[0], d) / self.semi[0],
            dot(self.axes[1], d) / self.semi[1],
            dot(self.axes[2], d) / self.semi[2],
        ]
    }

    /// The level of `p`: below 1 inside, 1 on the (deformed) surface, growing outward.
    pub(crate) fn level(&self, p: V3) -> f64 {
        let q = self.local(p);
        let r = norm(q);
        if r < 1e-12 { 0.0 } else { r / self.wobble.radius(scale(q, 1.0 / r)) }
    }

    /// Whether `p` is inside.
    pub(crate) fn contains(&self, p: V3) -> bool {
        self.level(p) < 1.0
    }

    /// The world point at local scaled coordinates `q`.
    pub(crate) fn point(&self, q: V3) -> V3 {
        let mut p = self.centre;
        for (a, (&qi, &si)) in self.axes.iter().zip(q.iter().zip(self.semi.iter())) {
            p = add(p, scale(*a, qi * si));
        }
        p
    }

    /// A world-axis-aligned box containing the blob.
    pub(crate) fn bounds(&self) -> (V3, V3) {
        let m = self.wobble.max_radius();
        let mut lo = [0.0; 3];
        let mut hi = [0.0; 3];
        for i in 0..3 {
            let half = m * (0..3).map(|j| (self.axes[j][i] * self.semi[j]).powi(2)).sum::<f64>().sqrt();
            lo[i] = self.centre[i] - half;
            hi[i] = self.centre[i] + half;
        }
        (lo, hi)
    }
}

/// An axis-aligned voxel grid in world coordinates: voxel `[i, j, k]` has its centre at
/// `origin + (i sx, j sy, k sz)`, its axes running toward +x (R), +y (A), +z (S).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Grid {
    pub(crate) shape: [usize; 3],
    pub(crate) spacing: V3,
    pub(crate) origin: V3,
}

impl Grid {
    /// The number of voxels.
    pub(crate) fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The world coordinate of index `i` along `axis`.
    pub(crate) fn coord(&self, axis: usize, i: usize) -> f64 {
        self.origin[axis] + i as f64 * self.spacing[axis]
    }

    /// The voxel indices along `axis` whose centres lie in `[lo, hi]`.
    pub(crate) fn range(&self, axis: usize, lo: f64, hi: f64) -> Range<usize> {
        let n = self.shape[axis];
        let a = ((lo - self.origin[axis]) / self.spacing[axis]).ceil();
        let b = ((hi - self.origin[axis]) / self.spacing[axis]).floor() + 1.0;
        let clamp = |v: f64| {
            if v <= 0.0 {
                0
            } else if v >= n as f64 {
                n
            } else {
                v as usize
            }
        };
        let (a, b) = (clamp(a), clamp(b));
        a..b.max(a)
    }

    /// The flat index of `[i, j, k]` (C order, `k` fastest).
    pub(crate) fn flat(&self, i: usize, j: usize, k: usize) -> usize {
        (i * self.shape[1] + j) * self.shape[2] + k
    }
}

/// The label map and tissue intensities being painted, on a [`Grid`].
#[derive(Debug, Clone)]
pub(crate) struct LabelGrid {
    pub(crate) grid: Grid,
    pub(crate) hu: Vec<f32>,
    pub(crate) labels: Vec<u8>,
}

impl LabelGrid {
    /// A label grid filled with `hu` and label 0.
    pub(crate) fn new(grid: Grid, hu: f32) -> Self {
        LabelGrid { grid, hu: vec![hu; grid.len()], labels: vec![0; grid.len()] }
    }

    /// Call `f(point, hu, label)` for every voxel whose centre lies in the box `[lo, hi]`.
    pub(crate) fn paint(&mut self, (lo, hi): (V3, V3), mut f: impl FnMut(V3, &mut f32, &mut u8)) {
        let g = self.grid;
        let ri = g.range(0, lo[0], hi[0]);
        let rj = g.range(1, lo[1], hi[1]);
        let rk = g.range(2, lo[2], hi[2]);
        for i in ri {
            let x = g.coord(0, i);
            for j in rj.clone() {
                let y = g.coord(1, j);
                let base = g.flat(i, j, 0);
                for k in rk.clone() {
                    let z = g.coord(2, k);
                    f([x, y, z], &mut self.hu[base + k], &mut self.labels[base + k]);
                }
            }
        }
    }

    /// The whole grid as a box.
    pub(crate) fn everywhere(&self) -> (V3, V3) {
        let g = self.grid;
        let hi = [g.coord(0, g.shape[0]), g.coord(1, g.shape[1]), g.coord(2, g.shape[2])];
        (g.origin, hi)
    }
}

/// A normalised discrete Gaussian kernel of standard deviation `sigma` (in samples), radius
/// `ceil(3 σ)`; `[1]` for `sigma <= 0`.
pub(crate) fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    if sigma <= 1e-6 {
        return vec![1.0];
    }
    let radius = (3.0 * sigma).ceil().max(1.0) as i64;
    let mut k: Vec<f64> = (-radius..=radius).map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp()).collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Convolve `data` (C order, `shape`) with `kernel` along `axis`, replicating edge values.
pub(crate) fn convolve_axis(data: &mut [f32], shape: [usize; 3], axis: usize, kernel: &[f64]) {
    if kernel.len() <= 1 || shape[axis] == 0 {
        return;
    }
    let radius = (kernel.len() / 2) as i64;
    let n = shape[axis];
    let stride: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut line = vec![0f32; n];
    for o in 0..outer {
        for inner in 0..stride {
            let base = o * n * stride + inner;
            for (t, v) in line.iter_mut().enumerate() {
                *v = data[base + t * stride];
            }
            for t in 0..n {
                let mut acc = 0.0f64;
                for (m, &w) in kernel.iter().enumerate() {
                    let src = (t as i64 + m as i64 - radius).clamp(0, n as i64 - 1) as usize;
                    acc += w * f64::from(line[src]);
                }
                data[base + t * stride] = acc as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthonormal_and_rotates_the_right_way() {
        let r = rotation(0.3, -0.7, 1.1);
        for a in 0..3 {
            for b in 0..3 {
                let d = dot(r[a], r[b]);
                assert!((d - if a == b { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        // A quarter turn about z takes local x to world y.
        let q = rotation(std::f64::consts::FRAC_PI_2, 0.0, 0.0);
        assert!((q[0][1] - 1.0).abs() < 1e-12 && q[0][0].abs() < 1e-12);
    }

    #[test]
    fn blob_bounds_contain_the_blob() {
        let mut rng = Rng::new(5);
        let blob = Blob {
            centre: [3.0, -2.0, 7.0],
            semi: [10.0, 4.0, 6.0],
            axes: rotation(0.4, 0.2, -0.3),
            wobble: Wobble::random(&mut rng, 0.05),
        };
        let (lo, hi) = blob.bounds();
        for _ in 0..5000 {
            let p = [rng.range(-20.0, 25.0), rng.range(-20.0, 20.0), rng.range(-15.0, 30.0)];
            if blob.contains(p) {
                assert!((0..3).all(|i| p[i] >= lo[i] && p[i] <= hi[i]));
            }
        }
        assert!(blob.contains(blob.point([0.2, -0.1, 0.3])));
        assert!(!blob.contains(blob.point([1.3, 0.0, 0.0])));
    }

    #[test]
    fn grid_ranges_and_blur() {
        let g = Grid { shape: [4, 5, 6], spacing: [2.0, 1.0, 3.0], origin: [-3.0, 0.0, 10.0] };
        assert_eq!(g.range(0, -3.0, 1.0), 0..3);
        assert_eq!(g.range(0, -10.0, 100.0), 0..4);
        assert!(g.range(2, 13.5, 15.9).is_empty());
        assert_eq!(g.range(2, 12.5, 16.0), 1..3);
        assert_eq!(g.range(2, 200.0, 300.0), 6..6);
        let k = gaussian_kernel(0.8);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let mut d = vec![0f32; 3 * 4 * 12];
        d[(4 + 2) * 12 + 6] = 1.0;
        convolve_axis(&mut d, [3, 4, 12], 2, &k);
        let sum: f32 = d.iter().sum();
        assert!(d[(4 + 2) * 12 + 6] < 0.6 && d[(4 + 2) * 12 + 5] > 0.1);
        let mut c = vec![7f32; 3 * 4 * 12];
        convolve_axis(&mut c, [3, 4, 12], 0, &k);
        assert!(c.iter().all(|&v| (v - 7.0).abs() < 1e-5));
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
}
