//! One phantom case: the label values, the generator's options, and [`generate_case`], which
//! draws a case from `(seed, index)` alone and stores it in RAS or another orientation.

use ndarray::{Array3, Axis};
use serde::{Deserialize, Serialize};
use voxtell_io::Affine;
use voxtell_io::orientation::{io_orientation, matmul};

use crate::anatomy::{AIR_HU, Anatomy};
use crate::error::{PhantomError, Result};
use crate::geometry::{Grid, LabelGrid, convolve_axis, gaussian_kernel};
use crate::rng::Rng;

/// Label value of the background.
pub const BACKGROUND: u8 = 0;
/// Label value of the liver parenchyma (lesions excluded: they have [`LIVER_LESION`]).
pub const LIVER: u8 = 1;
/// Label value of the spleen.
pub const SPLEEN: u8 = 2;
/// Label value of the left kidney (the patient's left: negative RAS x). Kidney cysts are part
/// of their kidney's label.
pub const KIDNEY_LEFT: u8 = 3;
/// Label value of the right kidney (the patient's right: positive RAS x).
pub const KIDNEY_RIGHT: u8 = 4;
/// Label value of the vertebrae (bodies and posterior elements; discs and the sacrum are not
/// labelled).
pub const VERTEBRAE: u8 = 5;
/// Label value of the aorta (down to its bifurcation).
pub const AORTA: u8 = 6;
/// Label value of the urinary bladder (wall included).
pub const URINARY_BLADDER: u8 = 7;
/// Label value of the left lung.
pub const LUNG_LEFT: u8 = 8;
/// Label value of the right lung.
pub const LUNG_RIGHT: u8 = 9;
/// Label value of liver lesions.
pub const LIVER_LESION: u8 = 10;

/// The labels of `dataset.json`, background first.
pub const LABELS: [(&str, u8); 11] = [
    ("background", BACKGROUND),
    ("liver", LIVER),
    ("spleen", SPLEEN),
    ("kidney_left", KIDNEY_LEFT),
    ("kidney_right", KIDNEY_RIGHT),
    ("vertebrae", VERTEBRAE),
    ("aorta", AORTA),
    ("urinary_bladder", URINARY_BLADDER),
    ("lung_left", LUNG_LEFT),
    ("lung_right", LUNG_RIGHT),
    ("liver_lesion", LIVER_LESION),
];

/// The range images are clamped to (a 12-bit CT range, in HU).
pub const HU_RANGE: (f32, f32) = (-1024.0, 3071.0);

/// Version of the generator, stored in `dataset.json`: phantoms of equal seed and options are
/// identical within one version.
pub const GENERATOR_VERSION: u32 = 1;

/// What to generate. Every range is `[low, high]`, sampled uniformly per case. The defaults
/// are the embedded demo model's training distribution (see the module's "Defaults"); a
/// deserialized value takes the default for every field it does not name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomOptions {
    /// Number of cases [`write_dataset`] writes (indices `0..cases`).
    pub cases: usize,
    /// The seed; case `i` depends only on `(seed, i)` and the other options.
    pub seed: u64,
    /// In-plane (x, y) voxel spacing range, mm.
    pub inplane_spacing_mm: [f64; 2],
    /// Slice (z) spacing range, mm.
    pub slice_spacing_mm: [f64; 2],
    /// Upper bound on voxels per case: larger grids get a proportionally coarser spacing.
    pub max_voxels: usize,
    /// Overall anatomy size factor (1: a compact adult torso about 240 × 170 mm).
    pub scale: f64,
    /// Relative organ size variation (0.2: ±20 %).
    pub size_jitter: f64,
    /// Organ position variation, ± mm.
    pub position_jitter_mm: f64,
    /// Per-tissue intensity variation, ± HU.
    pub intensity_jitter_hu: f64,
    /// Standard deviation range of the image noise, HU.
    pub noise_sd_hu: [f64; 2],
    /// Partial-volume blur: standard deviation of a Gaussian in voxels along each axis (0: none).
    pub blur_voxels: f64,
    /// Whether to place lesions at all.
    pub include_lesions: bool,
    /// Fraction of cases with liver lesions (when `include_lesions`).
    pub lesion_case_fraction: f64,
    /// Most liver lesions per case (1 to this many are placed in a case that has lesions).
    pub max_liver_lesions: usize,
    /// Radius range of liver lesions, mm (before `scale`).
    pub lesion_radius_mm: [f64; 2],
    /// How much darker than the liver its lesions are, HU (hypodense lesions; sampled once per
    /// case).
    pub lesion_contrast_hu: [f64; 2],
    /// Fraction of cases with a cyst in one kidney (when `include_lesions`).
    pub kidney_cyst_fraction: f64,
    /// Fraction of cases stored in a non-RAS voxel order (a random axis permutation and flips
    /// with the matching affine).
    pub non_ras_fraction: f64,
}

