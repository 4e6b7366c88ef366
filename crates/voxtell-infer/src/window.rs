//! Sliding-window geometry exactly as nnU-Net's predictor (voxtell-spec §7.3): tile positions
//! with numpy's round-half-to-even, the tile order, and the Gaussian importance map in f16.

use half::f16;

/// Start positions along one axis of length `len` for tiles of size `patch` overlapping by
/// `1 − step` (0.5 in VoxTell): `n = ceil((len − patch) / (patch·step)) + 1` tiles, evenly
/// spread, positions rounded half-to-even like `numpy.round`. `len < patch` gives `[0]` (the
/// volume is padded to the patch first).
pub fn steps(len: usize, patch: usize, step: f64) -> Vec<usize> {
    if len <= patch || patch == 0 {
        return vec![0];
    }
    let target = patch as f64 * step;
    let n = ((len - patch) as f64 / target).ceil() as usize + 1;
    let delta = (len - patch) as f64 / (n - 1) as f64;
    (0..n).map(|i| (delta * i as f64).round_ties_even() as usize).collect()
}

/// All tile origins of a volume of `shape` (already padded to at least `patch`), in the
/// official order: axis 0 slowest, axis 2 fastest.
pub fn tiles(shape: [usize; 3], patch: [usize; 3], step: f64) -> Vec<[usize; 3]> {
    let s: Vec<Vec<usize>> = (0..3).map(|a| steps(shape[a], patch[a], step)).collect();
    let mut out = Vec::with_capacity(s[0].len() * s[1].len() * s[2].len());
    for &a in &s[0] {
        for &b in &s[1] {
            for &c in &s[2] {
                out.push([a, b, c]);
            }
        }
    }
    out
}

/// The Gaussian importance map of `compute_gaussian(patch, sigma_scale, value_scaling_factor)`:
/// `scale · Π_a exp(−(i_a − c_a)² / (2σ_a²))` with `c_a = patch_a / 2` and `σ_a = patch_a ·
/// sigma_scale`, computed in f64 (the closed form of scipy's filtered delta, whose 4σ radius
/// covers the patch), rounded to f16, and zeros replaced by the smallest non-zero value of the
/// f16 map. Row-major over the patch.
pub fn gaussian(patch: [usize; 3], sigma_scale: f64, scale: f64) -> Vec<f16> {
    let axis = |a: usize| -> Vec<f64> {
        let c = (patch[a] / 2) as f64;
        let sigma = patch[a] as f64 * sigma_scale;
        (0..patch[a]).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect()
    };
    let (g0, g1, g2) = (axis(0), axis(1), axis(2));
    let mut map = Vec::with_capacity(patch.iter().product());
    for &a in &g0 {
        for &b in &g1 {
            for &c in &g2 {
                map.push(f16::from_f64(scale * a * b * c));
            }
        }
    }
    let min_nonzero =
        map.iter().copied().filter(|v| v.to_f32() != 0.0).fold(f16::MAX, |m, v| if v < m { v } else { m });
    for v in &mut map {
        if v.to_f32() == 0.0 {
            *v = min_nonzero;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_half_to_even_like_numpy() {
        assert_eq!(steps(289, 192, 0.5), vec![0, 48, 97]);
        assert_eq!(steps(192, 192, 0.5), vec![0]);
        assert_eq!(steps(100, 192, 0.5), vec![0]);
        assert_eq!(steps(300, 192, 0.5), vec![0, 54, 108]);
        assert_eq!(steps(512, 192, 0.5), vec![0, 80, 160, 240, 320]);
    }

    #[test]
    fn tiles_run_axis_two_fastest() {
        let t = tiles([289, 192, 300], [192; 3], 0.5);
        assert_eq!(t.len(), 9);
        assert_eq!(&t[..4], &[[0, 0, 0], [0, 0, 54], [0, 0, 108], [48, 0, 0]]);
    }

    #[test]
    fn gaussian_matches_the_official_map_properties() {
        let g = gaussian([192; 3], 1.0 / 8.0, 10.0);
        // Peak exactly 10 at the centre (96, 96, 96).
        assert_eq!(g[(96 * 192 + 96) * 192 + 96].to_f32(), 10.0);
        // The f16 zeros (30,427 corner voxels at 192³) take the smallest non-zero value, 2^-24.
        let smallest = f16::from_f32(2f32.powi(-24));
        let replaced = g.iter().filter(|v| **v == smallest).count();
        assert!(replaced >= 30_427, "{replaced}");
        assert!(g.iter().all(|v| v.to_f32() > 0.0));
        // Asymmetric: index 0 is 96 away from the centre, index 191 only 95.
        assert!(g[96 * 192 * 192 + 96 * 192] < g[96 * 192 * 192 + 96 * 192 + 191]);
    }
}
