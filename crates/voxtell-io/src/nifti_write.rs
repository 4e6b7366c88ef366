//! Writing NIfTI-1 files with the header nibabel gives a new `Nifti1Image(data, affine)`.
//!
//! The file is written by the `nifti` crate's writer from a reference header filled here the way
//! nibabel fills it; the crate sets the dimensions, datatype, offset and (as nibabel does on
//! save) `scl_slope = 1, scl_inter = 0`. Writes are atomic ([`crate::atomic`]): a temporary file in
//! the destination folder, moved into place at the end.

use std::path::Path;

use nalgebra::Matrix3;
use ndarray::ArrayView3;
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;

use crate::error::{IoError, Result};
use crate::orientation::{self, Affine};
use crate::ras::RasGeometry;

/// A voxel type that can be written to NIfTI (`u8`, `i16`, `u16`, `f32`, …).
pub trait NiftiElement: nifti::DataElement + bytemuck::Pod {}

impl<T: nifti::DataElement + bytemuck::Pod> NiftiElement for T {}

/// Options for writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replace an existing file (otherwise an existing output is an error).
    pub overwrite: bool,
}

/// Write a 3-D array, indexed `[i, j, k]`, with `affine` as a NIfTI-1 file. A path ending in
/// `.gz` is gzip-compressed. The header is the one nibabel writes for a new image: sform = the
/// affine with code 2 (aligned), qform code 0 with the quaternion fields filled from the affine,
/// no scaling (NaN slope and intercept), `xyzt_units` 0.
pub fn write_nifti<T: NiftiElement>(
    path: impl AsRef<Path>,
    data: ArrayView3<'_, T>,
    affine: &Affine,
    options: WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    let shape = data.shape();
    if let Some(&d) = shape.iter().find(|&&d| d == 0 || d > i16::MAX as usize) {
        return Err(IoError::BadOutput {
            path: path.to_path_buf(),
            reason: format!("dimension {d} of shape {shape:?} cannot be stored in NIfTI-1"),
        });
    }
    if !orientation::is_finite(affine) {
        return Err(IoError::BadOutput {
            path: path.to_path_buf(),
            reason: format!("affine not finite: {affine:?}"),
        });
    }
    let header = nibabel_header(affine);
    // The `nifti` writer decides compression from the name, and rebuilds the name from its
    // stem: the temporary name ends in `.nii.gz` or `.nii` with no other dot before it.
    let gz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let suffix = if gz { ".nii.gz" } else { ".nii" };
    crate::atomic::write_atomic_with_suffix(path, options.overwrite, suffix, |tmp| {
        WriterOptions::new(tmp).reference_header(&header).write_nifti(&data).map_err(|e| match e {
            nifti::NiftiError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

/// Write a label map given in the (S, A, R) layout back in the original file's geometry, exactly
/// as nnU-Net's `NibabelIOWithReorient.write_seg`: uint8 when every label is below 255, else
/// uint16.
pub fn write_seg(
    path: impl AsRef<Path>,
    labels_sar: ArrayView3<'_, u16>,
    geometry: &RasGeometry,
    options: WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    let (restored, affine) = geometry.restore(labels_sar).map_err(|e| with_path(e, path))?;
    if restored.iter().all(|&v| v < 255) {
        let as_u8 = restored.mapv(|v| v as u8);
        write_nifti(path, as_u8.view(), &affine, options)
    } else {
        write_nifti(path, restored.view(), &affine, options)
    }
}

/// Write an f32 map (e.g. probabilities) given in the (S, A, R) layout in the original file's
/// geometry, with the same header rules as [`write_seg`].
pub fn write_ras_f32(
    path: impl AsRef<Path>,
    values_sar: ArrayView3<'_, f32>,
    geometry: &RasGeometry,
    options: WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    let (restored, affine) = geometry.restore(values_sar).map_err(|e| with_path(e, path))?;
    write_nifti(path, restored.view(), &affine, options)
}

fn with_path(e: IoError, path: &Path) -> IoError {
    match e {
        IoError::BadOutput { reason, .. } => IoError::BadOutput { path: path.to_path_buf(), reason },
        other => other,
    }
}

/// The header fields nibabel sets for `Nifti1Image(data, affine)` that the writer does not set
/// itself.
fn nibabel_header(affine: &Affine) -> NiftiHeader {
    let mut h = NiftiHeader {
        regular: 0,
        qform_code: 0,
        sform_code: 2,
        magic: *b"n+1\0",
        endianness: nifti::Endianness::Little,
        ..NiftiHeader::default()
    };
    h.srow_x = affine[0].map(|v| v as f32);
    h.srow_y = affine[1].map(|v| v as f32);
    h.srow_z = affine[2].map(|v| v as f32);
    set_qform_fields(&mut h, affine);
    h
}

/// nibabel's `set_qform` (with shears stripped): zooms, qfac and the quaternion of the closest
/// rotation, stored whatever the qform code.
fn set_qform_fields(h: &mut NiftiHeader, affine: &Affine) {
    let zooms = orientation::spacing(affine);
    let mut r = Matrix3::from_fn(|row, c| affine[row][c] / zooms[c]);
    let qfac = if r.determinant() > 0.0 {
        1.0
    } else {
        for row in 0..3 {
            r[(row, 2)] = -r[(row, 2)];
        }
        -1.0
    };
    let pr = match r.try_svd(true, true, f64::EPSILON, 1000) {
        Some(svd) => match (svd.u, svd.v_t) {
            (Some(u), Some(v_t)) => u * v_t,
            _ => r,
        },
        None => r,
    };
    let q = orientation::mat2quat(&pr);
    h.pixdim[0] = qfac;
    for (p, z) in h.pixdim[1..4].iter_mut().zip(zooms) {
        *p = z as f32;
    }
    h.quatern_b = q[1] as f32;
    h.quatern_c = q[2] as f32;
    h.quatern_d = q[3] as f32;
    h.quatern_x = affine[0][3] as f32;
    h.quatern_y = affine[1][3] as f32;
    h.quatern_z = affine[2][3] as f32;
}