impl Default for PhantomOptions {
    fn default() -> Self {
        PhantomOptions {
            cases: 20,
            seed: 0,
            inplane_spacing_mm: [4.0, 5.0],
            slice_spacing_mm: [5.0, 6.0],
            max_voxels: 1_000_000,
            scale: 1.0,
            size_jitter: 0.2,
            position_jitter_mm: 12.0,
            intensity_jitter_hu: 15.0,
            noise_sd_hu: [6.0, 14.0],
            blur_voxels: 0.5,
            include_lesions: true,
            lesion_case_fraction: 0.65,
            max_liver_lesions: 3,
            lesion_radius_mm: [15.0, 28.0],
            lesion_contrast_hu: [45.0, 65.0],
            kidney_cyst_fraction: 0.3,
            non_ras_fraction: 1.0 / 3.0,
        }
    }
}

impl PhantomOptions {
    /// Check that the options describe something sensible.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(PhantomError::Options(what));
        for (name, r) in
            [("inplane_spacing_mm", self.inplane_spacing_mm), ("slice_spacing_mm", self.slice_spacing_mm)]
        {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] >= 0.3 && r[0] <= r[1] && r[1] <= 20.0) {
                return bad(format!("{name} {r:?} must be an ordered range within [0.3, 20] mm"));
            }
        }
        let l = self.lesion_radius_mm;
        if !(l[0].is_finite() && l[1].is_finite() && l[0] >= 1.0 && l[0] <= l[1] && l[1] <= 60.0) {
            return bad(format!("lesion_radius_mm {l:?} must be an ordered range within [1, 60] mm"));
        }
        let n = self.noise_sd_hu;
        if !(n[0].is_finite() && n[1].is_finite() && n[0] >= 0.0 && n[0] <= n[1] && n[1] <= 1000.0) {
            return bad(format!("noise_sd_hu {n:?} must be an ordered range within [0, 1000] HU"));
        }
        let c = self.lesion_contrast_hu;
        if !(c[0].is_finite() && c[1].is_finite() && c[0] >= 0.0 && c[0] <= c[1] && c[1] <= 500.0) {
            return bad(format!("lesion_contrast_hu {c:?} must be an ordered range within [0, 500] HU"));
        }
        if !(self.scale.is_finite() && (0.25..=4.0).contains(&self.scale)) {
            return bad(format!("scale {} must be within [0.25, 4]", self.scale));
        }
        if !(self.size_jitter.is_finite() && (0.0..=0.5).contains(&self.size_jitter)) {
            return bad(format!("size_jitter {} must be within [0, 0.5]", self.size_jitter));
        }
        for (name, v, hi) in [
            ("position_jitter_mm", self.position_jitter_mm, 50.0),
            ("intensity_jitter_hu", self.intensity_jitter_hu, 100.0),
            ("blur_voxels", self.blur_voxels, 3.0),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return bad(format!("{name} {v} must be within [0, {hi}]"));
            }
        }
        for (name, v) in [
            ("lesion_case_fraction", self.lesion_case_fraction),
            ("kidney_cyst_fraction", self.kidney_cyst_fraction),
            ("non_ras_fraction", self.non_ras_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} {v} must be within [0, 1]"));
            }
        }
        if self.max_voxels < 4096 {
            return bad(format!("max_voxels {} is too small (at least 4096)", self.max_voxels));
        }
        Ok(())
    }

    /// The options with every value forced into its valid range (what [`generate_case`] uses).
    fn sanitized(&self) -> PhantomOptions {
        let range = |r: [f64; 2], lo: f64, hi: f64| {
            let a = if r[0].is_finite() { r[0].clamp(lo, hi) } else { lo };
            let b = if r[1].is_finite() { r[1].clamp(lo, hi) } else { a };
            [a.min(b), a.max(b)]
        };
        let value =
            |v: f64, lo: f64, hi: f64, default: f64| if v.is_finite() { v.clamp(lo, hi) } else { default };
        PhantomOptions {
            inplane_spacing_mm: range(self.inplane_spacing_mm, 0.3, 20.0),
            slice_spacing_mm: range(self.slice_spacing_mm, 0.3, 20.0),
            max_voxels: self.max_voxels.max(4096),
            scale: value(self.scale, 0.25, 4.0, 1.0),
            size_jitter: value(self.size_jitter, 0.0, 0.5, 0.2),
            position_jitter_mm: value(self.position_jitter_mm, 0.0, 50.0, 12.0),
            intensity_jitter_hu: value(self.intensity_jitter_hu, 0.0, 100.0, 15.0),
            noise_sd_hu: range(self.noise_sd_hu, 0.0, 1000.0),
            lesion_radius_mm: range(self.lesion_radius_mm, 1.0, 60.0),
            lesion_contrast_hu: range(self.lesion_contrast_hu, 0.0, 500.0),
            blur_voxels: value(self.blur_voxels, 0.0, 3.0, 0.5),
            ..self.clone()
        }
    }
}

