//! Data augmentation: nnU-Net's default pipeline (voxtell-spec §8.1) without left–right
//! mirroring, as the VoxTell paper trains.
//!
//! Order, as nnU-Net's `get_training_transforms`: spatial (rotation, scaling), Gaussian noise,
//! Gaussian blur, multiplicative brightness, contrast, low-resolution simulation, inverted gamma,
//! gamma, mirroring. Here mirroring is folded into the spatial resampling (it commutes with the
//! other transforms up to the noise field, which is random anyway), so image and labels are
//! produced by one mapping from the full case: output voxel `o` of a patch of size `P` reads the
//! source at `centre + R·(scale·d)` where `d = o − (P − 1)/2`, negated on mirrored axes. Images
//! are interpolated trilinearly, labels by nearest neighbour, and outside the source is 0 (the
//! z-scored mean for images, background for labels).
//!
//! Random parameters are drawn up front ([`AugmentConfig::sample`] → [`AugmentParams`]); the
//! transforms themselves are deterministic functions of the parameters. Work is split in fixed
//! chunks and reductions (means, standard deviations) are combined in a fixed order, so results
//! do not depend on the number of threads.

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Elements per chunk for parallel element-wise work and reductions.
const CHUNK: usize = 1 << 15;

/// Probabilities and ranges of every augmentation (nnU-Net defaults; no left–right mirroring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of rotating a sample (then each axis gets an angle).
    pub p_rotation: f64,
    /// Rotation angle range in degrees, per axis.
    pub rotation_deg: [f64; 2],
    /// Probability of scaling a sample (one factor for all axes).
    pub p_scaling: f64,
    /// Scale factor range (source coordinates are multiplied by it: > 1 zooms out).
    pub scaling: [f64; 2],
    /// Probability of additive Gaussian noise.
    pub p_noise: f64,
    /// Range of the noise's standard deviation. nnU-Net calls it `noise_variance` but uses the
    /// sampled value as the standard deviation; so does this.
    pub noise_std: [f64; 2],
    /// Probability of the blur transform.
    pub p_blur: f64,
    /// Probability, once the blur transform applies, of blurring the (single) channel (nnU-Net
    /// `p_per_channel = 0.5`).
    pub p_blur_per_channel: f64,
    /// Blur σ range in voxels, drawn per axis.
    pub blur_sigma: [f64; 2],
    /// Probability of multiplicative brightness.
    pub p_brightness: f64,
    /// Brightness factor range (drawn as nnU-Net's `BGContrast`: half the time below 1).
    pub brightness: [f64; 2],
    /// Probability of the contrast transform.
    pub p_contrast: f64,
    /// Contrast factor range (`BGContrast`).
    pub contrast: [f64; 2],
    /// Clip the contrast-changed image to its previous range (nnU-Net `preserve_range`).
    pub contrast_preserve_range: bool,
    /// Probability of the low-resolution transform.
    pub p_lowres: f64,
    /// Probability, once it applies, of transforming the channel (nnU-Net `p_per_channel = 0.5`).
    pub p_lowres_per_channel: f64,
    /// Zoom range of the low-resolution simulation (one factor for all axes).
    pub lowres_zoom: [f64; 2],
    /// Probability of gamma on the inverted image.
    pub p_inverted_gamma: f64,
    /// Probability of gamma.
    pub p_gamma: f64,
    /// Gamma range (`BGContrast`), both gamma transforms.
    pub gamma: [f64; 2],
    /// Restore mean and standard deviation after gamma (nnU-Net `p_retain_stats = 1`).
    pub gamma_retain_stats: bool,
    /// Probability of mirroring each allowed axis.
    pub p_mirror: f64,
    /// Which array axes (S, A, R) may be mirrored. Default: S and A, never R (left–right).
    pub mirror_axes: [bool; 3],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            p_rotation: 0.2,
            rotation_deg: [-30.0, 30.0],
            p_scaling: 0.2,
            scaling: [0.7, 1.4],
            p_noise: 0.1,
            noise_std: [0.0, 0.1],
            p_blur: 0.2,
            p_blur_per_channel: 0.5,
            blur_sigma: [0.5, 1.0],
            p_brightness: 0.15,
            brightness: [0.75, 1.25],
            p_contrast: 0.15,
            contrast: [0.75, 1.25],
            contrast_preserve_range: true,
            p_lowres: 0.25,
            p_lowres_per_channel: 0.5,
            lowres_zoom: [0.5, 1.0],
            p_inverted_gamma: 0.1,
            p_gamma: 0.3,
            gamma: [0.7, 1.5],
            gamma_retain_stats: true,
            p_mirror: 0.5,
            mirror_axes: [true, true, false],
        }
    }
}

/// The geometric part of an augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpatialParams {
    /// Rotation angles in radians about array axes 0, 1, 2 (applied as `Rx·Ry·Rz`).
    pub angles: [f64; 3],
    /// Uniform scale of source coordinates.
    pub scale: f64,
    /// Mirrored array axes.
    pub mirror: [bool; 3],
}

