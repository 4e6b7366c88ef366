//! Per-mask statistics (size, volume, bounding box, centroid, and the scan's intensity inside
//! the mask) and their JSON file.
//!
//! Statistics are computed in the original voxel grid of the scan, the grid the mask files are
//! written in, with the scan's affine (voxel index → RAS+ world millimetres) for the world
//! coordinates. The JSON file is written atomically through [`voxtell_io::atomic`], so a reader
//! never sees half a file.

use std::path::Path;

use ndarray::ArrayView3;
use serde::Serialize;

use crate::error::{InferError, Result};

/// Statistics of one mask (non-zero where the value is not 0).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskStatistics {
    /// The prompt as typed.
    pub prompt: String,
    /// Number of non-zero voxels.
    pub voxels: u64,
    /// Volume in millilitres: voxels × |det| of the affine's 3 × 3 part (mm³) / 1000.
    pub volume_ml: f64,
    /// Bounding box of the non-zero voxels, `[start, end)` per array axis; `None` when empty.
    pub bbox_voxels: Option<[[usize; 2]; 3]>,
    /// Minimum and maximum RAS+ world corner (mm) of the eight bounding-box corners, taken at the
    /// voxel centres of the first and last voxel on each axis; `None` when empty.
    pub bbox_world_mm: Option<[[f64; 3]; 2]>,
    /// Mean voxel index of the non-zero voxels; `None` when empty.
    pub centroid_voxel: Option<[f64; 3]>,
    /// [`Self::centroid_voxel`] mapped by the affine to RAS+ world mm; `None` when empty.
    pub centroid_world_mm: Option<[f64; 3]>,
    /// The scan's values inside the mask; `None` when the mask is empty, when the scan is not
    /// given ([`compute`] alone) or when none of its values there is finite.
    pub intensity: Option<Intensity>,
}

/// The scan's values inside one mask, in the scan's own units (Hounsfield units for CT, the
/// DICOM values after RescaleSlope and RescaleIntercept). Non-finite values are left out.
/// Computed as numpy computes them from the same values: the mean, the population standard
/// deviation (`np.std`, `ddof=0`) and the percentiles with numpy's default linear
/// interpolation (`np.percentile(v, q)`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intensity {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// 5th percentile.
    pub p5: f64,
    /// Median (50th percentile).
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

impl Intensity {
    /// The figures of `values` (reordered in place: sorted); `None` when none is finite.
    pub fn of_values(values: &mut Vec<f32>) -> Option<Intensity> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f32::total_cmp);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        Some(Intensity {
            mean,
            std: var.sqrt(),
            min: f64::from(values[0]),
            max: f64::from(values[values.len() - 1]),
            p5: quantile(values, 0.05),
            p50: quantile(values, 0.5),
            p95: quantile(values, 0.95),
        })
    }
}

/// numpy's linear quantile `q` (0 to 1) of `sorted` (ascending, not empty): the value at
/// position `(n − 1)·q`, interpolated between its two neighbours as numpy's `_lerp` does (from
/// the upper neighbour when the fraction is at least one half). The preview's grey window uses
/// it too.
pub(crate) fn quantile(sorted: &[f32], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = h - lo as f64;
    let (a, b) = (f64::from(sorted[lo]), f64::from(sorted[hi]));
    let diff = b - a;
    if t >= 0.5 { b - diff * (1.0 - t) } else { a + diff * t }
}

/// The scan's values where prompt `i`'s mask is set: read through the crop box the mask is
/// held in, so nothing but these values is copied.
fn mask_values(image: ArrayView3<f32>, masks: &crate::Masks, i: usize) -> Vec<f32> {
    let Some(cropped) = masks.cropped_mask(i) else { return Vec::new() };
    let b = masks.bbox();
    let region = image.slice(ndarray::s![b[0][0]..b[0][1], b[1][0]..b[1][1], b[2][0]..b[2][1]]);
    let mut values = Vec::new();
    ndarray::Zip::from(cropped).and(&region).for_each(|&m, &v| {
        if m != 0 {
            values.push(v);
        }
    });
    values
}

/// Statistics of every prompt of one case, the content of `{case}_statistics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseStatistics {
    /// The case identifier.
    pub case: String,
    /// The image the masks were predicted from (a file or a DICOM folder), as given.
    pub source: String,
    /// Shape of the original voxel grid.
    pub shape: [usize; 3],
    /// Voxel spacing in mm along the array axes (see `voxtell_io::orientation::spacing`).
    pub spacing_mm: [f64; 3],
    /// One entry per prompt, in prompt order.
    pub prompts: Vec<MaskStatistics>,
    /// The prompts whose mask is empty, in prompt order (a DICOM SEG has no segment for them).
    pub empty_prompts: Vec<String>,
}

/// Maps a (fractional) voxel index to world coordinates with `affine`.
fn apply(affine: &voxtell_io::Affine, ijk: [f64; 3]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (r, o) in out.iter_mut().enumerate() {
        *o = affine[r][0] * ijk[0] + affine[r][1] * ijk[1] + affine[r][2] * ijk[2] + affine[r][3];
    }
    out
}

