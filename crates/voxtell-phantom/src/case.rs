//! One phantom case: [`generate_case`] draws a case from `(seed, index)` alone and stores it in
//! RAS or another orientation (the label values and options are in `options.rs`).

use ndarray::{Array3, Axis};
use voxtell_io::Affine;
use voxtell_io::orientation::{io_orientation, matmul};

use crate::anatomy::{AIR_HU, Anatomy};
use crate::geometry::{Grid, LabelGrid, convolve_axis, gaussian_kernel};
use crate::options::{HU_RANGE, PhantomOptions};
use crate::rng::Rng;

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
