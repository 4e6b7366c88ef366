//! Writing binary masks as a DICOM Segmentation (SEG, Segmentation Storage
//! `1.2.840.10008.5.1.4.1.1.66.4`, BINARY) over the slices of its source series.
//!
//! No Rust crate builds SEG objects, so the data set is assembled here on `dicom-object`, element
//! by element, following the Segmentation IOD (attributes: `docs/dicom-seg.md`, the set dciodvfy
//! accepts without errors):
//!
//! - Frames lie in the source slices' own grid: frame pixel (row `r`, column `c`) of source slice
//!   `k` is voxel `(c, r, k)` of a mask in the source volume's layout ([`crate::Volume`] read from
//!   the series), so any orientation the reader takes is written back as it came.
//! - One frame per segment and source slice that holds any of the segment's pixels, segment by
//!   segment, slices in the volume's order; 1 bit per pixel, least significant bit first, frames
//!   contiguous with no padding between them, the whole padded to an even length.
//! - Same Patient, Study and Frame of Reference as the source (copied as the source holds them;
//!   absent ones stay empty), new Series and SOP Instance UIDs in the `2.25.` UUID form, every
//!   source instance in ReferencedSeriesSequence, each frame derived from its source instance and
//!   placed at its position.
//! - Explicit VR Little Endian, written under a temporary name and renamed ([`crate::atomic`]).

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use ndarray::ArrayView3;

use crate::dicom::{DicomSeries, SliceRef};
use crate::error::{IoError, Result};

/// SOP Class UID of Segmentation Storage.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// A coded concept: code value, coding scheme designator and code meaning (e.g. `10200004`,
/// `SCT`, `Liver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// CodeValue.
    pub value: &'static str,
    /// CodingSchemeDesignator.
    pub scheme: &'static str,
    /// CodeMeaning.
    pub meaning: &'static str,
}

/// SCT 85756007 "Tissue": the category and type of a segment no table names.
pub const TISSUE: Code = Code { value: "85756007", scheme: "SCT", meaning: "Tissue" };

/// One segment: a binary mask in the source volume's layout and how to describe it.
#[derive(Debug, Clone)]
pub struct SegSegment<'a> {
    /// The text it was found by (a prompt): SegmentLabel (cut to 64 characters, `\` replaced)
    /// and SegmentDescription (whole).
    pub text: &'a str,
    /// Non-zero voxels belong to the segment; shape (columns, rows, slices) of the source.
    pub mask: ArrayView3<'a, u8>,
    /// SegmentedPropertyCategoryCodeSequence.
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence.
    pub property: Code,
    /// The display colour (sRGB), written as RecommendedDisplayCIELabValue.
    pub color: [u8; 3],
}

/// Who made the segmentation and where it goes in the study.
#[derive(Debug, Clone)]
pub struct SegOptions {
    /// AlgorithmName, SegmentAlgorithmName and ManufacturerModelName.
    pub algorithm_name: String,
    /// AlgorithmVersion and SoftwareVersions.
    pub algorithm_version: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// SeriesNumber of the new series.
    pub series_number: i32,
    /// SeriesDescription.
    pub series_description: String,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// What a written SEG holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegWritten {
    /// Segments.
    pub segments: usize,
    /// Frames (segment × slice pairs with any pixel set).
    pub frames: usize,
    /// SOPInstanceUID of the new object.
    pub sop_instance_uid: String,
    /// SeriesInstanceUID of the new series.
    pub series_instance_uid: String,
    /// Whether some voxel belongs to more than one segment (SegmentsOverlap YES).
    pub overlap: bool,
}

