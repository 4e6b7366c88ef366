//! Reading an uploaded scan: NIfTI bytes (gzip-compressed or not, told apart by their magic), or
//! a zip holding one DICOM series. Every size is checked before it is allocated: the NIfTI
//! header's voxel count against `--max-upload` and the cache, each zip entry's real size while
//! it is extracted. Zip entries are written under generated names in a private folder (an entry
//! name never becomes a path to open) and read by the project's DICOM reader, which also
//! describes the series for a DICOM SEG over it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use voxtell_infer::human_bytes;
use voxtell_io::{DicomOptions, DicomSeries, IoError, RasVolume};

use crate::error::ApiError;

/// Caps on a zip upload (a DICOM series).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipLimits {
    /// Most entries (files and folders) in the archive.
    pub max_entries: usize,
    /// Largest single entry, uncompressed.
    pub max_entry_bytes: u64,
}

impl Default for ZipLimits {
    /// 100 000 entries (a whole-body CT has a few thousand slices), 512 MiB per file; the total
    /// is capped by `--max-upload`.
    fn default() -> Self {
        ZipLimits { max_entries: 100_000, max_entry_bytes: 512 << 20 }
    }
}

/// What an upload decodes to, and what it was.
pub(crate) struct Uploaded {
    /// The image in the network's (S, A, R) layout.
    pub(crate) ras: RasVolume,
    /// What was uploaded, for the log.
    pub(crate) source: String,
    /// The DICOM series of a zip upload (its slices labelled by their zip entry names, for
    /// messages; the files themselves are gone); `None` for NIfTI.
    pub(crate) series: Option<DicomSeries>,
}

/// Read an upload (already capped at `max_upload` bytes by the route).
pub(crate) fn read(
    body: &[u8],
    max_upload: u64,
    cache_memory: u64,
    zip: ZipLimits,
    scratch: &Path,
) -> Result<Uploaded, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "The upload is empty: send the bytes of a .nii, .nii.gz or a zip of one DICOM series.",
        ));
    }
    if body.starts_with(b"PK\x03\x04") {
        return read_dicom_zip(body, max_upload, cache_memory, zip, scratch);
    }
    let name = if body.starts_with(&[0x1f, 0x8b]) { "upload.nii.gz" } else { "upload.nii" };
    let extent = voxtell_io::nifti_extent(body, name).map_err(|e| bad_image(&e))?;
    if extent.decoded_bytes > max_upload {
        return Err(ApiError::too_large(format!(
            "The image declares {:?} voxels ({} uncompressed), more than --max-upload {}.",
            extent.shape,
            human_bytes(extent.decoded_bytes),
            human_bytes(max_upload)
        )));
    }
    let in_memory = extent.voxels().saturating_mul(4);
    if in_memory > cache_memory {
        return Err(ApiError::too_large(format!(
            "The image of {:?} voxels needs {} in memory, more than the server's cache (--cache-memory {}).",
            extent.shape,
            human_bytes(in_memory),
            human_bytes(cache_memory)
        )));
    }
    let volume = voxtell_io::read_nifti_bytes(body, name).map_err(|e| bad_image(&e))?;
    let ras = volume.to_ras().map_err(|e| bad_image(&e))?;
    Ok(Uploaded { ras, source: format!("{name}, {:?} voxels", extent.shape), series: None })
}

fn bad_image(e: &IoError) -> ApiError {
    ApiError::bad(format!("Cannot read the upload: {}", voxtell_infer::batch::error_text(e)))
}

/// Extract a zip of one DICOM series into a private folder and read it.
fn read_dicom_zip(
    body: &[u8],
    max_upload: u64,
    cache_memory: u64,
    limits: ZipLimits,
    scratch: &Path,
) -> Result<Uploaded, ApiError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body))
        .map_err(|e| ApiError::bad(format!("Cannot read the zip upload: {e}")))?;
    if archive.len() > limits.max_entries {
        return Err(ApiError::too_large(format!(
            "The zip holds {} entries, more than the server takes ({}).",
            archive.len(),
            limits.max_entries
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("dicom-")
        .tempdir_in(scratch)
        .map_err(|e| ApiError::internal(format!("Cannot make a folder for the DICOM upload: {e}")))?;
    let mut total = 0u64;
    let mut files = 0usize;
    // Generated file name → the zip entry's name, to name slices in messages.
    let mut entry_names: HashMap<OsString, String> = HashMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| ApiError::bad(format!("Zip entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("#{i}"));
        if entry.size() > limits.max_entry_bytes {
            return Err(ApiError::too_large(format!(
                "Zip entry {name:?} declares {}, more than the server takes per file ({}).",
                human_bytes(entry.size()),
                human_bytes(limits.max_entry_bytes)
            )));
        }
        // The declared size may lie: copy at most one byte more than either cap allows.
        let cap = limits.max_entry_bytes.min(max_upload.saturating_sub(total));
        let file_name = format!("{files:06}.dcm");
        let path = dir.path().join(&file_name);
        let mut out = std::fs::File::create(&path)
            .map_err(|e| ApiError::internal(format!("Cannot write the DICOM upload: {e}")))?;
        let copied = std::io::copy(&mut (&mut entry).take(cap + 1), &mut out)
            .map_err(|e| ApiError::bad(format!("Zip entry {name:?} cannot be extracted: {e}")))?;
        out.flush().map_err(|e| ApiError::internal(format!("Cannot write the DICOM upload: {e}")))?;
        if copied > cap {
            return Err(ApiError::too_large(if cap < limits.max_entry_bytes {
                format!("The zip's contents exceed --max-upload ({}).", human_bytes(max_upload))
            } else {
                format!(
                    "Zip entry {name:?} is larger than the server takes per file ({}).",
                    human_bytes(limits.max_entry_bytes)
                )
            }));
        }
        total += copied;
        files += 1;
        entry_names.insert(file_name.into(), name);
    }
    if files == 0 {
        return Err(ApiError::bad("The zip upload holds no files."));
    }
    let options = DicomOptions { max_voxels: Some(cache_memory / 4), ..Default::default() };
    let read = voxtell_io::read_dicom_series_with_source(dir.path(), &options);
    let (volume, mut series) = read.map_err(|e| match e {
        IoError::MultipleSeries { series, .. } => ApiError::bad(format!(
            "The zip holds {} DICOM series; upload one at a time: {}",
            series.len(),
            series.join("; ")
        )),
        IoError::TooManyVoxels { slices, rows, columns, .. } => ApiError::too_large(format!(
            "The DICOM series ({slices} slices of {rows}×{columns}) is larger than the image cache takes (--cache-memory {}).",
            human_bytes(cache_memory)
        )),
        e => ApiError::bad(format!(
            "Cannot read the zip as a DICOM series: {}",
            voxtell_infer::batch::error_text(&e).replace(&dir.path().display().to_string(), "(upload)")
        )),
    })?;
    // The extracted files go with `dir`: label each slice by its entry's name instead, which is
    // only ever shown (e.g. a slice without a SOPInstanceUID when a SEG is asked for).
    for slice in &mut series.slices {
        let name = slice.path.file_name().and_then(|f| entry_names.get(f));
        slice.path = PathBuf::from(name.map_or("(upload)", String::as_str));
    }
    let ras = volume.to_ras().map_err(|e| bad_image(&e))?;
    let shape = ras.geometry.original_shape;
    Ok(Uploaded { ras, source: format!("DICOM zip, {files} files, {shape:?} voxels"), series: Some(series) })
}