/// The volume of one voxel in mm³: |det| of the 3 × 3 part of `affine`.
pub fn voxel_volume_mm3(affine: &voxtell_io::Affine) -> f64 {
    let m = affine;
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    det.abs()
}

/// Statistics of `mask` (non-zero where the value is not 0) in the grid described by `affine`.
pub fn compute(prompt: &str, mask: ArrayView3<u8>, affine: &voxtell_io::Affine) -> MaskStatistics {
    let mut count: u64 = 0;
    let mut sums = [0u64; 3];
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (i, plane) in mask.outer_iter().enumerate() {
        for (j, row) in plane.outer_iter().enumerate() {
            let mut row_count: u64 = 0;
            let mut k_sum: u64 = 0;
            for (k, &v) in row.iter().enumerate() {
                if v != 0 {
                    row_count += 1;
                    k_sum += k as u64;
                    lo[2] = lo[2].min(k);
                    hi[2] = hi[2].max(k + 1);
                }
            }
            if row_count > 0 {
                count += row_count;
                sums[0] += row_count * i as u64;
                sums[1] += row_count * j as u64;
                sums[2] += k_sum;
                lo[0] = lo[0].min(i);
                hi[0] = hi[0].max(i + 1);
                lo[1] = lo[1].min(j);
                hi[1] = hi[1].max(j + 1);
            }
        }
    }
    let volume_ml = count as f64 * voxel_volume_mm3(affine) / 1000.0;
    if count == 0 {
        return MaskStatistics {
            prompt: prompt.to_string(),
            voxels: 0,
            volume_ml,
            bbox_voxels: None,
            bbox_world_mm: None,
            centroid_voxel: None,
            centroid_world_mm: None,
            intensity: None,
        };
    }
    let centroid = sums.map(|s| s as f64 / count as f64);
    let mut wmin = [f64::INFINITY; 3];
    let mut wmax = [f64::NEG_INFINITY; 3];
    for corner in 0..8 {
        let ijk: [f64; 3] =
            std::array::from_fn(|a| if corner >> a & 1 == 0 { lo[a] as f64 } else { (hi[a] - 1) as f64 });
        let w = apply(affine, ijk);
        for a in 0..3 {
            wmin[a] = wmin[a].min(w[a]);
            wmax[a] = wmax[a].max(w[a]);
        }
    }
    MaskStatistics {
        prompt: prompt.to_string(),
        voxels: count,
        volume_ml,
        bbox_voxels: Some(std::array::from_fn(|a| [lo[a], hi[a]])),
        bbox_world_mm: Some([wmin, wmax]),
        centroid_voxel: Some(centroid),
        centroid_world_mm: Some(apply(affine, centroid)),
        intensity: None,
    }
}

/// Statistics of every mask of a prediction, measured in the scan's own grid, with the scan's
/// intensity inside each mask: `case` names the case, `source` the image it came from, and
/// `image` is that image as the predictor read it (its (S, A, R) grid is the masks'; another
/// shape is an [`InferError::Invalid`]).
pub fn of_masks(
    case: &str,
    source: &str,
    image: &voxtell_io::RasVolume,
    masks: &crate::Masks,
) -> Result<CaseStatistics> {
    if image.data.shape() != masks.ras_shape() {
        return Err(InferError::Invalid(format!(
            "statistics of {case}: the image's shape {:?} is not the masks' {:?}",
            image.data.shape(),
            masks.ras_shape()
        )));
    }
    let geometry = masks.geometry();
    let mut prompts = Vec::with_capacity(masks.len());
    for (i, p) in masks.prompts().iter().enumerate() {
        let (original, affine) = geometry.restore(masks.mask(i)?.view())?;
        let mut s = compute(p, original.view(), &affine);
        drop(original);
        s.intensity = Intensity::of_values(&mut mask_values(image.data.view(), masks, i));
        prompts.push(s);
    }
    Ok(CaseStatistics {
        case: case.to_string(),
        source: source.to_string(),
        shape: geometry.original_shape,
        spacing_mm: voxtell_io::orientation::spacing(&geometry.original_affine),
        empty_prompts: prompts.iter().filter(|p| p.voxels == 0).map(|p| p.prompt.clone()).collect(),
        prompts,
    })
}

