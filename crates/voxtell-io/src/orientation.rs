//! Orientation arithmetic on affines, with the same results as nibabel's `orientations` module.
//!
//! An [`Ornt`] says, for each voxel axis of an image, which world axis (0 = R, 1 = A, 2 = S) it
//! runs along and whether it runs the same way (+1) or the opposite way (−1). The functions here
//! are small, pure and tested on every axis permutation and flip; the reorientation of voxel data
//! lives in [`crate::ras`].

use nalgebra::{Matrix3, Matrix4};

/// A 4×4 homogeneous affine in f64, row-major: `world = affine · [i, j, k, 1]ᵀ`.
pub type Affine = [[f64; 4]; 4];

/// The identity affine.
pub const IDENTITY: Affine =
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];

/// One voxel axis's orientation: the world axis it follows and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AxisOrnt {
    /// World axis index: 0 = R (x), 1 = A (y), 2 = S (z).
    pub world_axis: usize,
    /// `true` when the voxel axis runs opposite to the world axis (nibabel's −1).
    pub flipped: bool,
}

/// Orientation of the three voxel axes of an image, as nibabel's `(3, 2)` ornt array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ornt(pub [AxisOrnt; 3]);

impl Ornt {
    /// The identity orientation (RAS).
    pub const RAS: Ornt = Ornt([
        AxisOrnt { world_axis: 0, flipped: false },
        AxisOrnt { world_axis: 1, flipped: false },
        AxisOrnt { world_axis: 2, flipped: false },
    ]);

    /// Whether this is the identity (the image is already RAS).
    pub fn is_identity(&self) -> bool {
        *self == Self::RAS
    }

    /// The orientation code, one letter per voxel axis, e.g. `"LPS"` or `"RAS"`.
    pub fn axcodes(&self) -> String {
        const LABELS: [(char, char); 3] = [('L', 'R'), ('P', 'A'), ('I', 'S')];
        self.0
            .iter()
            .map(|a| {
                let (neg, pos) = LABELS[a.world_axis];
                if a.flipped { neg } else { pos }
            })
            .collect()
    }

    /// The orientation that takes an image in orientation `self` to orientation `end`
    /// (nibabel's `ornt_transform(self, end)`).
    pub fn transform_to(&self, end: &Ornt) -> Ornt {
        let mut result = Ornt::RAS;
        for (end_in, e) in end.0.iter().enumerate() {
            // Every world axis occurs exactly once in a valid orientation.
            if let Some(start_in) = self.0.iter().position(|s| s.world_axis == e.world_axis) {
                let s = self.0[start_in];
                result.0[start_in] = AxisOrnt { world_axis: end_in, flipped: s.flipped != e.flipped };
            }
        }
        result
    }

    /// The affine that maps voxel indices of the reoriented array back to voxel indices of the
    /// array before reorientation (nibabel's `inv_ornt_aff(ornt, shape)`), for the original
    /// spatial `shape`.
    pub fn inverse_affine(&self, shape: [usize; 3]) -> Affine {
        // Row i of the undo-reorder matrix is the unit row of the world axis the voxel axis i
        // went to; the undo-flip matrix mirrors flipped axes about their centre.
        let mut out = [[0.0; 4]; 4];
        out[3][3] = 1.0;
        for (i, a) in self.0.iter().enumerate() {
            let sign = if a.flipped { -1.0 } else { 1.0 };
            let centre = -((shape[i] as f64) - 1.0) / 2.0;
            out[i][a.world_axis] = sign;
            out[i][3] = sign * centre - centre;
        }
        out
    }
}

/// Multiply two affines (`a · b`) in f64.
pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    out
}