impl Default for SpatialParams {
    fn default() -> Self {
        SpatialParams::identity()
    }
}

impl SpatialParams {
    /// No rotation, no scaling, no mirroring.
    pub fn identity() -> Self {
        SpatialParams { angles: [0.0; 3], scale: 1.0, mirror: [false; 3] }
    }

    /// Whether the mapping needs interpolation (rotation or scaling), as opposed to a plain
    /// (possibly mirrored) copy.
    pub fn resamples(&self) -> bool {
        self.angles.iter().any(|&a| a != 0.0) || self.scale != 1.0
    }

    /// The 3×3 matrix mapping output offsets to source offsets (mirroring included).
    pub fn matrix(&self) -> [[f64; 3]; 3] {
        let [a, b, c] = self.angles;
        let rx = [[1.0, 0.0, 0.0], [0.0, a.cos(), -a.sin()], [0.0, a.sin(), a.cos()]];
        let ry = [[b.cos(), 0.0, b.sin()], [0.0, 1.0, 0.0], [-b.sin(), 0.0, b.cos()]];
        let rz = [[c.cos(), -c.sin(), 0.0], [c.sin(), c.cos(), 0.0], [0.0, 0.0, 1.0]];
        let mut m = matmul3(&matmul3(&rx, &ry), &rz);
        for row in &mut m {
            for (j, v) in row.iter_mut().enumerate() {
                *v *= self.scale;
                if self.mirror[j] {
                    *v = -*v;
                }
            }
        }
        m
    }

    /// The source coordinate that output voxel `o` of a `patch` centred at `centre` reads.
    pub fn source_of(&self, o: [usize; 3], centre: [f64; 3], patch: [usize; 3]) -> [f64; 3] {
        let m = self.matrix();
        let d: [f64; 3] = std::array::from_fn(|a| o[a] as f64 - (patch[a] as f64 - 1.0) / 2.0);
        std::array::from_fn(|r| centre[r] + m[r][0] * d[0] + m[r][1] * d[1] + m[r][2] * d[2])
    }

    /// The bounding box `[min, max]` per axis of the source coordinates a patch reads.
    pub fn source_extent(&self, centre: [f64; 3], patch: [usize; 3]) -> [[f64; 2]; 3] {
        let mut ext = [[f64::INFINITY, f64::NEG_INFINITY]; 3];
        for corner in 0..8 {
            let o: [usize; 3] =
                std::array::from_fn(|a| if corner & (1 << a) != 0 { patch[a].saturating_sub(1) } else { 0 });
            let x = self.source_of(o, centre, patch);
            for a in 0..3 {
                ext[a][0] = ext[a][0].min(x[a]);
                ext[a][1] = ext[a][1].max(x[a]);
            }
        }
        ext
    }
}

fn matmul3(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// Every random choice of one sample's augmentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Rotation, scaling and mirroring.
    pub spatial: SpatialParams,
    /// Standard deviation of additive noise, if applied.
    pub noise_std: Option<f64>,
    /// Seed of the noise field.
    pub noise_seed: u64,
    /// Blur σ per axis, if applied.
    pub blur_sigma: Option<[f64; 3]>,
    /// Brightness factor, if applied.
    pub brightness: Option<f64>,
    /// Contrast factor, if applied.
    pub contrast: Option<f64>,
    /// Low-resolution zoom, if applied.
    pub lowres_zoom: Option<f64>,
    /// Gamma on the inverted image, if applied.
    pub inverted_gamma: Option<f64>,
    /// Gamma, if applied.
    pub gamma: Option<f64>,
}

impl AugmentParams {
    /// No augmentation at all.
    pub fn identity() -> Self {
        AugmentParams {
            spatial: SpatialParams::identity(),
            noise_std: None,
            noise_seed: 0,
            blur_sigma: None,
            brightness: None,
            contrast: None,
            lowres_zoom: None,
            inverted_gamma: None,
            gamma: None,
        }
    }
}

/// nnU-Net's `BGContrast` sampling: with probability 0.5 (when the range reaches below 1) a
/// value in `[lo, 1)`, else in `[max(lo, 1), hi)`.
fn bg_contrast(rng: &mut Rng, range: [f64; 2]) -> f64 {
    let [lo, hi] = range;
    if rng.uniform() < 0.5 && lo < 1.0 { rng.range(lo, hi.min(1.0)) } else { rng.range(lo.max(1.0), hi) }
}

