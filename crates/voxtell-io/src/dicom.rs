//! Reading a DICOM series (a folder of single-frame slices) into a [`Volume`], with the voxels
//! and geometry SimpleITK's `ImageSeriesReader` gives for the same files.
//!
//! - Slices are sorted by their position projected on the slice normal
//!   (`row cosines × column cosines`), ascending, as GDCM's sorter does.
//! - Voxel `(i, j, k)` is column `i`, row `j` of sorted slice `k`; values are
//!   `f64(stored)·RescaleSlope + RescaleIntercept`, then rounded to f32.
//! - In LPS, the direction columns are the row cosines, the column cosines and their cross
//!   product; the spacing is (column spacing, row spacing, |last − first| / (n − 1)); the origin
//!   is the first sorted slice's position. The RAS affine flips the first two world axes.
//!
//! [`read_dicom_series_with_source`] also returns the source a derived object (a DICOM SEG over
//! the same slices) refers to: each slice's SOP Class and Instance UIDs and position in the
//! volume's slice order, and the series' Patient, Study, Frame of Reference and equipment
//! attributes ([`DicomSeries`]).
//!
//! Unlike SimpleITK, which reads such series with at most a warning, this reader rejects series
//! that do not form one regular grid: several series without a choice, differing orientations
//! or sizes, duplicate or unevenly spaced slices (missing slices), and files that are not DICOM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use ndarray::{Array3, ShapeBuilder};

use crate::error::{IoError, Result};
use crate::orientation::Affine;
use crate::volume::{Source, SourceFormat, Volume};

/// Relative tolerance on slice spacing, orientation cosines and in-plane offsets.
const TOLERANCE: f64 = 1e-3;

/// Options for reading a DICOM series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DicomOptions {
    /// The SeriesInstanceUID to read when the folder holds several series.
    pub series_uid: Option<String>,
    /// Refuse a series of more voxels (slices × rows × columns, from the headers) before any
    /// pixel data is decoded; `None`: no cap beyond what can be allocated.
    pub max_voxels: Option<u64>,
}

/// One series found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    /// SeriesInstanceUID.
    pub uid: String,
    /// SeriesDescription, when present.
    pub description: Option<String>,
    /// Modality, when present.
    pub modality: Option<String>,
    /// Image files of the series, sorted by name.
    pub files: Vec<PathBuf>,
}

/// Header facts of one slice, read without its pixel data.
#[derive(Debug, Clone)]
struct SliceHeader {
    path: PathBuf,
    series_uid: String,
    description: Option<String>,
    modality: Option<String>,
    sop_class_uid: Option<String>,
    sop_instance_uid: Option<String>,
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
    rows: usize,
    columns: usize,
    frames: usize,
}

/// Whether a folder looks like a DICOM series: it holds at least one file whose bytes 128..132
/// are `DICM`.
pub fn is_dicom_folder(folder: impl AsRef<Path>) -> bool {
    let Ok(entries) = std::fs::read_dir(folder) else { return false };
    entries.flatten().filter(|e| e.path().is_file()).any(|e| has_dicom_preamble(&e.path()))
}

fn has_dicom_preamble(path: &Path) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 132];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut buf)).is_ok() && &buf[128..132] == b"DICM"
}

/// List the series in a folder (every regular, non-hidden file must be DICOM).
pub fn list_series(folder: impl AsRef<Path>) -> Result<Vec<SeriesInfo>> {
    let folder = folder.as_ref();
    let headers = read_headers(folder)?;
    let mut by_uid: BTreeMap<String, SeriesInfo> = BTreeMap::new();
    for h in headers {
        let entry = by_uid.entry(h.series_uid.clone()).or_insert_with(|| SeriesInfo {
            uid: h.series_uid.clone(),
            description: h.description.clone(),
            modality: h.modality.clone(),
            files: Vec::new(),
        });
        entry.files.push(h.path);
    }
    Ok(by_uid.into_values().collect())
}

/// One slice of a source series, in the volume's slice order.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceRef {
    /// Its file.
    pub path: PathBuf,
    /// SOPClassUID, when the file has one.
    pub sop_class_uid: Option<String>,
    /// SOPInstanceUID, when the file has one.
    pub sop_instance_uid: Option<String>,
    /// ImagePositionPatient (LPS, mm).
    pub position: [f64; 3],
}