/// The orientation of the voxel axes of `affine` relative to RAS+ world axes, exactly as
/// nibabel's `io_orientation`: the columns are normalised, replaced by the closest orthogonal
/// matrix (polar factor from an SVD, dropping singular values below `max·3·ε`), and the voxel axes
/// pick world axes greedily, strongest first.
///
/// Returns `None` when a voxel axis has no usable direction (a degenerate affine); nibabel then
/// returns NaN rows and reorientation is impossible.
pub fn io_orientation(affine: &Affine) -> Option<Ornt> {
    let mut rs = Matrix3::<f64>::zeros();
    for c in 0..3 {
        let mut norm = (0..3).map(|r| affine[r][c] * affine[r][c]).sum::<f64>().sqrt();
        if norm == 0.0 {
            norm = 1.0;
        }
        for r in 0..3 {
            rs[(r, c)] = affine[r][c] / norm;
        }
    }
    if !rs.iter().all(|v| v.is_finite()) {
        return None;
    }
    let svd = rs.try_svd(true, true, f64::EPSILON, 1000)?;
    let (u, v_t) = (svd.u?, svd.v_t?);
    let s_max = svd.singular_values.max();
    let tol = s_max * 3.0 * f64::EPSILON;
    let mut r = Matrix3::<f64>::zeros();
    for k in 0..3 {
        if svd.singular_values[k] > tol {
            r += u.column(k) * v_t.row(k);
        }
    }
    // Process input axes by ascending min(-R²) per column (stable), i.e. the column with the
    // largest squared entry first.
    let mut order = [0usize, 1, 2];
    let key = |c: usize| (0..3).map(|row| -(r[(row, c)] * r[(row, c)])).fold(f64::INFINITY, f64::min);
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let mut axes: [Option<AxisOrnt>; 3] = [None; 3];
    for in_ax in order {
        let col = r.column(in_ax).into_owned();
        if col.iter().all(|v| v.abs() <= 1e-8) {
            continue;
        }
        let out_ax = (0..3).fold(0, |best, row| if col[row].abs() > col[best].abs() { row } else { best });
        axes[in_ax] = Some(AxisOrnt { world_axis: out_ax, flipped: col[out_ax] < 0.0 });
        for c in 0..3 {
            r[(out_ax, c)] = 0.0;
        }
    }
    Some(Ornt([axes[0]?, axes[1]?, axes[2]?]))
}

/// Voxel spacing (column norms of the 3×3 part) of an affine, in voxel-axis order.
pub fn spacing(affine: &Affine) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (c, v) in out.iter_mut().enumerate() {
        *v = (0..3).map(|r| affine[r][c] * affine[r][c]).sum::<f64>().sqrt();
    }
    out
}

/// Whether every entry of the affine is finite.
pub fn is_finite(affine: &Affine) -> bool {
    affine.iter().flatten().all(|v| v.is_finite())
}

/// Quaternion `(w, x, y, z)` of a proper rotation matrix as nibabel's `mat2quat`: the eigenvector
/// of the largest eigenvalue of Bar-Itzhack's symmetric 4×4 matrix, with `w ≥ 0`.
pub(crate) fn mat2quat(m: &Matrix3<f64>) -> [f64; 4] {
    let (qxx, qyx, qzx) = (m[(0, 0)], m[(0, 1)], m[(0, 2)]);
    let (qxy, qyy, qzy) = (m[(1, 0)], m[(1, 1)], m[(1, 2)]);
    let (qxz, qyz, qzz) = (m[(2, 0)], m[(2, 1)], m[(2, 2)]);
    #[rustfmt::skip]
    let k = Matrix4::new(
        qxx - qyy - qzz, qyx + qxy,       qzx + qxz,       qyz - qzy,
        qyx + qxy,       qyy - qxx - qzz, qzy + qyz,       qzx - qxz,
        qzx + qxz,       qzy + qyz,       qzz - qxx - qyy, qxy - qyx,
        qyz - qzy,       qzx - qxz,       qxy - qyx,       qxx + qyy + qzz,
    ) / 3.0;
    let eig = k.symmetric_eigen();
    let best = eig.eigenvalues.imax();
    let v = eig.eigenvectors.column(best);
    // Components at rounding-noise level are zero: LAPACK's solver, which nibabel uses, returns
    // exact zeros for the axis-aligned rotations where an iterative solver leaves ~1e-16.
    let mut q = [v[3], v[0], v[1], v[2]].map(|x| if x.abs() < 1e-12 { 0.0 } else { x });
    if q[0] < 0.0 {
        q.iter_mut().for_each(|x| *x = -*x);
    }
    q
}