impl AugmentConfig {
    /// Check the settings: probabilities in [0, 1], ranges ordered and finite, rotation within
    /// ±90° and mirroring never along axis 2 (both could swap the patient's left and right),
    /// low-resolution zoom in (0, 1], scaling and blur positive.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let probs = [
            ("p_rotation", self.p_rotation),
            ("p_scaling", self.p_scaling),
            ("p_noise", self.p_noise),
            ("p_blur", self.p_blur),
            ("p_blur_per_channel", self.p_blur_per_channel),
            ("p_brightness", self.p_brightness),
            ("p_contrast", self.p_contrast),
            ("p_lowres", self.p_lowres),
            ("p_lowres_per_channel", self.p_lowres_per_channel),
            ("p_inverted_gamma", self.p_inverted_gamma),
            ("p_gamma", self.p_gamma),
            ("p_mirror", self.p_mirror),
        ];
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("augment.{name} = {p} is not a probability"));
            }
        }
        let ranges = [
            ("rotation_deg", self.rotation_deg, -90.0, 90.0),
            ("scaling", self.scaling, 1e-3, 1e3),
            ("noise_std", self.noise_std, 0.0, 1e3),
            ("blur_sigma", self.blur_sigma, 0.0, 5.0),
            ("brightness", self.brightness, 0.0, 1e3),
            ("contrast", self.contrast, 0.0, 1e3),
            ("lowres_zoom", self.lowres_zoom, 1e-3, 1.0),
            ("gamma", self.gamma, 1e-3, 1e3),
        ];
        for (name, [lo, hi], min, max) in ranges {
            if !(lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max) {
                return Err(format!(
                    "augment.{name} = [{lo}, {hi}] must be an ordered range within [{min}, {max}]"
                ));
            }
        }
        if self.mirror_axes[2] {
            return Err(
                "augment.mirror_axes: mirroring along axis 2 (left–right) would swap left and right prompts"
                    .into(),
            );
        }
        Ok(())
    }

    /// No augmentation: every probability 0.
    pub fn none() -> Self {
        AugmentConfig {
            p_rotation: 0.0,
            p_scaling: 0.0,
            p_noise: 0.0,
            p_blur: 0.0,
            p_brightness: 0.0,
            p_contrast: 0.0,
            p_lowres: 0.0,
            p_inverted_gamma: 0.0,
            p_gamma: 0.0,
            p_mirror: 0.0,
            ..AugmentConfig::default()
        }
    }

    /// Draw one sample's parameters. The number of draws is fixed (independent of the
    /// outcomes), so later draws from `rng` do not shift with the configuration's probabilities.
    pub fn sample(&self, rng: &mut Rng) -> AugmentParams {
        let deg = std::f64::consts::PI / 180.0;
        let rotate = rng.bernoulli(self.p_rotation);
        let angles: [f64; 3] =
            std::array::from_fn(|_| rng.range(self.rotation_deg[0], self.rotation_deg[1]) * deg);
        let scale_on = rng.bernoulli(self.p_scaling);
        let scale = rng.range(self.scaling[0], self.scaling[1]);
        let noise_on = rng.bernoulli(self.p_noise);
        let noise_std = rng.range(self.noise_std[0], self.noise_std[1]);
        let noise_seed = rng.next_u64();
        let blur_on = rng.bernoulli(self.p_blur) & rng.bernoulli(self.p_blur_per_channel);
        let sigma: [f64; 3] = std::array::from_fn(|_| rng.range(self.blur_sigma[0], self.blur_sigma[1]));
        let bright_on = rng.bernoulli(self.p_brightness);
        let bright = bg_contrast(rng, self.brightness);
        let contrast_on = rng.bernoulli(self.p_contrast);
        let contrast = bg_contrast(rng, self.contrast);
        let lowres_on = rng.bernoulli(self.p_lowres) & rng.bernoulli(self.p_lowres_per_channel);
        let zoom = rng.range(self.lowres_zoom[0], self.lowres_zoom[1]);
        let inv_on = rng.bernoulli(self.p_inverted_gamma);
        let inv_gamma = bg_contrast(rng, self.gamma);
        let gamma_on = rng.bernoulli(self.p_gamma);
        let gamma = bg_contrast(rng, self.gamma);
        let mirror: [bool; 3] = std::array::from_fn(|a| rng.bernoulli(self.p_mirror) && self.mirror_axes[a]);
        AugmentParams {
            spatial: SpatialParams {
                angles: if rotate { angles } else { [0.0; 3] },
                scale: if scale_on { scale } else { 1.0 },
                mirror,
            },
            noise_std: noise_on.then_some(noise_std),
            noise_seed,
            blur_sigma: blur_on.then_some(sigma),
            brightness: bright_on.then_some(bright),
            contrast: contrast_on.then_some(contrast),
            lowres_zoom: lowres_on.then_some(zoom),
            inverted_gamma: inv_on.then_some(inv_gamma),
            gamma: gamma_on.then_some(gamma),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spatial sampling.
// ---------------------------------------------------------------------------------------------

/// When the mapping is an integer shift (plus mirroring), the source index of output index 0 on
/// each axis.
fn integer_origin(spatial: &SpatialParams, centre: [f64; 3], patch: [usize; 3]) -> Option<[i64; 3]> {
    if spatial.resamples() {
        return None;
    }
    let mut o = [0i64; 3];
    for a in 0..3 {
        let lo = centre[a] - (patch[a] as f64 - 1.0) / 2.0;
        if lo.fract() != 0.0 || !lo.is_finite() {
            return None;
        }
        o[a] = lo as i64;
    }
    Some(o)
}

/// Fill a patch by mapping every output voxel to a source voxel through an integer shift with
/// mirroring (exact copy; outside the source gives `T::default()`).
fn copy_patch<T: Copy + Default + Send + Sync>(
    src: ArrayView3<'_, T>,
    origin: [i64; 3],
    mirror: [bool; 3],
    patch: [usize; 3],
) -> Array3<T> {
    let sh = src.shape();
    let shape = [sh[0] as i64, sh[1] as i64, sh[2] as i64];
    let src_idx = |a: usize, o: usize| -> Option<usize> {
        let o = if mirror[a] { patch[a] - 1 - o } else { o };
        let s = origin[a] + o as i64;
        (0..shape[a]).contains(&s).then_some(s as usize)
    };
    let mut out = vec![T::default(); patch.iter().product()];
    let plane = patch[1] * patch[2];
    if plane > 0 {
        out.par_chunks_mut(plane).enumerate().for_each(|(i, slab)| {
            let Some(si) = src_idx(0, i) else { return };
            for j in 0..patch[1] {
                let Some(sj) = src_idx(1, j) else { continue };
                let row = &mut slab[j * patch[2]..(j + 1) * patch[2]];
                for (k, v) in row.iter_mut().enumerate() {
                    if let Some(sk) = src_idx(2, k) {
                        *v = src[[si, sj, sk]];
                    }
                }
            }
        });
    }
    Array3::from_shape_vec(patch, out).unwrap_or_else(|_| Array3::default(patch))
}

/// Generic resampling: `f(x)` gives the value at source coordinate `x`.
fn map_patch<T: Copy + Default + Send + Sync>(
    centre: [f64; 3],
    patch: [usize; 3],
    spatial: &SpatialParams,
    f: impl Fn([f64; 3]) -> T + Sync,
) -> Array3<T> {
    let m = spatial.matrix();
    let half: [f64; 3] = std::array::from_fn(|a| (patch[a] as f64 - 1.0) / 2.0);
    let mut out = vec![T::default(); patch.iter().product()];
    let plane = patch[1] * patch[2];
    if plane > 0 {
        out.par_chunks_mut(plane).enumerate().for_each(|(i, slab)| {
            let d0 = i as f64 - half[0];
            for j in 0..patch[1] {
                let d1 = j as f64 - half[1];
                for k in 0..patch[2] {
                    let d2 = k as f64 - half[2];
                    let x: [f64; 3] =
                        std::array::from_fn(|r| centre[r] + m[r][0] * d0 + m[r][1] * d1 + m[r][2] * d2);
                    slab[j * patch[2] + k] = f(x);
                }
            }
        });
    }
    Array3::from_shape_vec(patch, out).unwrap_or_else(|_| Array3::default(patch))
}

/// Trilinear interpolation with zero outside the array.
fn trilinear(src: &ArrayView3<'_, f32>, x: [f64; 3]) -> f32 {
    let sh = src.shape();
    let f0 = x[0].floor();
    let f1 = x[1].floor();
    let f2 = x[2].floor();
    let (i0, j0, k0) = (f0 as i64, f1 as i64, f2 as i64);
    if i0 < -1 || j0 < -1 || k0 < -1 || i0 >= sh[0] as i64 || j0 >= sh[1] as i64 || k0 >= sh[2] as i64 {
        return 0.0;
    }
    let t = [x[0] - f0, x[1] - f1, x[2] - f2];
    let mut acc = 0.0f64;
    for di in 0..2i64 {
        let i = i0 + di;
        if i < 0 || i >= sh[0] as i64 {
            continue;
        }
        let wi = if di == 0 { 1.0 - t[0] } else { t[0] };
        for dj in 0..2i64 {
            let j = j0 + dj;
            if j < 0 || j >= sh[1] as i64 {
                continue;
            }
            let wj = if dj == 0 { 1.0 - t[1] } else { t[1] };
            for dk in 0..2i64 {
                let k = k0 + dk;
                if k < 0 || k >= sh[2] as i64 {
                    continue;
                }
                let wk = if dk == 0 { 1.0 - t[2] } else { t[2] };
                acc += wi * wj * wk * f64::from(src[[i as usize, j as usize, k as usize]]);
            }
        }
    }
    acc as f32
}

/// Nearest-neighbour lookup (`floor(x + 0.5)`), `T::default()` outside the array.
fn nearest<T: Copy + Default>(src: &ArrayView3<'_, T>, x: [f64; 3]) -> T {
    let sh = src.shape();
    let mut idx = [0usize; 3];
    for a in 0..3 {
        let v = (x[a] + 0.5).floor();
        if !(v >= 0.0 && v < sh[a] as f64) {
            return T::default();
        }
        idx[a] = v as usize;
    }
    src[idx]
}

/// Sample an image patch of size `patch` centred at source coordinate `centre` (voxel units,
/// the patch's geometric centre) under `spatial`: trilinear, 0 outside the source.
pub fn sample_image(
    src: ArrayView3<'_, f32>,
    centre: [f64; 3],
    patch: [usize; 3],
    spatial: &SpatialParams,
) -> Array3<f32> {
    match integer_origin(spatial, centre, patch) {
        Some(origin) => copy_patch(src, origin, spatial.mirror, patch),
        None => map_patch(centre, patch, spatial, |x| trilinear(&src, x)),
    }
}

/// Sample a label patch like [`sample_image`], by nearest neighbour (0 outside the source).
pub fn sample_labels(
    src: ArrayView3<'_, u16>,
    centre: [f64; 3],
    patch: [usize; 3],
    spatial: &SpatialParams,
) -> Array3<u16> {
    match integer_origin(spatial, centre, patch) {
        Some(origin) => copy_patch(src, origin, spatial.mirror, patch),
        None => map_patch(centre, patch, spatial, |x| nearest(&src, x)),
    }
}

// ---------------------------------------------------------------------------------------------
// Intensity transforms.
// ---------------------------------------------------------------------------------------------

/// Sum in f64 over fixed chunks, combined in chunk order (independent of the thread count).
fn chunked_sum(data: &[f32], f: impl Fn(f32) -> f64 + Sync) -> f64 {
    let partial: Vec<f64> = data.par_chunks(CHUNK).map(|c| c.iter().map(|&v| f(v)).sum::<f64>()).collect();
    partial.into_iter().sum()
}

/// Mean and population standard deviation, f64, chunked (thread-count independent).
pub fn mean_std(data: &[f32]) -> (f64, f64) {
    if data.is_empty() {
        return (0.0, 0.0);
    }
    let n = data.len() as f64;
    let mean = chunked_sum(data, f64::from) / n;
    let var = chunked_sum(data, |v| (f64::from(v) - mean).powi(2)) / n;
    (mean, var.sqrt())
}

fn min_max(data: &[f32]) -> (f32, f32) {
    data.par_chunks(CHUNK)
        .map(|c| c.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v))))
        .reduce(|| (f32::INFINITY, f32::NEG_INFINITY), |a, b| (a.0.min(b.0), a.1.max(b.1)))
}