/// What an object derived from a series (e.g. a DICOM SEG over its slices) needs of its source:
/// the slices in the volume's slice order (`slices[k]` is voxel plane `k`) and the attributes the
/// series shares, as its first sorted slice holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomSeries {
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// The slices, sorted as the volume's third axis.
    pub slices: Vec<SliceRef>,
    /// ImageOrientationPatient: row cosines, then column cosines.
    pub orientation: [f64; 6],
    /// PixelSpacing: between rows, then between columns (mm).
    pub pixel_spacing: [f64; 2],
    /// Rows per slice.
    pub rows: usize,
    /// Columns per slice.
    pub columns: usize,
    /// The Patient, Study, Frame of Reference and equipment attributes of [`SERIES_ATTRIBUTES`]
    /// that the first sorted slice holds, by keyword, as text; an attribute the source lacks is
    /// absent, never made up.
    pub attributes: BTreeMap<&'static str, String>,
}

impl DicomSeries {
    /// One of [`DicomSeries::attributes`] by keyword.
    pub fn attribute(&self, keyword: &str) -> Option<&str> {
        self.attributes.get(keyword).map(String::as_str)
    }
}

/// The attributes a derived object copies from its source series ([`DicomSeries::attributes`]).
pub const SERIES_ATTRIBUTES: [(&str, dicom_core::Tag); 22] = [
    ("SpecificCharacterSet", tags::SPECIFIC_CHARACTER_SET),
    ("PatientName", tags::PATIENT_NAME),
    ("PatientID", tags::PATIENT_ID),
    ("PatientBirthDate", tags::PATIENT_BIRTH_DATE),
    ("PatientSex", tags::PATIENT_SEX),
    ("IssuerOfPatientID", tags::ISSUER_OF_PATIENT_ID),
    ("PatientAge", tags::PATIENT_AGE),
    ("PatientSize", tags::PATIENT_SIZE),
    ("PatientWeight", tags::PATIENT_WEIGHT),
    ("StudyInstanceUID", tags::STUDY_INSTANCE_UID),
    ("StudyDate", tags::STUDY_DATE),
    ("StudyTime", tags::STUDY_TIME),
    ("StudyID", tags::STUDY_ID),
    ("AccessionNumber", tags::ACCESSION_NUMBER),
    ("ReferringPhysicianName", tags::REFERRING_PHYSICIAN_NAME),
    ("StudyDescription", tags::STUDY_DESCRIPTION),
    ("FrameOfReferenceUID", tags::FRAME_OF_REFERENCE_UID),
    ("PositionReferenceIndicator", tags::POSITION_REFERENCE_INDICATOR),
    ("Modality", tags::MODALITY),
    ("Manufacturer", tags::MANUFACTURER),
    ("ManufacturerModelName", tags::MANUFACTURER_MODEL_NAME),
    ("SliceThickness", tags::SLICE_THICKNESS),
];

/// Read one DICOM series from a folder as a volume.
pub fn read_dicom_series(folder: impl AsRef<Path>, options: &DicomOptions) -> Result<Volume> {
    read_series(folder.as_ref(), options).map(|(volume, _)| volume)
}

/// [`read_dicom_series`], also returning what a derived object needs of the source series: its
/// slices in the volume's order with their UIDs and positions, and its shared attributes.
pub fn read_dicom_series_with_source(
    folder: impl AsRef<Path>,
    options: &DicomOptions,
) -> Result<(Volume, DicomSeries)> {
    let (volume, slices) = read_series(folder.as_ref(), options)?;
    Ok((volume, source_of(slices)?))
}

/// What [`read_dicom_series_with_source`] says of the source series, from the headers alone (no
/// pixel is decoded): the same series chosen, checked and sorted the same way, for a writer that
/// needs the source after the volume was read (e.g. a DICOM SEG of a batch's case).
pub fn read_dicom_source(folder: impl AsRef<Path>, options: &DicomOptions) -> Result<DicomSeries> {
    source_of(sorted_series(folder.as_ref(), options)?.slices)
}

/// The source description of sorted slices; the shared attributes from the first one's file.
fn source_of(slices: Vec<SliceHeader>) -> Result<DicomSeries> {
    let first = &slices[0];
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&first.path)
        .map_err(|e| file_err(&first.path, format!("not a readable DICOM file: {e}")))?;
    let attributes = SERIES_ATTRIBUTES
        .iter()
        .filter_map(|&(keyword, tag)| {
            let value = obj.element_opt(tag).ok().flatten()?.to_str().ok()?;
            Some((keyword, value.trim_end_matches(['\0', ' ']).to_string()))
        })
        .collect();
    Ok(DicomSeries {
        series_uid: first.series_uid.clone(),
        orientation: first.orientation,
        pixel_spacing: first.pixel_spacing,
        rows: first.rows,
        columns: first.columns,
        slices: slices
            .into_iter()
            .map(|s| SliceRef {
                path: s.path,
                sop_class_uid: s.sop_class_uid,
                sop_instance_uid: s.sop_instance_uid,
                position: s.position,
            })
            .collect(),
        attributes,
    })
}