/// Rotation matrix of a quaternion `(w, x, y, z)`, as nibabel's `quat2mat` (normalising; the
/// identity for a near-zero quaternion).
pub(crate) fn quat2mat(q: [f64; 4]) -> Matrix3<f64> {
    let [w, x, y, z] = q;
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return Matrix3::identity();
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    #[rustfmt::skip]
    let m = Matrix3::new(
        1.0 - (yy + zz), xy - wz,         xz + wy,
        xy + wz,         1.0 - (xx + zz), yz - wx,
        xz - wy,         yz + wx,         1.0 - (xx + yy),
    );
    m
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    fn all_ornts() -> Vec<Ornt> {
        let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let mut out = Vec::new();
        for p in perms {
            for flips in 0..8u8 {
                let mut o = Ornt::RAS;
                for i in 0..3 {
                    o.0[i] = AxisOrnt { world_axis: p[i], flipped: flips & (1 << i) != 0 };
                }
                out.push(o);
            }
        }
        out
    }

    fn affine_of(o: &Ornt, zooms: [f64; 3]) -> Affine {
        let mut a = IDENTITY;
        for r in 0..3 {
            a[r][r] = 0.0;
        }
        for (c, ax) in o.0.iter().enumerate() {
            a[ax.world_axis][c] = if ax.flipped { -zooms[c] } else { zooms[c] };
            a[c][3] = 10.0 * c as f64 - 7.5;
        }
        a
    }

    #[test]
    fn io_orientation_recovers_every_permutation_and_flip() {
        for o in all_ornts() {
            let a = affine_of(&o, [0.7, 1.3, 2.5]);
            assert_eq!(io_orientation(&a), Some(o), "{}", o.axcodes());
        }
    }

    #[test]
    fn transform_to_composes_to_identity() {
        for o in all_ornts() {
            let back = Ornt::RAS.transform_to(&o);
            // Reorienting RAS by `back` must give an image whose orientation is `o`:
            // composing the two affines gives the identity on voxel indices.
            let shape = [5, 6, 7];
            let to_ras = o.inverse_affine(shape);
            let mut ras_shape = [0; 3];
            for (i, a) in o.0.iter().enumerate() {
                ras_shape[a.world_axis] = shape[i];
            }
            let from_ras = back.inverse_affine(ras_shape);
            assert_eq!(matmul(&to_ras, &from_ras), IDENTITY, "{}", o.axcodes());
        }
    }

    #[test]
    fn axcodes_match_nibabel_labels() {
        let lps = Ornt([
            AxisOrnt { world_axis: 0, flipped: true },
            AxisOrnt { world_axis: 1, flipped: true },
            AxisOrnt { world_axis: 2, flipped: false },
        ]);
        assert_eq!(lps.axcodes(), "LPS");
        assert_eq!(Ornt::RAS.axcodes(), "RAS");
    }

    #[test]
    fn degenerate_affine_has_no_orientation() {
        let mut a = IDENTITY;
        a[2][2] = 0.0;
        assert_eq!(io_orientation(&a), None);
        a[2][2] = f64::NAN;
        assert_eq!(io_orientation(&a), None);
    }

    #[test]
    fn quaternion_round_trip() {
        for o in all_ornts() {
            let a = affine_of(&o, [1.0, 1.0, 1.0]);
            let mut m = Matrix3::from_fn(|r, c| a[r][c]);
            if m.determinant() < 0.0 {
                for r in 0..3 {
                    m[(r, 2)] = -m[(r, 2)];
                }
            }
            let q = mat2quat(&m);
            let back = quat2mat(q);
            assert!((back - m).abs().max() < 1e-12, "{}", o.axcodes());
        }
    }
}