/// Write `segments` over `source`'s slices as one binary SEG at `path` (all masks at hand; a
/// caller that makes its masks one at a time uses [`SegBuilder`], which holds one mask at a
/// time). The source must name its Study, Frame of Reference and every slice's SOP Class and
/// Instance (no Frame of Reference is made up: it would detach the SEG from its series); every
/// mask must have the source's shape and at least one voxel set.
pub fn write_dicom_seg(
    path: impl AsRef<Path>,
    source: &DicomSeries,
    segments: &[SegSegment<'_>],
    options: &SegOptions,
) -> Result<SegWritten> {
    let mut builder = SegBuilder::new(path, source, options.clone())?;
    for s in segments {
        builder.add(s)?;
    }
    builder.finish()
}

/// A SEG built one segment at a time: each mask is packed into the frames when it is added, so a
/// caller restores, adds and drops its masks one by one. Held meanwhile: the packed frames and
/// one bit per source voxel (which voxels earlier segments hold, for `SegmentsOverlap`).
#[derive(Debug)]
pub struct SegBuilder<'s> {
    path: std::path::PathBuf,
    source: &'s DicomSeries,
    options: SegOptions,
    /// (columns, rows, slices) of the source.
    shape: [usize; 3],
    segments: Vec<Described>,
    /// (segment index, slice) of each frame, in order.
    frames: Vec<(usize, usize)>,
    /// The frames' pixels, 1 bit each, least significant bit first, contiguous.
    pixels: Vec<u8>,
    /// Bits of `pixels` in use.
    bits: usize,
    /// One bit per source voxel (slice, row, column order): set by an earlier segment.
    covered: Vec<u64>,
    overlap: bool,
}

/// What the SegmentSequence says of a segment (its mask is packed and gone).
#[derive(Debug, Clone)]
struct Described {
    text: String,
    category: Code,
    property: Code,
    color: [u8; 3],
}

impl<'s> SegBuilder<'s> {
    /// A SEG over `source`'s slices, to be written at `path`; refused, naming the file and the
    /// attribute, when the source lacks what a SEG must refer to ([`check_source`]).
    pub fn new(path: impl AsRef<Path>, source: &'s DicomSeries, options: SegOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        check_source(source).map_err(|reason| IoError::BadOutput { path: path.clone(), reason })?;
        Ok(SegBuilder {
            path,
            source,
            options,
            shape: [source.columns, source.rows, source.slices.len()],
            segments: Vec::new(),
            frames: Vec::new(),
            pixels: Vec::new(),
            bits: 0,
            covered: Vec::new(),
            overlap: false,
        })
    }

    fn bad(&self, reason: String) -> IoError {
        IoError::BadOutput { path: self.path.clone(), reason }
    }

    /// Add a segment (numbered in the order added): its mask, in the source volume's layout
    /// (columns, rows, slices), must have at least one voxel set; it may be any view (e.g. a
    /// mask flipped and permuted back from another layout without a copy).
    pub fn add(&mut self, segment: &SegSegment<'_>) -> Result<()> {
        if segment.mask.shape() != self.shape {
            return Err(self.bad(format!(
                "the mask of {:?} has shape {:?}, the source series {:?} (columns, rows, slices)",
                segment.text,
                segment.mask.shape(),
                self.shape
            )));
        }
        self.add_part(segment, [0; 3])
    }

    /// [`SegBuilder::add`] for a mask that covers only a box of the source grid starting at
    /// `offset` (column, row, slice), zero outside it: e.g. a prediction's crop box, so that no
    /// whole-volume mask is ever made.
    pub fn add_part(&mut self, segment: &SegSegment<'_>, offset: [usize; 3]) -> Result<()> {
        let part = segment.mask.shape();
        if (0..3).any(|d| offset[d].checked_add(part[d]).is_none_or(|end| end > self.shape[d])) {
            return Err(self.bad(format!(
                "the mask of {:?} (shape {part:?} at {offset:?}) does not fit the source series {:?} \
                 (columns, rows, slices)",
                segment.text, self.shape
            )));
        }
        let [columns, rows, _] = self.shape;
        let plane = rows * columns;
        if self.covered.is_empty() {
            self.covered = vec![0u64; (plane * self.shape[2]).div_ceil(64)];
        }
        let index = self.segments.len();
        let before = self.frames.len();
        for (dk, slice) in segment.mask.axis_iter(ndarray::Axis(2)).enumerate() {
            if slice.iter().all(|&v| v == 0) {
                continue;
            }
            let k = offset[2] + dk;
            self.frames.push((index, k));
            let end = self.bits + plane;
            self.pixels.resize(end.div_ceil(8), 0);
            for (dr, row) in slice.axis_iter(ndarray::Axis(1)).enumerate() {
                let r = offset[1] + dr;
                let bit0 = self.bits + r * columns + offset[0];
                let voxel0 = k * plane + r * columns + offset[0];
                for (c, &v) in row.iter().enumerate() {
                    if v == 0 {
                        continue;
                    }
                    let bit = bit0 + c;
                    self.pixels[bit / 8] |= 1 << (bit % 8);
                    let voxel = voxel0 + c;
                    let (word, mask) = (voxel / 64, 1u64 << (voxel % 64));
                    self.overlap |= self.covered[word] & mask != 0;
                    self.covered[word] |= mask;
                }
            }
            self.bits = end;
        }
        if self.frames.len() == before {
            return Err(self.bad(format!("the mask of {:?} is empty", segment.text)));
        }
        self.segments.push(Described {
            text: segment.text.to_string(),
            category: segment.category,
            property: segment.property,
            color: segment.color,
        });
        Ok(())
    }