/// The volume and its slices' headers in the volume's slice order.
fn read_series(folder: &Path, options: &DicomOptions) -> Result<(Volume, Vec<SliceHeader>)> {
    let Sorted { uid, slices, row, col, normal, normal_len, z_spacing } = sorted_series(folder, options)?;
    let err = |reason: String| IoError::Dicom { path: folder.to_path_buf(), reason };
    let first = slices[0].clone();
    let n = slices.len();
    let (rows, columns) = (first.rows, first.columns);
    let per_slice = rows * columns;
    // Decode the pixels slice by slice; Fortran order of (i, j, k) is row-major per slice.
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(per_slice * n)
        .map_err(|_| err(format!("cannot allocate {n} slices of {rows}×{columns}")))?;
    let mut modality = None;
    for s in &slices {
        let obj =
            dicom_object::open_file(&s.path).map_err(|e| file_err(&s.path, format!("cannot read: {e}")))?;
        let (slope, intercept) = rescale(&obj, &s.path)?;
        let decoded = obj.decode_pixel_data().map_err(|e| {
            file_err(
                &s.path,
                format!("cannot decode pixel data (transfer syntax {}): {e}", obj.meta().transfer_syntax()),
            )
        })?;
        if decoded.samples_per_pixel() != 1 {
            return Err(file_err(
                &s.path,
                format!("{} samples per pixel; only grey-scale images are read", decoded.samples_per_pixel()),
            ));
        }
        let raw: Vec<f64> = decoded
            .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
            .map_err(|e| file_err(&s.path, format!("cannot convert pixel data: {e}")))?;
        if raw.len() != per_slice {
            return Err(file_err(
                &s.path,
                format!("pixel data holds {} values, expected {rows}×{columns}", raw.len()),
            ));
        }
        data.extend(raw.iter().map(|&v| (v * slope + intercept) as f32));
        modality = modality.or_else(|| s.modality.clone());
    }
    let data = Array3::from_shape_vec((columns, rows, n).f(), data)
        .map_err(|e| err(format!("volume of {columns}×{rows}×{n}: {e}")))?;

    // LPS direction columns scaled by spacing, origin at the first sorted slice; LPS → RAS.
    let dirs = [row, col, normal.map(|v| v / normal_len)];
    let spacing = [first.pixel_spacing[1], first.pixel_spacing[0], z_spacing];
    let origin = slices[0].position;
    let mut affine: Affine = [[0.0; 4]; 4];
    affine[3][3] = 1.0;
    for w in 0..3 {
        let sign = if w < 2 { -1.0 } else { 1.0 };
        for (c, dir) in dirs.iter().enumerate() {
            affine[w][c] = sign * dir[w] * spacing[c];
        }
        affine[w][3] = sign * origin[w];
    }
    let volume = Volume {
        data,
        affine,
        source: Source {
            path: folder.to_path_buf(),
            format: SourceFormat::Dicom { series_uid: uid, slices: n, modality },
        },
    };
    Ok((volume, slices))
}

/// A series chosen, checked and sorted from its headers, before any pixel is decoded.
struct Sorted {
    uid: String,
    /// In the volume's slice order.
    slices: Vec<SliceHeader>,
    row: [f64; 3],
    col: [f64; 3],
    normal: [f64; 3],
    normal_len: f64,
    z_spacing: f64,
}