fn slice_mut(img: &mut Array3<f32>) -> Option<&mut [f32]> {
    img.as_slice_mut()
}

/// Add Gaussian noise with standard deviation `std`; the field is a function of `seed` only
/// (chunk `c` draws from `Rng::stream(seed, [c])`).
pub fn add_gaussian_noise(img: &mut Array3<f32>, std: f64, seed: u64) {
    let Some(data) = slice_mut(img) else { return };
    data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = Rng::stream(seed, &[c as u64]);
        for v in chunk {
            *v += (rng.normal() * std) as f32;
        }
    });
}

/// Multiply by `factor`.
pub fn multiply_brightness(img: &mut Array3<f32>, factor: f64) {
    let f = factor as f32;
    if let Some(data) = slice_mut(img) {
        data.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v *= f));
    }
}

/// nnU-Net's contrast: `(x − mean)·factor + mean`, clipped to the previous `[min, max]` when
/// `preserve_range`.
pub fn adjust_contrast(img: &mut Array3<f32>, factor: f64, preserve_range: bool) {
    let Some(data) = slice_mut(img) else { return };
    if data.is_empty() {
        return;
    }
    let (mean, _) = mean_std(data);
    let (lo, hi) = min_max(data);
    let (mean, f) = (mean as f32, factor as f32);
    data.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c {
            let x = (*v - mean) * f + mean;
            *v = if preserve_range { x.clamp(lo, hi) } else { x };
        }
    });
}