    /// Segments added so far.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether no segment was added.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Write the SEG (atomically); refused when no segment was added.
    pub fn finish(mut self) -> Result<SegWritten> {
        if self.segments.is_empty() {
            return Err(self.bad("no segments: a SEG needs at least one non-empty mask".into()));
        }
        self.covered = Vec::new();
        let mut pixels = std::mem::take(&mut self.pixels);
        pixels.resize(pixels.len().next_multiple_of(2), 0);
        let series_uid = new_uid();
        let sop_uid = new_uid();
        let obj = build(&self, pixels, &series_uid, &sop_uid);
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .map_err(|e| self.bad(format!("cannot make the file meta group: {e}")))?;
        crate::atomic::write_atomic(&self.path, self.options.overwrite, |tmp| {
            file.write_to_file(tmp).map_err(std::io::Error::other)
        })?;
        Ok(SegWritten {
            segments: self.segments.len(),
            frames: self.frames.len(),
            sop_instance_uid: sop_uid,
            series_instance_uid: series_uid,
            overlap: self.overlap,
        })
    }
}

/// Whether `source` names what a SEG must refer to: its Study, its Frame of Reference, and each
/// slice's SOP Class and Instance; the error names the attribute and the file that lacks it.
pub fn check_source(source: &DicomSeries) -> std::result::Result<(), String> {
    for keyword in ["StudyInstanceUID", "FrameOfReferenceUID"] {
        if source.attribute(keyword).is_none_or(str::is_empty) {
            let file = source.slices.first().map(|s| s.path.display().to_string()).unwrap_or_default();
            return Err(format!("the source series ({file}) has no {keyword}; a SEG must refer to it"));
        }
    }
    for s in &source.slices {
        for (keyword, value) in [("SOPInstanceUID", &s.sop_instance_uid), ("SOPClassUID", &s.sop_class_uid)] {
            if value.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "source slice {} has no {keyword}; a SEG must refer to it",
                    s.path.display()
                ));
            }
        }
    }
    Ok(())
}

/// A new UID in the `2.25.` form: a random (version 4) UUID as one decimal number.
fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness: the clock and the process id are unique enough for one host.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (now.as_nanos() ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code_item(code: Code) -> InMemDicomObject {
    item(vec![
        text(tags::CODE_VALUE, VR::SH, code.value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, code.scheme),
        text(tags::CODE_MEANING, VR::LO, code.meaning),
    ])
}

/// One item of DimensionIndexSequence: the attribute `index` inside the functional group `group`.
fn dimension(index: Tag, group: Tag, organization: &str, label: &str) -> InMemDicomObject {
    let tag = |t: Tag| PrimitiveValue::Tags([t].into_iter().collect());
    item(vec![
        DataElement::new(tags::DIMENSION_INDEX_POINTER, VR::AT, tag(index)),
        DataElement::new(tags::FUNCTIONAL_GROUP_POINTER, VR::AT, tag(group)),
        text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, organization),
        text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
    ])
}

fn numbers(values: &[f64]) -> String {
    values.iter().map(|v| format_ds(*v)).collect::<Vec<_>>().join("\\")
}