/// Choose the series, check that its slices form one regular grid within the voxel cap, and sort
/// them along the normal: everything but decoding the pixels.
fn sorted_series(folder: &Path, options: &DicomOptions) -> Result<Sorted> {
    let err = |reason: String| IoError::Dicom { path: folder.to_path_buf(), reason };
    let headers = read_headers(folder)?;
    let mut uids: Vec<&str> = headers.iter().map(|h| h.series_uid.as_str()).collect();
    uids.sort_unstable();
    uids.dedup();
    let uid = match &options.series_uid {
        Some(chosen) => {
            if !uids.contains(&chosen.as_str()) {
                return Err(err(format!(
                    "no series with SeriesInstanceUID {chosen}; present: {}",
                    uids.join(", ")
                )));
            }
            chosen.clone()
        }
        None if uids.len() > 1 => {
            let series = list_series(folder)?
                .iter()
                .map(|s| {
                    format!(
                        "{} ({} files{}{})",
                        s.uid,
                        s.files.len(),
                        s.modality.as_deref().map(|m| format!(", {m}")).unwrap_or_default(),
                        s.description.as_deref().map(|d| format!(", \"{d}\"")).unwrap_or_default()
                    )
                })
                .collect();
            return Err(IoError::MultipleSeries { path: folder.to_path_buf(), series });
        }
        None => uids.first().map(|u| u.to_string()).ok_or_else(|| err("no image slices".into()))?,
    };
    let mut slices: Vec<SliceHeader> = headers.into_iter().filter(|h| h.series_uid == uid).collect();

    let first = slices[0].clone();
    for s in &slices {
        if s.frames != 1 {
            return Err(file_err(
                &s.path,
                format!("multi-frame objects ({} frames) are not supported", s.frames),
            ));
        }
        if (s.rows, s.columns) != (first.rows, first.columns) {
            return Err(err(format!(
                "slice sizes differ: {} is {}×{}, {} is {}×{}",
                first.path.display(),
                first.rows,
                first.columns,
                s.path.display(),
                s.rows,
                s.columns
            )));
        }
        if s.orientation.iter().zip(&first.orientation).any(|(a, b)| (a - b).abs() > TOLERANCE) {
            return Err(err(format!(
                "inconsistent ImageOrientationPatient: {} has {:?}, {} has {:?}",
                first.path.display(),
                first.orientation,
                s.path.display(),
                s.orientation
            )));
        }
        if s.pixel_spacing.iter().zip(&first.pixel_spacing).any(|(a, b)| (a - b).abs() > TOLERANCE * b.abs())
        {
            return Err(err(format!(
                "inconsistent PixelSpacing: {} has {:?}, {} has {:?}",
                first.path.display(),
                first.pixel_spacing,
                s.path.display(),
                s.pixel_spacing
            )));
        }
    }

    let row = [first.orientation[0], first.orientation[1], first.orientation[2]];
    let col = [first.orientation[3], first.orientation[4], first.orientation[5]];
    let normal = cross(row, col);
    let normal_len = dot(normal, normal).sqrt();
    if normal_len.is_nan() || normal_len <= 0.5 {
        return Err(err(format!("ImageOrientationPatient {:?} is degenerate", first.orientation)));
    }
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));

    let n = slices.len();
    let z_spacing = if n > 1 { check_spacing(&slices, normal, normal_len, folder)? } else { 1.0 };

    let (rows, columns) = (first.rows, first.columns);
    let per_slice = rows * columns;
    let voxels = (per_slice as u64).saturating_mul(n as u64);
    if let Some(max) = options.max_voxels
        && voxels > max
    {
        return Err(IoError::TooManyVoxels {
            path: folder.to_path_buf(),
            slices: n,
            rows,
            columns,
            voxels,
            max,
        });
    }
    Ok(Sorted { uid, slices, row, col, normal, normal_len, z_spacing })
}

/// Even spacing along the normal, no in-plane offsets, no duplicates. Returns SimpleITK's slice
/// spacing: the distance between the first and last positions over `n − 1`.
fn check_spacing(slices: &[SliceHeader], normal: [f64; 3], normal_len: f64, folder: &Path) -> Result<f64> {
    let err = |reason: String| IoError::Dicom { path: folder.to_path_buf(), reason };
    let n = slices.len();
    let along: Vec<f64> = slices.iter().map(|s| dot(s.position, normal) / normal_len).collect();
    let first = slices[0].position;
    let last = slices[n - 1].position;
    let span = sub(last, first);
    let z = dot(span, span).sqrt() / (n - 1) as f64;
    if !z.is_finite() || z <= 0.0 {
        return Err(err("all slices share one position".into()));
    }
    for (w, pair) in along.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        if gap.abs() < TOLERANCE * z {
            return Err(err(format!(
                "duplicate slice position: {} and {} (several phases or echoes in one series?)",
                slices[w].path.display(),
                slices[w + 1].path.display()
            )));
        }
        if (gap - z).abs() > TOLERANCE * z.max(1.0) {
            return Err(err(format!(
                "uneven slice spacing (missing slices?): {:.4} mm between {} and {}, expected {:.4} mm",
                gap,
                slices[w].path.display(),
                slices[w + 1].path.display(),
                z
            )));
        }
    }
    // Positions must lie on one line along the normal (no gantry tilt / shear).
    let unit = normal.map(|v| v / normal_len);
    for s in slices {
        let d = sub(s.position, first);
        let off = sub(d, unit.map(|u| u * dot(d, unit)));
        if dot(off, off).sqrt() > TOLERANCE * z.max(1.0) * n as f64 {
            return Err(err(format!(
                "{} is offset {:.4} mm from the slice normal (gantry tilt or sheared series is not supported)",
                s.path.display(),
                dot(off, off).sqrt()
            )));
        }
    }
    Ok(z)
}

