//! The error type of `voxtell-io`.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a medical image.
///
/// Every variant names the file at fault, so a batch over many files can report which one failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The operating system refused an operation on a file or folder.
    #[error("{path}: {source}")]
    Os {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file ended before the header or the voxel data were complete.
    #[error("{path}: file is truncated: {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read when the data ran out.
        what: String,
    },
    /// The file is not in a format this crate reads.
    #[error("{path}: not a NIfTI-1 file: {reason}")]
    NotNifti {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A header field holds a value that makes the file unreadable.
    #[error("{path}: invalid NIfTI header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// The field and its value.
        reason: String,
    },
    /// The voxel datatype is valid NIfTI but not one this crate reads.
    #[error(
        "{path}: unsupported NIfTI datatype code {code} ({name}); supported: uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32, float64"
    )]
    UnsupportedDatatype {
        /// The file.
        path: PathBuf,
        /// The NIfTI datatype code.
        code: i16,
        /// Its name, where known.
        name: &'static str,
    },
    /// The image is not three-dimensional.
    #[error("{path}: expected a 3-D image, found dimensions {dims:?}")]
    NotThreeD {
        /// The file.
        path: PathBuf,
        /// The dimensions found in the header (`dim[1..=dim[0]]`).
        dims: Vec<i64>,
    },
    /// The geometry (affine) of the image is unusable.
    #[error("{path}: unusable geometry: {reason}")]
    BadGeometry {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A DICOM file or series could not be read as one volume.
    #[error("{path}: DICOM: {reason}")]
    Dicom {
        /// The file or series folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A folder holds more than one DICOM series and none was chosen.
    #[error("{path}: the folder holds {} DICOM series; choose one by SeriesInstanceUID:\n{}", .series.len(), .series.join("\n"))]
    MultipleSeries {
        /// The folder.
        path: PathBuf,
        /// One line per series: UID, description and number of files.
        series: Vec<String>,
    },
    /// A series holds more voxels than the reader was allowed to decode
    /// ([`crate::DicomOptions::max_voxels`]); nothing was decoded.
    #[error("{path}: {slices} slices of {rows}×{columns} are {voxels} voxels, more than the {max} allowed")]
    TooManyVoxels {
        /// The folder.
        path: PathBuf,
        /// Slices in the series.
        slices: usize,
        /// Rows per slice.
        rows: usize,
        /// Columns per slice.
        columns: usize,
        /// Their product.
        voxels: u64,
        /// The cap.
        max: u64,
    },
    /// The output file exists and overwriting was not asked for.
    #[error("{path}: output exists (overwriting was not requested)")]
    OutputExists {
        /// The output file.
        path: PathBuf,
    },
    /// Data handed to a writer does not fit the geometry it is written with.
    #[error("{path}: cannot write: {reason}")]
    BadOutput {
        /// The output file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

impl IoError {
    pub(crate) fn os(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Os { path: path.into(), source }
    }
}