/// A decimal string of at most 16 characters.
fn format_ds(v: f64) -> String {
    let plain = format!("{v}");
    if plain.len() <= 16 {
        return plain;
    }
    for digits in (1..=15).rev() {
        let s = format!("{v:.digits$e}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.0}")
}

/// SegmentLabel: at most 64 characters, without the value separator `\`.
fn segment_label(text: &str) -> String {
    text.replace('\\', "/").chars().take(64).collect()
}

/// sRGB (0–255) to the DICOM CIELab encoding (L 0–100 → 0–65535, a and b −128–127 → 0–65535),
/// through linear RGB, XYZ under D65 and CIELab.
pub fn srgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    let lin = rgb.map(|c| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
    });
    let x = 0.412_456_4 * lin[0] + 0.357_576_1 * lin[1] + 0.180_437_5 * lin[2];
    let y = 0.212_672_9 * lin[0] + 0.715_152_2 * lin[1] + 0.072_175 * lin[2];
    let z = 0.019_333_9 * lin[0] + 0.119_192 * lin[1] + 0.950_304_1 * lin[2];
    let f = |t: f64| {
        if t > (6.0f64 / 29.0).powi(3) { t.cbrt() } else { t / (3.0 * (6.0f64 / 29.0).powi(2)) + 4.0 / 29.0 }
    };
    let (fx, fy, fz) = (f(x / 0.95047), f(y), f(z / 1.08883));
    let l = 116.0 * fy - 16.0;
    let a = 500.0 * (fx - fy);
    let b = 200.0 * (fy - fz);
    let scale = |v: f64, lo: f64, hi: f64| (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 65535.0).round() as u16;
    [scale(l, 0.0, 100.0), scale(a, -128.0, 127.0), scale(b, -128.0, 127.0)]
}

/// Today's date (`YYYYMMDD`) and time (`HHMMSS`) in UTC.
fn now_utc() -> (String, String) {
    let now = chrono::Utc::now();
    (now.format("%Y%m%d").to_string(), now.format("%H%M%S").to_string())
}

/// ReferencedSOPClassUID and ReferencedSOPInstanceUID of a source slice (checked present by
/// `check_source`).
fn instance_ref(slice: &SliceRef) -> [DataElement<InMemDicomObject>; 2] {
    [
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, slice.sop_class_uid.as_deref().unwrap_or("")),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, slice.sop_instance_uid.as_deref().unwrap_or("")),
    ]
}