/// Writes `stats` as pretty-printed JSON to `path`, atomically (through
/// [`voxtell_io::atomic`]: a temporary file in the same folder, flushed, then moved into place).
/// An existing file is replaced only when `overwrite` is true; otherwise it is
/// [`voxtell_io::IoError::OutputExists`]. Every error names `path`.
pub fn write_statistics(path: &Path, stats: &CaseStatistics, overwrite: bool) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(stats)
        .map_err(|e| InferError::Output { path: path.to_path_buf(), reason: e.to_string() })?;
    json.push(b'\n');
    Ok(voxtell_io::atomic::write_bytes(path, &json, overwrite)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, s};
    use std::fs;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn scaled_and_translated_affine() {
        let affine =
            [[2.0, 0.0, 0.0, 10.0], [0.0, 3.0, 0.0, -20.0], [0.0, 0.0, 4.0, 5.0], [0.0, 0.0, 0.0, 1.0]];
        let mut m = Array3::<u8>::zeros((10, 8, 6));
        m.slice_mut(s![2..5, 1..3, 4..6]).fill(1); // 3 * 2 * 2 = 12 voxels
        let st = compute("liver", m.view(), &affine);
        assert_eq!(st.voxels, 12);
        assert!(close(st.volume_ml, 12.0 * 24.0 / 1000.0));
        assert_eq!(st.bbox_voxels, Some([[2, 5], [1, 3], [4, 6]]));
        let c = st.centroid_voxel.expect("centroid");
        assert!(close(c[0], 3.0) && close(c[1], 1.5) && close(c[2], 4.5));
        let w = st.centroid_world_mm.expect("world");
        assert!(close(w[0], 16.0) && close(w[1], -15.5) && close(w[2], 23.0));
        let [wmin, wmax] = st.bbox_world_mm.expect("bbox");
        assert_eq!(wmin, [14.0, -17.0, 21.0]);
        assert_eq!(wmax, [18.0, -14.0, 25.0]);
        assert_eq!(voxtell_io::orientation::spacing(&affine), [2.0, 3.0, 4.0]);
    }

    #[test]
    fn permuted_and_flipped_affine() {
        // Array axis 0 → -y (2 mm), axis 1 → z (1 mm), axis 2 → -x (0.5 mm).
        let affine =
            [[0.0, 0.0, -0.5, 100.0], [-2.0, 0.0, 0.0, 50.0], [0.0, 1.0, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]];
        let mut m = Array3::<u8>::zeros((4, 5, 6));
        m[[1, 2, 3]] = 1;
        m[[3, 4, 5]] = 255;
        let st = compute("x", m.view(), &affine);
        assert_eq!(st.voxels, 2);
        assert!(close(st.volume_ml, 2.0 * 1.0 / 1000.0));
        assert_eq!(st.bbox_voxels, Some([[1, 4], [2, 5], [3, 6]]));
        let [wmin, wmax] = st.bbox_world_mm.expect("bbox");
        // x: 100 - 0.5*k for k in 3..=5; y: 50 - 2*i for i in 1..=3; z: -30 + j for j in 2..=4.
        assert_eq!(wmin, [97.5, 44.0, -28.0]);
        assert_eq!(wmax, [98.5, 48.0, -26.0]);
        let w = st.centroid_world_mm.expect("world");
        assert!(close(w[0], 98.0) && close(w[1], 46.0) && close(w[2], -27.0));
        assert_eq!(voxtell_io::orientation::spacing(&affine), [2.0, 1.0, 0.5]);
    }

    #[test]
    fn empty_mask_has_no_geometry() {
        let m = Array3::<u8>::zeros((3, 3, 3));
        let st = compute("none", m.view(), &voxtell_io::orientation::IDENTITY);
        assert_eq!(st.voxels, 0);
        assert_eq!(st.volume_ml, 0.0);
        assert!(st.bbox_voxels.is_none() && st.centroid_voxel.is_none());
        let st = compute("none", Array3::<u8>::zeros((0, 3, 3)).view(), &voxtell_io::orientation::IDENTITY);
        assert_eq!(st.voxels, 0);
        let json = serde_json::to_value(&st).expect("json");
        assert!(json["bbox_voxels"].is_null());
    }

    #[test]
    fn writes_json_atomically_and_respects_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ct_statistics.json");
        let mut m = Array3::<u8>::zeros((2, 2, 2));
        m[[0, 0, 0]] = 1;
        let id = voxtell_io::orientation::IDENTITY;
        let stats = CaseStatistics {
            case: "ct".into(),
            source: "ct.nii.gz".into(),
            shape: [2, 2, 2],
            spacing_mm: voxtell_io::orientation::spacing(&id),
            prompts: vec![
                compute("liver", m.view(), &id),
                compute("empty", Array3::zeros((2, 2, 2)).view(), &id),
            ],
            empty_prompts: vec!["empty".into()],
        };
        write_statistics(&path, &stats, false).expect("write");
        let back: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back["case"], "ct");
        assert_eq!(back["prompts"][0]["voxels"], 1);
        assert_eq!(back["prompts"][0]["bbox_voxels"][2][1], 1);
        assert!(back["prompts"][1]["centroid_world_mm"].is_null());

        let err = write_statistics(&path, &stats, false).expect_err("exists");
        match err {
            InferError::Io(voxtell_io::IoError::OutputExists { path: p }) => assert_eq!(p, path),
            other => panic!("unexpected {other}"),
        }
        write_statistics(&path, &stats, true).expect("overwrite");
        // Only the output is left in the folder: no temporary files.
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("ct_statistics.json")]);

        let missing = dir.path().join("no/such/folder/x.json");
        let err = write_statistics(&missing, &stats, true).expect_err("no folder");
        assert!(
            matches!(&err, InferError::Io(voxtell_io::IoError::Os { path, .. }) if path == &missing),
            "{err}"
        );
    }
}
