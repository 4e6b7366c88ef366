//! The [`Volume`] type: voxel data plus the geometry needed to place it in the world.

use std::path::{Path, PathBuf};

use ndarray::Array3;

use crate::orientation::{self, Affine, Ornt};

/// A 3-D scalar image in its file's own voxel order.
///
/// `data[[i, j, k]]` is the voxel at index `(i, j, k)`, and `affine` maps `[i, j, k, 1]` to RAS+
/// world coordinates in millimetres (nibabel's convention). For DICOM, `i` runs along the image
/// rows (columns of pixels), `j` down the columns and `k` across slices, as SimpleITK orders them.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Voxel values in the file's voxel order, scaled to physical values (slope/intercept).
    pub data: Array3<f32>,
    /// Voxel index → RAS+ millimetres.
    pub affine: Affine,
    /// Where the volume was read from.
    pub source: Source,
}

/// Where a [`Volume`] came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The file (NIfTI) or folder (DICOM series).
    pub path: PathBuf,
    /// The format and what it stored.
    pub format: SourceFormat,
}

/// The format a [`Volume`] was read from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SourceFormat {
    /// A NIfTI-1 file.
    Nifti {
        /// Name of the stored datatype (`"int16"`, `"float32"`, …).
        datatype: &'static str,
        /// Whether the file was gzip-compressed.
        compressed: bool,
    },
    /// A DICOM series.
    Dicom {
        /// The SeriesInstanceUID.
        series_uid: String,
        /// The number of slices (files) read.
        slices: usize,
        /// The modality (`CT`, `MR`, `PT`, …), when present.
        modality: Option<String>,
    },
    /// Built in memory.
    Memory,
}

impl Volume {
    /// A volume built in memory (for tests and synthetic data).
    pub fn new(data: Array3<f32>, affine: Affine) -> Self {
        Volume { data, affine, source: Source { path: PathBuf::new(), format: SourceFormat::Memory } }
    }

    /// The spatial shape `(ni, nj, nk)`.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// Voxel spacing in millimetres along the voxel axes (column norms of the affine).
    pub fn spacing(&self) -> [f64; 3] {
        orientation::spacing(&self.affine)
    }

    /// The closest orientation of the voxel axes, as nibabel's `io_orientation`; `None` for a
    /// degenerate affine.
    pub fn orientation(&self) -> Option<Ornt> {
        orientation::io_orientation(&self.affine)
    }

    /// The orientation code of the voxel axes, e.g. `"LPS"` (`"???"` for a degenerate affine).
    pub fn axcodes(&self) -> String {
        self.orientation().map_or_else(|| "???".to_string(), |o| o.axcodes())
    }

    /// Smallest and largest finite voxel value, or `None` when there is none.
    pub fn intensity_range(&self) -> Option<(f32, f32)> {
        self.data.iter().filter(|v| v.is_finite()).fold(None, |acc, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
    }

    /// The path the volume was read from (empty for in-memory volumes).
    pub fn path(&self) -> &Path {
        &self.source.path
    }
}

impl Volume {
    /// A multi-line human-readable summary: source, shape, spacing, orientation, affine and
    /// intensity range (what `voxtell info` and the `inspect` example print).
    pub fn summary(&self) -> String {
        let [ni, nj, nk] = self.shape();
        let [si, sj, sk] = self.spacing();
        let format = match &self.source.format {
            SourceFormat::Nifti { datatype, compressed } => {
                format!("NIfTI-1{}, {datatype}", if *compressed { " (gzip)" } else { "" })
            }
            SourceFormat::Dicom { series_uid, slices, modality } => format!(
                "DICOM series {series_uid}, {slices} slices{}",
                modality.as_deref().map(|m| format!(", {m}")).unwrap_or_default()
            ),
            SourceFormat::Memory => "in memory".to_string(),
        };
        let range = match self.intensity_range() {
            Some((lo, hi)) => format!("[{lo}, {hi}]"),
            None => "no finite voxels".to_string(),
        };
        let mut out = format!(
            "{}\n  format:      {format}\n  shape:       {ni} × {nj} × {nk}\n  spacing:     {si:.4} × {sj:.4} × {sk:.4} mm\n  orientation: {}\n  intensities: {range}\n  affine (voxel → RAS+ mm):\n",
            self.source.path.display(),
            self.axcodes()
        );
        for row in &self.affine[..3] {
            out.push_str(&format!(
                "    [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]\n",
                row[0] + 0.0,
                row[1] + 0.0,
                row[2] + 0.0,
                row[3] + 0.0
            ));
        }
        out
    }
}