/// The data set of a finished builder with its packed `pixels` (padded to an even length).
fn build(b: &SegBuilder<'_>, pixels: Vec<u8>, series_uid: &str, sop_uid: &str) -> InMemDicomObject {
    let (source, segments, options, frames, overlap) =
        (b.source, &b.segments, &b.options, &b.frames, b.overlap);
    let attr = |k: &str| source.attribute(k).unwrap_or("").to_string();
    let (date, time) = now_utc();
    let non_ascii = segments.iter().any(|s| !s.text.is_ascii())
        || source.attributes.values().any(|v| !v.is_ascii())
        || !options.series_description.is_ascii();
    let mut e = Vec::new();
    if non_ascii {
        e.push(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    }
    e.extend([
        DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(["DERIVED", "PRIMARY"].map(String::from).into_iter().collect()),
        ),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, &date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, &time),
        text(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, sop_uid),
        text(tags::STUDY_DATE, VR::DA, &attr("StudyDate")),
        text(tags::SERIES_DATE, VR::DA, &date),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::STUDY_TIME, VR::TM, &attr("StudyTime")),
        text(tags::SERIES_TIME, VR::TM, &time),
        text(tags::CONTENT_TIME, VR::TM, &time),
        text(tags::ACCESSION_NUMBER, VR::SH, &attr("AccessionNumber")),
        text(tags::MODALITY, VR::CS, "SEG"),
        text(tags::MANUFACTURER, VR::LO, &options.manufacturer),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, &attr("ReferringPhysicianName")),
        text(tags::SERIES_DESCRIPTION, VR::LO, &options.series_description),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, &options.algorithm_name),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item(vec![
                seq(
                    tags::REFERENCED_INSTANCE_SEQUENCE,
                    source.slices.iter().map(|s| item(instance_ref(s).into())).collect(),
                ),
                text(tags::SERIES_INSTANCE_UID, VR::UI, &source.series_uid),
            ])],
        ),
        text(tags::PATIENT_NAME, VR::PN, &attr("PatientName")),
        text(tags::PATIENT_ID, VR::LO, &attr("PatientID")),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, &attr("PatientBirthDate")),
        text(tags::PATIENT_SEX, VR::CS, &attr("PatientSex")),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        text(tags::SOFTWARE_VERSIONS, VR::LO, &options.algorithm_version),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &attr("StudyInstanceUID")),
        text(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        text(tags::STUDY_ID, VR::SH, &attr("StudyID")),
    ]);
    // Optional Patient and Study attributes: copied when the source has them, else absent.
    for (keyword, tag, vr) in [
        ("IssuerOfPatientID", tags::ISSUER_OF_PATIENT_ID, VR::LO),
        ("StudyDescription", tags::STUDY_DESCRIPTION, VR::LO),
        ("PatientAge", tags::PATIENT_AGE, VR::AS),
        ("PatientSize", tags::PATIENT_SIZE, VR::DS),
        ("PatientWeight", tags::PATIENT_WEIGHT, VR::DS),
    ] {
        if let Some(value) = source.attribute(keyword).filter(|v| !v.is_empty()) {
            e.push(text(tag, vr, value));
        }
    }
    e.extend([
        DataElement::new(
            tags::SERIES_NUMBER,
            VR::IS,
            PrimitiveValue::from(options.series_number.to_string()),
        ),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from("1")),
        text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &attr("FrameOfReferenceUID")),
        text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, &attr("PositionReferenceIndicator")),
    ]);
    let dimension_uid = new_uid();
    // The position index counts the source positions that have frames, 1… in slice order.
    let mut with_frames: Vec<usize> = frames.iter().map(|&(_, k)| k).collect();
    with_frames.sort_unstable();
    with_frames.dedup();
    let position_index = |k: usize| with_frames.binary_search(&k).map_or(0, |p| p + 1) as u32;
    // "3D" (equally spaced parallel planes) only when the frames are one segment's, on
    // consecutive source slices (the reader accepts evenly spaced series only).
    if segments.len() == 1
        && with_frames.last().zip(with_frames.first()).is_some_and(|(l, f)| l - f + 1 == with_frames.len())
    {
        e.push(text(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D"));
    }
    e.extend([
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(vec![text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_uid)])],
        ),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                dimension(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    &dimension_uid,
                    "ReferencedSegmentNumber",
                ),
                dimension(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    &dimension_uid,
                    "ImagePositionPatient",
                ),
            ],
        ),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from(frames.len().to_string())),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(source.rows as u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(source.columns as u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        text(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        text(tags::SEGMENTS_OVERLAP, VR::CS, if overlap { "YES" } else { "NO" }),
        text(tags::CONTENT_LABEL, VR::CS, "VOXTELL"),
        text(tags::CONTENT_DESCRIPTION, VR::LO, "Text-prompted segmentation"),
        text(tags::CONTENT_CREATOR_NAME, VR::PN, ""),
    ]);
    let segment_items = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            item(vec![
                seq(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, vec![code_item(s.category)]),
                DataElement::new(tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from((i + 1) as u16)),
                text(tags::SEGMENT_LABEL, VR::LO, &segment_label(&s.text)),
                text(tags::SEGMENT_DESCRIPTION, VR::ST, &s.text),
                text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                text(tags::SEGMENT_ALGORITHM_NAME, VR::LO, &options.algorithm_name),
                DataElement::new(
                    tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                    VR::US,
                    PrimitiveValue::U16(srgb_to_dicom_lab(s.color).into_iter().collect()),
                ),
                seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![code_item(s.property)]),
                seq(
                    tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                    vec![item(vec![
                        seq(
                            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
                            vec![code_item(Code {
                                value: "123110",
                                scheme: "DCM",
                                meaning: "Artificial Intelligence",
                            })],
                        ),
                        text(tags::ALGORITHM_VERSION, VR::LO, &options.algorithm_version),
                        text(tags::ALGORITHM_NAME, VR::LO, &options.algorithm_name),
                    ])],
                ),
            ])
        })
        .collect();
    e.push(seq(tags::SEGMENT_SEQUENCE, segment_items));
    let o = source.orientation;
    let spacing_between = slice_spacing(source);
    e.push(seq(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![item(vec![
            seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(vec![
                    text(
                        tags::SLICE_THICKNESS,
                        VR::DS,
                        &source
                            .attribute("SliceThickness")
                            .map(str::to_string)
                            .unwrap_or_else(|| format_ds(spacing_between)),
                    ),
                    text(tags::PIXEL_SPACING, VR::DS, &numbers(&source.pixel_spacing)),
                    text(tags::SPACING_BETWEEN_SLICES, VR::DS, &format_ds(spacing_between)),
                ])],
            ),
            seq(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(vec![text(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &numbers(&o))])],
            ),
        ])],
    ));
    let per_frame = frames
        .iter()
        .map(|&(i, k)| {
            let s = &source.slices[k];
            item(vec![
                seq(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![item(vec![
                        seq(
                            tags::SOURCE_IMAGE_SEQUENCE,
                            vec![item(
                                instance_ref(s)
                                    .into_iter()
                                    .chain([
                                        seq(
                                            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                                            vec![code_item(Code {
                                                value: "121322",
                                                scheme: "DCM",
                                                meaning: "Source image for image processing operation",
                                            })],
                                        ),
                                        text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
                                    ])
                                    .collect(),
                            )],
                        ),
                        seq(
                            tags::DERIVATION_CODE_SEQUENCE,
                            vec![code_item(Code { value: "113076", scheme: "DCM", meaning: "Segmentation" })],
                        ),
                    ])],
                ),
                seq(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![item(vec![DataElement::new(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32([(i + 1) as u32, position_index(k)].into_iter().collect()),
                    )])],
                ),
                seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(vec![text(tags::IMAGE_POSITION_PATIENT, VR::DS, &numbers(&s.position))])],
                ),
                seq(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item(vec![DataElement::new(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        VR::US,
                        PrimitiveValue::from((i + 1) as u16),
                    )])],
                ),
            ])
        })
        .collect();
    e.push(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    e.push(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)));
    InMemDicomObject::from_element_iter(e)
}

