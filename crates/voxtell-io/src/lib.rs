//! Medical image input and output for VoxTell.
//!
//! - [`read`] opens a NIfTI-1 file (`.nii`, `.nii.gz`) or a folder holding a DICOM series and
//!   returns a [`Volume`]: f32 voxels in the file's own order plus the voxel → RAS+ affine.
//! - [`Volume::to_ras`] reorients to the (S, A, R) array layout the official nnU-Net reader
//!   (`NibabelIOWithReorient`) hands the network, keeping a [`RasGeometry`] to go back.
//! - [`write_seg`] writes a label map from that layout back in the original geometry, with the
//!   header nibabel writes; [`write_nifti`] writes any array with an affine.
//! - [`atomic`]: the one atomic writer (temporary file, fsync, move into place, no clobbering
//!   unless asked) that every file of the workspace is written through, these included.
//!
//! ```no_run
//! # fn main() -> Result<(), voxtell_io::IoError> {
//! let volume = voxtell_io::read("ct.nii.gz")?;
//! println!("{:?} voxels, {} orientation", volume.shape(), volume.axcodes());
//! let ras = volume.to_ras()?;
//! let mask = ras.data.mapv(|v| u16::from(v > 100.0));
//! voxtell_io::write_seg("mask.nii.gz", mask.view(), &ras.geometry, Default::default())?;
//! # Ok(())
//! # }
//! ```

pub mod atomic;
mod dicom;
pub mod dicom_seg;
mod error;
mod nifti_read;
mod nifti_write;
pub mod orientation;
mod ras;
mod volume;

use std::path::Path;

pub use dicom::{
    DicomOptions, DicomSeries, SERIES_ATTRIBUTES, SeriesInfo, SliceRef, is_dicom_folder, list_series,
    read_dicom_series, read_dicom_series_with_source, read_dicom_source,
};
pub use error::{IoError, Result};
pub use nifti_read::{NiftiExtent, nifti_extent, read_nifti, read_nifti_bytes};
pub use nifti_write::{NiftiElement, WriteOptions, write_nifti, write_ras_f32, write_seg};
pub use orientation::{Affine, AxisOrnt, Ornt};
pub use ras::{RasGeometry, RasVolume};
pub use volume::{Source, SourceFormat, Volume};

/// Read a scan: a folder is read as a DICOM series (it must hold exactly one), anything else as
/// a NIfTI-1 file.
pub fn read(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    if path.is_dir() { read_dicom_series(path, &DicomOptions::default()) } else { read_nifti(path) }
}
