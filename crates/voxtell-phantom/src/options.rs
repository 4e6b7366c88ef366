//! The label values of a phantom, its intensity range, the generator's version and its options
//! ([`PhantomOptions`], with their checks). A leaf: the anatomy, the case generator, the dataset
//! writer and the vocabulary all read it.

use serde::{Deserialize, Serialize};

use crate::error::{PhantomError, Result};

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
    /// A harder distribution than the default, the generator's defaults before they became the
    /// demo model's training settings: finer voxels, more noise, and smaller, fainter lesions in
    /// more cases. The other fields are the defaults; `seed` as given.
    pub fn challenging(seed: u64) -> Self {
        PhantomOptions {
            seed,
            inplane_spacing_mm: [2.2, 3.2],
            slice_spacing_mm: [2.5, 4.0],
            noise_sd_hu: [10.0, 25.0],
            lesion_case_fraction: 0.8,
            lesion_radius_mm: [9.0, 20.0],
            lesion_contrast_hu: [35.0, 55.0],
            ..PhantomOptions::default()
        }
    }

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
    pub(crate) fn sanitized(&self) -> PhantomOptions {
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
