//! DICOM SEG output over its source series, in every orientation: the fixture series and the
//! axial fixture re-labelled as coronal, sagittal, with negated direction cosines and oblique.
//! Masks are thresholds of the source image; read back with dicom-object, every frame must equal
//! the threshold of the source instance it names, at that instance's position, and each
//! segment's centroid in patient space must match the mask's through the volume's affine.
//! dciodvfy (Debian `dicom3tools`) must report no error.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, open_file};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use ndarray::{Array3, Axis};
use voxtell_io::dicom_seg::{Code, SegOptions, SegSegment, TISSUE, write_dicom_seg};
use voxtell_io::{DicomOptions, DicomSeries, Volume, read_dicom_series_with_source};
use voxtell_testutil::dciodvfy;

fn fixtures() -> PathBuf {
    voxtell_testutil::fixtures().join("io/dicom")
}

fn options() -> SegOptions {
    SegOptions {
        algorithm_name: "VoxTell".into(),
        algorithm_version: "0.1.0".into(),
        manufacturer: "voxtell-rs".into(),
        series_number: 100,
        series_description: "VoxTell segmentation".into(),
        overwrite: false,
    }
}

const LIVER: Code = Code { value: "10200004", scheme: "SCT", meaning: "Liver" };
const ORGAN: Code = Code { value: "123037004", scheme: "SCT", meaning: "Anatomical Structure" };