/// nnU-Net's gamma: `((x − min)/range)^γ·range + min` (range clamped to ≥ 1e-7), on the negated
/// image when `invert`, restoring mean and standard deviation when `retain_stats`.
pub fn gamma_transform(img: &mut Array3<f32>, gamma: f64, invert: bool, retain_stats: bool) {
    let Some(data) = slice_mut(img) else { return };
    if data.is_empty() {
        return;
    }
    if invert {
        data.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = -*v));
    }
    let before = retain_stats.then(|| mean_std(data));
    let (lo, hi) = min_max(data);
    let range = (hi - lo).max(1e-7);
    let g = gamma as f32;
    data.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c {
            *v = ((*v - lo) / range).max(0.0).powf(g) * range + lo;
        }
    });
    if let Some((mean, std)) = before {
        let (m2, s2) = mean_std(data);
        let ratio = (std / s2.max(1e-7)) as f32;
        let (m2, mean) = (m2 as f32, mean as f32);
        data.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = (*v - m2) * ratio + mean));
    }
    if invert {
        data.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = -*v));
    }
}

/// scipy's `reflect` boundary (`d c b a | a b c d | d c b a`) for index `i` on a line of `n`.
fn reflect(mut i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * n;
    i = i.rem_euclid(period);
    if i >= n { (period - 1 - i) as usize } else { i as usize }
}