fn read_headers(folder: &Path) -> Result<Vec<SliceHeader>> {
    let entries = std::fs::read_dir(folder).map_err(|e| IoError::os(folder, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| IoError::os(folder, e))?;
        let path = entry.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_file() && !hidden {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(IoError::Dicom { path: folder.to_path_buf(), reason: "folder holds no files".into() });
    }
    let mut headers = Vec::with_capacity(files.len());
    for path in files {
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(&path)
            .map_err(|e| file_err(&path, format!("not a readable DICOM file: {e}")))?;
        // Objects without an image (DICOMDIR, reports) are not slices.
        if obj.element_opt(tags::ROWS).ok().flatten().is_none() {
            let sop = obj.meta().media_storage_sop_class_uid().to_string();
            if sop.starts_with("1.2.840.10008.1.3.10")
                || obj.element_opt(tags::SERIES_INSTANCE_UID).ok().flatten().is_none()
            {
                continue;
            }
        }
        headers.push(slice_header(&obj, path)?);
    }
    if headers.is_empty() {
        return Err(IoError::Dicom {
            path: folder.to_path_buf(),
            reason: "no image slices among the DICOM files".into(),
        });
    }
    Ok(headers)
}

fn slice_header(obj: &DefaultDicomObject, path: PathBuf) -> Result<SliceHeader> {
    let floats = |tag, name: &str, n: usize| -> Result<Vec<f64>> {
        let v = obj
            .element(tag)
            .map_err(|_| file_err(&path, format!("{name} is missing")))?
            .to_multi_float64()
            .map_err(|e| file_err(&path, format!("{name} is not numeric: {e}")))?;
        if v.len() != n || v.iter().any(|x| !x.is_finite()) {
            return Err(file_err(&path, format!("{name} must hold {n} finite numbers, found {v:?}")));
        }
        Ok(v)
    };
    let int = |tag, name: &str| -> Result<usize> {
        obj.element(tag)
            .map_err(|_| file_err(&path, format!("{name} is missing")))?
            .to_int::<u32>()
            .map(|v| v as usize)
            .map_err(|e| file_err(&path, format!("{name} is not an integer: {e}")))
    };
    let text =
        |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
    let series_uid = text(tags::SERIES_INSTANCE_UID)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| file_err(&path, "SeriesInstanceUID is missing".into()))?;
    let position = floats(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let orientation = floats(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6)?;
    let pixel_spacing = floats(tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    if pixel_spacing.iter().any(|&s| s <= 0.0) {
        return Err(file_err(&path, format!("PixelSpacing {pixel_spacing:?} must be positive")));
    }
    let rows = int(tags::ROWS, "Rows")?;
    let columns = int(tags::COLUMNS, "Columns")?;
    if rows == 0 || columns == 0 {
        return Err(file_err(&path, format!("image size {rows}×{columns} is empty")));
    }
    let frames = text(tags::NUMBER_OF_FRAMES).and_then(|s| s.parse().ok()).unwrap_or(1);
    Ok(SliceHeader {
        series_uid,
        description: text(tags::SERIES_DESCRIPTION).filter(|s| !s.is_empty()),
        modality: text(tags::MODALITY).filter(|s| !s.is_empty()),
        sop_class_uid: text(tags::SOP_CLASS_UID).filter(|s| !s.is_empty()),
        sop_instance_uid: text(tags::SOP_INSTANCE_UID).filter(|s| !s.is_empty()),
        position: [position[0], position[1], position[2]],
        orientation: [
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        ],
        pixel_spacing: [pixel_spacing[0], pixel_spacing[1]],
        rows,
        columns,
        frames,
        path,
    })
}

fn rescale(obj: &DefaultDicomObject, path: &Path) -> Result<(f64, f64)> {
    let get = |tag, name: &str, default: f64| -> Result<f64> {
        match obj.element_opt(tag).ok().flatten() {
            None => Ok(default),
            Some(e) => {
                let v =
                    e.to_float64().map_err(|err| file_err(path, format!("{name} is not numeric: {err}")))?;
                if v.is_finite() { Ok(v) } else { Err(file_err(path, format!("{name} = {v} is not finite"))) }
            }
        }
    };
    Ok((
        get(tags::RESCALE_SLOPE, "RescaleSlope", 1.0)?,
        get(tags::RESCALE_INTERCEPT, "RescaleIntercept", 0.0)?,
    ))
}

fn file_err(path: &Path, reason: String) -> IoError {
    IoError::Dicom { path: path.to_path_buf(), reason }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