/// The distance between neighbouring slices along the normal (the span over `n − 1`), 1 mm for a
/// single slice.
fn slice_spacing(source: &DicomSeries) -> f64 {
    let n = source.slices.len();
    if n < 2 {
        return 1.0;
    }
    let (a, b) = (source.slices[0].position, source.slices[n - 1].position);
    let d: f64 = (0..3).map(|w| (b[w] - a[w]).powi(2)).sum::<f64>().sqrt();
    d / (n - 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_2_25_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert!(a.starts_with("2.25.") && a.len() <= 64 && a != b, "{a} {b}");
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()) && !a[5..].starts_with('0'));
    }

    #[test]
    fn decimal_strings_fit_16_characters() {
        for v in [0.0, 1.5, -123.456_789_012_345_67, 1e-12, 0.703_125_000_000_000_1, 123_456_789.123_456_79] {
            let s = format_ds(v);
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().unwrap();
            assert!((back - v).abs() <= 1e-9 * v.abs().max(1.0), "{v} → {s}");
        }
    }

    #[test]
    fn labels_are_cut_and_have_no_separator() {
        let long = "a\\b".repeat(40);
        let l = segment_label(&long);
        assert_eq!(l.chars().count(), 64);
        assert!(!l.contains('\\'));
        assert_eq!(segment_label("λεμφαδένας"), "λεμφαδένας");
    }

    #[test]
    fn lab_of_white_black_and_red() {
        // Neutral greys have a = b = 0 (32896 of 65535), to rounding.
        let [l, a, b] = srgb_to_dicom_lab([255, 255, 255]);
        assert!(l == 65535 && a.abs_diff(32896) <= 2 && b.abs_diff(32896) <= 2, "{l} {a} {b}");
        assert_eq!(srgb_to_dicom_lab([0, 0, 0]), [0, 32896, 32896]);
        // Red: L 53.24, a 80.09, b 67.20.
        let [l, a, b] = srgb_to_dicom_lab([255, 0, 0]);
        let back = |v: u16, lo: f64, hi: f64| f64::from(v) / 65535.0 * (hi - lo) + lo;
        assert!((back(l, 0.0, 100.0) - 53.24).abs() < 0.05);
        assert!((back(a, -128.0, 127.0) - 80.09).abs() < 0.1);
        assert!((back(b, -128.0, 127.0) - 67.20).abs() < 0.1);
    }

    #[test]
    fn dates_and_times_are_da_and_tm() {
        let (d, t) = now_utc();
        assert_eq!((d.len(), t.len()), (8, 6));
        assert!(d.chars().chain(t.chars()).all(|c| c.is_ascii_digit()), "{d} {t}");
    }
}