/// A normalised Gaussian kernel with scipy's radius `int(4σ + 0.5)`.
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let w: Vec<f64> = (-radius..=radius).map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Convolve along one axis (reflect boundary), producing a new array. Each output slab (fixed
/// axis-0 index) is computed by one task with a fixed summation order (tap by tap).
fn convolve_axis(img: &Array3<f32>, axis: usize, kernel: &[f64]) -> Array3<f32> {
    let sh = [img.shape()[0], img.shape()[1], img.shape()[2]];
    let radius = (kernel.len() / 2) as i64;
    let w: Vec<f32> = kernel.iter().map(|&v| v as f32).collect();
    let std_img;
    let src: &[f32] = match img.as_slice() {
        Some(sl) => sl,
        None => {
            std_img = img.as_standard_layout().into_owned();
            std_img.as_slice().unwrap_or(&[])
        }
    };
    let (n1, n2) = (sh[1], sh[2]);
    let plane = n1 * n2;
    let mut out = vec![0f32; sh.iter().product()];
    if plane > 0 {
        out.par_chunks_mut(plane).enumerate().for_each(|(i, slab)| match axis {
            0 => {
                for (t, &wt) in w.iter().enumerate() {
                    let si = reflect(i as i64 + t as i64 - radius, sh[0] as i64);
                    let from = &src[si * plane..(si + 1) * plane];
                    slab.iter_mut().zip(from).for_each(|(o, &x)| *o += wt * x);
                }
            }
            1 => {
                let base = &src[i * plane..(i + 1) * plane];
                for j in 0..n1 {
                    let row = &mut slab[j * n2..(j + 1) * n2];
                    for (t, &wt) in w.iter().enumerate() {
                        let sj = reflect(j as i64 + t as i64 - radius, n1 as i64);
                        let from = &base[sj * n2..(sj + 1) * n2];
                        row.iter_mut().zip(from).for_each(|(o, &x)| *o += wt * x);
                    }
                }
            }
            _ => {
                let r = radius as usize;
                let mut padded = vec![0f32; n2 + 2 * r];
                for j in 0..n1 {
                    let from = &src[i * plane + j * n2..i * plane + (j + 1) * n2];
                    for (p, v) in padded.iter_mut().enumerate() {
                        *v = from[reflect(p as i64 - radius, n2 as i64)];
                    }
                    let row = &mut slab[j * n2..(j + 1) * n2];
                    for (t, &wt) in w.iter().enumerate() {
                        row.iter_mut().zip(&padded[t..t + n2]).for_each(|(o, &x)| *o += wt * x);
                    }
                }
            }
        });
    }
    Array3::from_shape_vec(sh, out).unwrap_or_else(|_| img.clone())
}

/// Separable Gaussian blur with σ per axis (voxels), scipy `gaussian_filter` semantics
/// (truncate 4, reflect boundary).
pub fn gaussian_blur(img: &mut Array3<f32>, sigma: [f64; 3]) {
    for (axis, &s) in sigma.iter().enumerate() {
        if s > 0.0 && img.shape()[axis] > 0 {
            *img = convolve_axis(img, axis, &gaussian_kernel(s));
        }
    }
}

/// PyTorch `interpolate(mode="nearest-exact")` source index.
fn nearest_exact_index(dst: usize, in_len: usize, out_len: usize) -> usize {
    let scale = in_len as f64 / out_len as f64;
    (((dst as f64 + 0.5) * scale).floor() as usize).min(in_len - 1)
}

/// PyTorch `interpolate(mode="trilinear", align_corners=False)` source coordinate: lower index,
/// upper index, weight of the upper.
fn linear_coord(dst: usize, in_len: usize, out_len: usize) -> (usize, usize, f64) {
    let scale = in_len as f64 / out_len as f64;
    let x = ((dst as f64 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (x.floor() as usize).min(in_len - 1);
    let i1 = (i0 + 1).min(in_len - 1);
    (i0, i1, x - i0 as f64)
}

/// Simulate a low resolution: downsample by `zoom` (shape rounded, at least 1) with
/// nearest-exact, then back with trilinear interpolation (nnU-Net / batchgeneratorsv2).
pub fn simulate_low_resolution(img: &mut Array3<f32>, zoom: f64) {
    let sh = [img.shape()[0], img.shape()[1], img.shape()[2]];
    if sh.contains(&0) {
        return;
    }
    let small: [usize; 3] = std::array::from_fn(|a| ((sh[a] as f64 * zoom).round() as usize).max(1));
    if small == sh {
        return;
    }
    let src = img.view();
    let idx: [Vec<usize>; 3] =
        std::array::from_fn(|a| (0..small[a]).map(|d| nearest_exact_index(d, sh[a], small[a])).collect());
    let down = Array3::from_shape_fn(small, |(i, j, k)| src[[idx[0][i], idx[1][j], idx[2][k]]]);
    let lin: [Vec<(usize, usize, f64)>; 3] =
        std::array::from_fn(|a| (0..sh[a]).map(|d| linear_coord(d, small[a], sh[a])).collect());
    let plane = sh[1] * sh[2];
    let mut out = vec![0f32; sh.iter().product()];
    out.par_chunks_mut(plane).enumerate().for_each(|(i, slab)| {
        let (i0, i1, ti) = lin[0][i];
        for j in 0..sh[1] {
            let (j0, j1, tj) = lin[1][j];
            for k in 0..sh[2] {
                let (k0, k1, tk) = lin[2][k];
                let g = |a: usize, b: usize, c: usize| f64::from(down[[a, b, c]]);
                let c00 = g(i0, j0, k0) * (1.0 - tk) + g(i0, j0, k1) * tk;
                let c01 = g(i0, j1, k0) * (1.0 - tk) + g(i0, j1, k1) * tk;
                let c10 = g(i1, j0, k0) * (1.0 - tk) + g(i1, j0, k1) * tk;
                let c11 = g(i1, j1, k0) * (1.0 - tk) + g(i1, j1, k1) * tk;
                let c0 = c00 * (1.0 - tj) + c01 * tj;
                let c1 = c10 * (1.0 - tj) + c11 * tj;
                slab[j * sh[2] + k] = (c0 * (1.0 - ti) + c1 * ti) as f32;
            }
        }
    });
    if let Ok(a) = Array3::from_shape_vec(sh, out) {
        *img = a;
    }
}

/// Apply the intensity part of `params` in nnU-Net's order: noise, blur, brightness, contrast,
/// low resolution, inverted gamma, gamma.
pub fn apply_intensity(img: &mut Array3<f32>, params: &AugmentParams, config: &AugmentConfig) {
    if img.as_slice().is_none() {
        *img = img.as_standard_layout().into_owned();
    }
    if let Some(std) = params.noise_std {
        add_gaussian_noise(img, std, params.noise_seed);
    }
    if let Some(sigma) = params.blur_sigma {
        gaussian_blur(img, sigma);
    }
    if let Some(f) = params.brightness {
        multiply_brightness(img, f);
    }
    if let Some(f) = params.contrast {
        adjust_contrast(img, f, config.contrast_preserve_range);
    }
    if let Some(z) = params.lowres_zoom {
        simulate_low_resolution(img, z);
    }
    if let Some(g) = params.inverted_gamma {
        gamma_transform(img, g, true, config.gamma_retain_stats);
    }
    if let Some(g) = params.gamma {
        gamma_transform(img, g, false, config.gamma_retain_stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: [usize; 3]) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(i, j, k)| (i * 100 + j * 10 + k) as f32)
    }

    #[test]
    fn identity_copy_and_out_of_bounds() {
        let src = ramp([6, 7, 8]);
        let id = SpatialParams::identity();
        // Centre so that output 0 maps to source [1, 2, 3]: centre = lo + (P − 1)/2.
        let p = [4, 4, 4];
        let c = [1.0 + 1.5, 2.0 + 1.5, 3.0 + 1.5];
        let out = sample_image(src.view(), c, p, &id);
        assert_eq!(out[[0, 0, 0]], src[[1, 2, 3]]);
        assert_eq!(out[[3, 3, 3]], src[[4, 5, 6]]);
        // Beyond the source: zero.
        let out = sample_image(src.view(), [4.5, 4.5, 4.5], [6, 6, 6], &id);
        assert_eq!(out[[0, 0, 0]], src[[2, 2, 2]]);
        assert_eq!(out[[5, 5, 5]], 0.0);
        // The generic path agrees with the copy path for a non-integer-aligned identity.
        let generic = map_patch(c, p, &id, |x| trilinear(&src.view(), x));
        assert_eq!(generic, sample_image(src.view(), c, p, &id));
    }

    #[test]
    fn mirroring_reverses_axes() {
        let src = ramp([4, 4, 4]);
        let m = SpatialParams { mirror: [true, false, false], ..SpatialParams::identity() };
        let out = sample_image(src.view(), [1.5, 1.5, 1.5], [4, 4, 4], &m);
        assert_eq!(out[[0, 1, 2]], src[[3, 1, 2]]);
        let l = src.mapv(|v| v as u16);
        let ol = sample_labels(l.view(), [1.5, 1.5, 1.5], [4, 4, 4], &m);
        assert_eq!(ol[[0, 1, 2]], l[[3, 1, 2]]);
    }

    #[test]
    fn trilinear_interpolates_and_fades_at_edges() {
        let src = ramp([3, 3, 3]);
        let v = trilinear(&src.view(), [0.5, 1.0, 1.25]);
        assert!((v - (50.0 + 10.0 + 1.25)).abs() < 1e-4);
        let e = trilinear(&src.view(), [-0.5, 1.0, 1.0]);
        assert!((e - 0.5 * 11.0).abs() < 1e-4);
        assert_eq!(trilinear(&src.view(), [-1.0, 0.0, 0.0]), 0.0);
        assert_eq!(nearest(&src.view(), [2.49, 0.0, 0.0]), 200.0);
        assert_eq!(nearest(&src.view(), [2.5, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn reflect_boundary_and_blur_preserves_constant() {
        assert_eq!((-3..7).map(|i| reflect(i, 4)).collect::<Vec<_>>(), vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        let mut c = Array3::<f32>::from_elem((5, 6, 7), 2.0);
        gaussian_blur(&mut c, [0.7, 1.0, 0.5]);
        assert!(c.iter().all(|&v| (v - 2.0).abs() < 1e-5));
        let mut d = Array3::<f32>::zeros((9, 9, 9));
        d[[4, 4, 4]] = 1.0;
        gaussian_blur(&mut d, [1.0, 1.0, 1.0]);
        assert!((d.sum() - 1.0).abs() < 1e-4);
        assert!(d[[4, 4, 4]] < 0.1 && d[[4, 4, 5]] > 0.0);
    }

    #[test]
    fn contrast_gamma_and_lowres_behave() {
        let mut img = ramp([4, 5, 6]).mapv(|v| v / 100.0 - 2.0);
        let (m0, s0) = mean_std(img.as_slice().unwrap());
        let (lo, hi) = min_max(img.as_slice().unwrap());
        adjust_contrast(&mut img, 1.25, true);
        let (lo2, hi2) = min_max(img.as_slice().unwrap());
        assert!(lo2 >= lo && hi2 <= hi);
        gamma_transform(&mut img, 1.3, false, true);
        let (m1, _) = mean_std(img.as_slice().unwrap());
        let mut g = ramp([4, 5, 6]).mapv(|v| v / 100.0 - 2.0);
        gamma_transform(&mut g, 0.8, true, true);
        let (m2, s2) = mean_std(g.as_slice().unwrap());
        assert!((m2 - m0).abs() < 1e-4 && (s2 - s0).abs() < 1e-4, "{m0} {s0} {m2} {s2}");
        assert!(m1.is_finite());
        let mut c = Array3::<f32>::from_elem((8, 8, 8), 3.0);
        simulate_low_resolution(&mut c, 0.5);
        assert!(c.iter().all(|&v| (v - 3.0).abs() < 1e-6));
        let mut r = ramp([8, 8, 8]);
        simulate_low_resolution(&mut r, 0.5);
        assert_eq!(r.shape(), &[8, 8, 8]);
        assert!(r != ramp([8, 8, 8]));
    }

    #[test]
    fn noise_is_seeded_and_scaled() {
        let mut a = Array3::<f32>::zeros((40, 40, 40));
        let mut b = a.clone();
        add_gaussian_noise(&mut a, 0.1, 9);
        add_gaussian_noise(&mut b, 0.1, 9);
        assert_eq!(a, b);
        let (m, s) = mean_std(a.as_slice().unwrap());
        assert!(m.abs() < 0.005 && (s - 0.1).abs() < 0.005, "{m} {s}");
    }

    #[test]
    fn config_serde_defaults_and_round_trip() {
        let c: AugmentConfig = serde_json::from_str(r#"{"p_rotation": 0.5}"#).unwrap();
        assert_eq!(c, AugmentConfig { p_rotation: 0.5, ..AugmentConfig::default() });
        let back: AugmentConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<AugmentConfig>(r#"{"p_rotatoin": 0.5}"#).is_err());
        assert_eq!(AugmentConfig::default().mirror_axes, [true, true, false]);
    }

    #[test]
    fn sampled_parameters_follow_the_config() {
        let cfg = AugmentConfig::default();
        let mut rng = Rng::new(4);
        let n = 20_000;
        let mut rot = 0;
        let mut mirror = [0; 3];
        let mut low_gamma = 0;
        let mut gammas = 0;
        for _ in 0..n {
            let p = cfg.sample(&mut rng);
            if p.spatial.angles.iter().any(|&a| a != 0.0) {
                rot += 1;
                assert!(p.spatial.angles.iter().all(|a| a.abs() <= std::f64::consts::PI / 6.0));
            }
            for (m, &on) in mirror.iter_mut().zip(&p.spatial.mirror) {
                *m += usize::from(on);
            }
            if let Some(g) = p.gamma {
                gammas += 1;
                low_gamma += usize::from(g < 1.0);
                assert!((0.7..1.5).contains(&g));
            }
        }
        let frac = |c: usize| c as f64 / n as f64;
        assert!((frac(rot) - 0.2).abs() < 0.015);
        assert!((frac(mirror[0]) - 0.5).abs() < 0.02 && (frac(mirror[1]) - 0.5).abs() < 0.02);
        assert_eq!(mirror[2], 0, "never mirror left–right");
        assert!((low_gamma as f64 / gammas as f64 - 0.5).abs() < 0.04);
        let none = AugmentConfig::none().sample(&mut rng);
        assert_eq!(AugmentParams { noise_seed: 0, ..none }, AugmentParams::identity());
    }
}