/// One generated phantom, in its storage voxel order.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomCase {
    /// The case index.
    pub index: usize,
    /// The CT image in HU (integral values within [`HU_RANGE`]).
    pub image: Array3<f32>,
    /// The label map ([`LABELS`]), same grid.
    pub labels: Array3<u8>,
    /// Voxel index → RAS+ world mm.
    pub affine: Affine,
    /// The storage orientation, e.g. `"RAS"` or `"LPS"` (nibabel's axcodes).
    pub axcodes: String,
    /// Number of liver lesions placed.
    pub liver_lesions: usize,
    /// Whether a kidney has a cyst.
    pub kidney_cyst: bool,
}

impl PhantomCase {
    /// Voxel spacing along the storage axes, mm.
    pub fn spacing(&self) -> [f64; 3] {
        voxtell_io::orientation::spacing(&self.affine)
    }

    /// The volume of one voxel, ml.
    pub fn voxel_volume_ml(&self) -> f64 {
        self.spacing().iter().product::<f64>() / 1000.0
    }

    /// The volume of a label, ml.
    pub fn volume_ml(&self, label: u8) -> f64 {
        self.labels.iter().filter(|&&l| l == label).count() as f64 * self.voxel_volume_ml()
    }

    /// The centroid of a label in world (RAS+ mm) coordinates, `None` when absent.
    pub fn centroid_world(&self, label: u8) -> Option<[f64; 3]> {
        let mut sum = [0f64; 3];
        let mut n = 0usize;
        for ((i, j, k), &l) in self.labels.indexed_iter() {
            if l == label {
                sum[0] += i as f64;
                sum[1] += j as f64;
                sum[2] += k as f64;
                n += 1;
            }
        }
        (n > 0).then(|| {
            let v = sum.map(|s| s / n as f64);
            world(&self.affine, v)
        })
    }
}

/// The world position of (fractional) voxel index `v`.
pub fn world(affine: &Affine, v: [f64; 3]) -> [f64; 3] {
    let mut w = [0.0; 3];
    for (r, out) in w.iter_mut().enumerate() {
        *out = affine[r][0] * v[0] + affine[r][1] * v[1] + affine[r][2] * v[2] + affine[r][3];
    }
    w
}

/// The random streams of one case, one per part, so that changing one part's options leaves
/// the draws of the others unchanged (the discriminant is the stream's key).
#[derive(Debug, Clone, Copy)]
enum Stream {
    Geometry = 0,
    Intensity = 1,
    Lesions = 2,
    Grid = 3,
    Noise = 4,
    Orientation = 5,
}