/// Two thresholds of the image (the second inside the first: they overlap).
fn thresholds(vol: &Volume) -> (f32, f32) {
    let mut v: Vec<f32> = vol.data.iter().copied().collect();
    v.sort_by(f32::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

/// A source instance's own pixels, rescaled as the reader rescales them, row-major.
fn instance_pixels(path: &Path) -> (Vec<f32>, usize, usize) {
    let obj = open_file(path).unwrap();
    let num = |tag, default: f64| {
        obj.element_opt(tag).ok().flatten().map(|e| e.to_float64().unwrap()).unwrap_or(default)
    };
    let (slope, intercept) = (num(tags::RESCALE_SLOPE, 1.0), num(tags::RESCALE_INTERCEPT, 0.0));
    let decoded = obj.decode_pixel_data().unwrap();
    let raw: Vec<f64> = decoded
        .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .unwrap();
    let rows = obj.element(tags::ROWS).unwrap().to_int::<usize>().unwrap();
    let cols = obj.element(tags::COLUMNS).unwrap().to_int::<usize>().unwrap();
    (raw.iter().map(|&v| (v * slope + intercept) as f32).collect(), rows, cols)
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<InMemDicomObject> {
    obj.element(tag).unwrap().items().unwrap().to_vec()
}

fn floats(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.element(tag).unwrap().to_multi_float64().unwrap()
}

/// Frame `f` of a SEG, unpacked (rows × columns, row-major).
fn frame(seg: &DefaultDicomObject, f: usize, rows: usize, cols: usize) -> Vec<u8> {
    let data = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    (0..rows * cols).map(|p| (data[(f * rows * cols + p) / 8] >> ((f * rows * cols + p) % 8)) & 1).collect()
}

/// Check a written SEG against its source and masks; returns the number of frames checked.
fn check_seg(path: &Path, source: &DicomSeries, vol: &Volume, masks: &[(f32, Array3<u8>)]) -> usize {
    let seg = open_file(path).unwrap();
    assert_eq!(text(&seg, tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.66.4");
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    for k in ["StudyInstanceUID", "FrameOfReferenceUID", "PatientID"] {
        let tag = voxtell_io::SERIES_ATTRIBUTES.iter().find(|(n, _)| *n == k).unwrap().1;
        assert_eq!(Some(text(&seg, tag).as_str()), source.attribute(k).or(Some("")), "{k}");
    }
    assert_ne!(text(&seg, tags::SERIES_INSTANCE_UID), source.series_uid);
    let referenced =
        items(&items(&seg, tags::REFERENCED_SERIES_SEQUENCE)[0], tags::REFERENCED_INSTANCE_SEQUENCE);
    assert_eq!(referenced.len(), source.slices.len());
    let rows = seg.element(tags::ROWS).unwrap().to_int::<usize>().unwrap();
    let cols = seg.element(tags::COLUMNS).unwrap().to_int::<usize>().unwrap();
    let iop = floats(
        &items(&items(&seg, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)[0], tags::PLANE_ORIENTATION_SEQUENCE)[0],
        tags::IMAGE_ORIENTATION_PATIENT,
    );
    let pm = items(&items(&seg, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)[0], tags::PIXEL_MEASURES_SEQUENCE)
        [0]
    .clone();
    let spacing = floats(&pm, tags::PIXEL_SPACING);
    let per_frame = items(&seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    assert_eq!(per_frame.len(), seg.element(tags::NUMBER_OF_FRAMES).unwrap().to_int::<usize>().unwrap());
    let mut centroids = vec![([0.0f64; 3], 0usize); masks.len()];
    for (f, item) in per_frame.iter().enumerate() {
        let segment = items(item, tags::SEGMENT_IDENTIFICATION_SEQUENCE)[0]
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<usize>()
            .unwrap();
        let derivation = &items(item, tags::DERIVATION_IMAGE_SEQUENCE)[0];
        let uid = text(&items(derivation, tags::SOURCE_IMAGE_SEQUENCE)[0], tags::REFERENCED_SOP_INSTANCE_UID);
        let slice = source.slices.iter().find(|s| s.sop_instance_uid.as_deref() == Some(&uid)).unwrap();
        let (pixels, r, c) = instance_pixels(&slice.path);
        assert_eq!((r, c), (rows, cols));
        let threshold = masks[segment - 1].0;
        let want: Vec<u8> = pixels.iter().map(|&v| u8::from(v > threshold)).collect();
        assert_eq!(frame(&seg, f, rows, cols), want, "frame {f}: not the threshold of {uid}");
        let ipp = floats(&items(item, tags::PLANE_POSITION_SEQUENCE)[0], tags::IMAGE_POSITION_PATIENT);
        for w in 0..3 {
            assert!((ipp[w] - slice.position[w]).abs() < 1e-6, "frame {f}: {ipp:?} vs {:?}", slice.position);
        }
        // Patient position of pixel (r, c): IPP + c·Δc·row cosines + r·Δr·column cosines (LPS).
        for (p, &v) in frame(&seg, f, rows, cols).iter().enumerate() {
            if v != 0 {
                let (pr, pc) = ((p / cols) as f64, (p % cols) as f64);
                let acc = &mut centroids[segment - 1];
                for w in 0..3 {
                    acc.0[w] += ipp[w] + pc * spacing[1] * iop[w] + pr * spacing[0] * iop[3 + w];
                }
                acc.1 += 1;
            }
        }
    }
    // Centroids against the masks' through the volume's (RAS) affine: within half a voxel.
    let half = vol.spacing().iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    for (i, (_, mask)) in masks.iter().enumerate() {
        let (mut sum, mut n) = ([0.0f64; 3], 0usize);
        for ((a, b, c), &v) in mask.indexed_iter() {
            if v != 0 {
                for (s, row) in sum.iter_mut().zip(&vol.affine) {
                    *s += row[0] * a as f64 + row[1] * b as f64 + row[2] * c as f64 + row[3];
                }
                n += 1;
            }
        }
        let (seg_sum, seg_n) = centroids[i];
        assert_eq!(seg_n, n, "segment {}: voxel count", i + 1);
        let ras = sum.map(|s| s / n as f64);
        let lps = [-ras[0], -ras[1], ras[2]];
        let seg_c = seg_sum.map(|s| s / seg_n as f64);
        let d = (0..3).map(|w| (lps[w] - seg_c[w]).powi(2)).sum::<f64>().sqrt();
        assert!(d <= half, "segment {}: centroid {seg_c:?} vs mask {lps:?} ({d} mm)", i + 1);
    }
    dciodvfy(path);
    per_frame.len()
}

/// Write the SEG of two thresholds of a series and check it.
fn seg_of(folder: &Path, name: &str) -> usize {
    let (vol, source) = read_dicom_series_with_source(folder, &DicomOptions::default()).unwrap();
    let (low, high) = thresholds(&vol);
    let masks: Vec<(f32, Array3<u8>)> =
        [low, high].into_iter().map(|t| (t, vol.data.mapv(|v| u8::from(v > t)))).collect();
    let segments: Vec<SegSegment<'_>> = masks
        .iter()
        .zip(["liver", "ηπατική βλάβη"])
        .map(|((_, m), text)| SegSegment {
            text,
            mask: m.view(),
            category: ORGAN,
            property: LIVER,
            color: [200, 80, 60],
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}_seg.dcm"));
    let written = write_dicom_seg(&path, &source, &segments, &options()).unwrap();
    assert!(written.overlap, "{name}: the two thresholds overlap");
    let frames = check_seg(&path, &source, &vol, &masks);
    assert_eq!(frames, written.frames);
    // A mirrored mask is caught: its frames are no longer the thresholds of their instances.
    let mirrored: Vec<(f32, Array3<u8>)> = masks
        .iter()
        .map(|(t, m)| {
            let mut m = m.clone();
            m.invert_axis(Axis(1));
            (*t, m)
        })
        .collect();
    if mirrored.iter().zip(&masks).any(|(a, b)| a.1 != b.1) {
        let segs: Vec<SegSegment<'_>> = mirrored
            .iter()
            .map(|(_, m)| SegSegment {
                text: "x",
                mask: m.view(),
                category: TISSUE,
                property: TISSUE,
                color: [0, 0, 0],
            })
            .collect();
        let bad = dir.path().join("mirrored.dcm");
        write_dicom_seg(&bad, &source, &segs, &options()).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_seg(&bad, &source, &vol, &mirrored)
        }));
        assert!(caught.is_err(), "{name}: a mirrored mask passed the checks");
    }
    frames
}

#[test]
fn the_fixture_series_give_frames_equal_to_their_instances() {
    for name in ["ct_axial", "mr_oblique", "ct_rle", "ct_deflate"] {
        assert!(seg_of(&fixtures().join(name), name) > 0, "{name}");
    }
}

/// The axial fixture re-labelled with another orientation: the same pixels, `row` and `col`
/// cosines, positions along their normal (optionally listed against it on disk).
fn relabelled(row: [f64; 3], col: [f64; 3], dir: &Path) {
    let normal = [
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    ];
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(fixtures().join("ct_axial")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let n = files.len();
    for (k, f) in files.iter().enumerate() {
        let mut obj = open_file(f).unwrap();
        let ds = |v: &[f64]| v.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join("\\");
        let iop = [row, col].concat();
        let pos: Vec<f64> = (0..3).map(|w| 10.0 + 2.5 * k as f64 * normal[w] + 3.0 * row[w]).collect();
        obj.put(DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, PrimitiveValue::from(ds(&iop))));
        obj.put(DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, PrimitiveValue::from(ds(&pos))));
        // Instance numbers against positions; files named against the slice order.
        obj.put(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from(format!("{}", (k * 3) % n + 1)),
        ));
        obj.write_to_file(dir.join(format!("{:03}.dcm", n - 1 - k))).unwrap();
    }
}

#[test]
fn every_orientation_gives_frames_in_the_source_grid() {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let cases: [(&str, [f64; 3], [f64; 3]); 6] = [
        ("axial", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        ("axial_negated_column", [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
        ("coronal", [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
        ("sagittal", [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]),
        ("sagittal_negated_row", [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]),
        ("oblique", [s, s, 0.0], [0.0, 0.0, -1.0]),
    ];
    for (name, row, col) in cases {
        let dir = tempfile::tempdir().unwrap();
        relabelled(row, col, dir.path());
        assert!(seg_of(dir.path(), name) > 0, "{name}");
    }
}

#[test]
fn a_source_without_the_uids_a_seg_refers_to_is_refused_naming_the_file_and_attribute() {
    let (vol, source) =
        read_dicom_series_with_source(fixtures().join("ct_axial"), &DicomOptions::default()).unwrap();
    let mask = vol.data.mapv(|v| u8::from(v > 0.0));
    let segs =
        [SegSegment { text: "liver", mask: mask.view(), category: ORGAN, property: LIVER, color: [1, 2, 3] }];
    let dir = tempfile::tempdir().unwrap();
    let mut no_for = source.clone();
    no_for.attributes.remove("FrameOfReferenceUID");
    let e = write_dicom_seg(dir.path().join("a.dcm"), &no_for, &segs, &options()).unwrap_err().to_string();
    assert!(e.contains("FrameOfReferenceUID") && e.contains("ct_axial"), "{e}");
    let mut no_sop = source.clone();
    no_sop.slices[2].sop_instance_uid = None;
    let e = write_dicom_seg(dir.path().join("b.dcm"), &no_sop, &segs, &options()).unwrap_err().to_string();
    assert!(e.contains("SOPInstanceUID") && e.contains(&no_sop.slices[2].path.display().to_string()), "{e}");
    // An empty mask and a mask of another shape are refused too; nothing is left behind.
    let refused = |name: &str, text: &str, mask: &Array3<u8>| {
        let one = [SegSegment { text, mask: mask.view(), category: TISSUE, property: TISSUE, color: [0; 3] }];
        write_dicom_seg(dir.path().join(name), &source, &one, &options()).unwrap_err().to_string()
    };
    let e = refused("c.dcm", "spleen", &Array3::<u8>::zeros(mask.raw_dim()));
    assert!(e.contains("\"spleen\"") && e.contains("empty"), "{e}");
    let e = refused("d.dcm", "aorta", &Array3::<u8>::ones((2, 2, 2)));
    assert!(e.contains("\"aorta\"") && e.contains("shape"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_long_and_a_greek_prompt_are_labelled_and_described_in_utf8() {
    let (vol, source) =
        read_dicom_series_with_source(fixtures().join("ct_axial"), &DicomOptions::default()).unwrap();
    let mask = vol.data.mapv(|v| u8::from(v > 0.0));
    let long = "spiculated nodule in the right upper lobe with a \\ in its text and more words after it, a 100 chars!";
    assert_eq!(long.chars().count(), 100);
    let greek = "ήπαρ";
    let segs: Vec<SegSegment<'_>> = [long, greek]
        .into_iter()
        .map(|text| SegSegment {
            text,
            mask: mask.view(),
            category: TISSUE,
            property: TISSUE,
            color: [9, 9, 9],
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.dcm");
    write_dicom_seg(&path, &source, &segs, &options()).unwrap();
    let seg = open_file(&path).unwrap();
    assert_eq!(text(&seg, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
    let segments = items(&seg, tags::SEGMENT_SEQUENCE);
    let label = text(&segments[0], tags::SEGMENT_LABEL);
    assert_eq!(label.chars().count(), 64);
    assert!(!label.contains('\\'));
    assert_eq!(text(&segments[0], tags::SEGMENT_DESCRIPTION), long);
    assert_eq!(text(&segments[1], tags::SEGMENT_LABEL), greek);
    assert_eq!(text(&seg, tags::SEGMENTS_OVERLAP), "YES");
    dciodvfy(&path);
}