/// Generate case `index`: a pure function of `options` (everything but `cases`) and `index`.
/// Out-of-range options are clamped to their valid range (see [`PhantomOptions::validate`]).
pub fn generate_case(options: &PhantomOptions, index: usize) -> PhantomCase {
    let o = options.sanitized();
    let stream = |part: Stream| Rng::stream(o.seed, &[index as u64, part as u64]);
    let anatomy = Anatomy::sample(
        &mut stream(Stream::Geometry),
        &mut stream(Stream::Intensity),
        &mut stream(Stream::Lesions),
        &o,
    );

    // The grid: random spacing, the anatomy's field of view, a random table position.
    let mut grid_rng = stream(Stream::Grid);
    let inplane = grid_rng.range(o.inplane_spacing_mm[0], o.inplane_spacing_mm[1]);
    let mut spacing = [inplane, inplane, grid_rng.range(o.slice_spacing_mm[0], o.slice_spacing_mm[1])];
    let shift = [grid_rng.range(-25.0, 25.0), grid_rng.range(-25.0, 25.0), grid_rng.range(-300.0, 200.0)];
    let ranges = [anatomy.x_range, anatomy.y_range, anatomy.z_range];
    let shape_for = |sp: [f64; 3]| -> [usize; 3] {
        [0, 1, 2].map(|a| (((ranges[a].1 - ranges[a].0) / sp[a]).round() as usize + 1).clamp(8, 32000))
    };
    let mut shape = shape_for(spacing);
    let voxels = shape.iter().product::<usize>() as f64;
    if voxels > o.max_voxels as f64 {
        let f = (voxels / o.max_voxels as f64).cbrt() * 1.0001;
        spacing = spacing.map(|s| s * f);
        shape = shape_for(spacing);
        while shape.iter().product::<usize>() > o.max_voxels {
            spacing = spacing.map(|s| s * 1.01);
            shape = shape_for(spacing);
        }
    }
    let origin =
        [0, 1, 2].map(|a| (ranges[a].0 + ranges[a].1) / 2.0 - (shape[a] - 1) as f64 * spacing[a] / 2.0);
    let grid = Grid { shape, spacing, origin };

    let mut painted = LabelGrid::new(grid, AIR_HU);
    anatomy.paint(&mut painted);
    let LabelGrid { mut hu, labels, .. } = painted;

    // Partial volume: a small Gaussian along every axis.
    let kernel = gaussian_kernel(o.blur_voxels);
    for axis in 0..3 {
        convolve_axis(&mut hu, shape, axis, &kernel);
    }

    // Noise, slightly correlated in-plane like reconstructed CT noise, and a calibration offset.
    let mut noise_rng = stream(Stream::Noise);
    let sd = noise_rng.range(o.noise_sd_hu[0], o.noise_sd_hu[1]);
    let offset = noise_rng.range(-5.0, 5.0) as f32;
    let mut noise: Vec<f32> = (0..hu.len()).map(|_| noise_rng.normal() as f32).collect();
    let nk = gaussian_kernel(0.6);
    convolve_axis(&mut noise, shape, 0, &nk);
    convolve_axis(&mut noise, shape, 1, &nk);
    let gain = (sd / nk.iter().map(|w| w * w).sum::<f64>()) as f32;
    for (v, n) in hu.iter_mut().zip(&noise) {
        *v = (*v + offset + gain * n).round().clamp(HU_RANGE.0, HU_RANGE.1);
    }

    let image_ras = Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(i, j, k)| hu[grid.flat(i, j, k)]);
    let labels_ras =
        Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(i, j, k)| labels[grid.flat(i, j, k)]);
    let mut affine_ras: Affine = [[0.0; 4]; 4];
    for a in 0..3 {
        affine_ras[a][a] = spacing[a];
        affine_ras[a][3] = origin[a] + shift[a];
    }
    affine_ras[3][3] = 1.0;

    // Storage order: RAS, or a random signed axis permutation.
    let mut orient_rng = stream(Stream::Orientation);
    let non_ras = orient_rng.bernoulli(o.non_ras_fraction);
    let choice = 1 + orient_rng.below(47) as usize;
    let (perm, flip) = if non_ras { signed_permutation(choice) } else { ([0, 1, 2], [false; 3]) };
    let image = reorder(&image_ras, perm, flip);
    let labels = reorder(&labels_ras, perm, flip);
    let affine = matmul(&affine_ras, &reorder_affine(shape, perm, flip));
    let axcodes = io_orientation(&affine).map_or_else(|| "???".to_string(), |o| o.axcodes());

    PhantomCase {
        index,
        image,
        labels,
        affine,
        axcodes,
        liver_lesions: anatomy.liver_lesion_count(),
        kidney_cyst: anatomy.has_kidney_cyst(),
    }
}

/// Signed permutation number `n` of 48 (0 is the identity): storage axis `m` holds RAS axis
/// `perm[m]`, reversed where `flip[perm[m]]`.
fn signed_permutation(n: usize) -> ([usize; 3], [bool; 3]) {
    const PERMS: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let perm = PERMS[(n / 8) % 6];
    let flip = [n & 1 != 0, n & 2 != 0, n & 4 != 0];
    (perm, flip)
}

/// The RAS-ordered array `a` in storage order.
fn reorder<T: Clone>(a: &Array3<T>, perm: [usize; 3], flip: [bool; 3]) -> Array3<T> {
    let mut v = a.view();
    for (axis, &f) in flip.iter().enumerate() {
        if f {
            v.invert_axis(Axis(axis));
        }
    }
    v.permuted_axes(perm).as_standard_layout().into_owned()
}

/// The affine taking storage indices to RAS-grid indices, for a RAS grid of `shape`.
fn reorder_affine(shape: [usize; 3], perm: [usize; 3], flip: [bool; 3]) -> Affine {
    let mut m: Affine = [[0.0; 4]; 4];
    m[3][3] = 1.0;
    for (storage_axis, &r) in perm.iter().enumerate() {
        if flip[r] {
            m[r][storage_axis] = -1.0;
            m[r][3] = (shape[r] - 1) as f64;
        } else {
            m[r][storage_axis] = 1.0;
        }
    }
    m
}
