//! DICOM series reading against SimpleITK's `ImageSeriesReader` on the same files
//! (fixtures from `tools/gen_io_fixtures_dicom.py`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};
use ndarray_npy::read_npy;
use serde::Deserialize;
use voxtell_io::{DicomOptions, IoError, Volume, WriteOptions, list_series, read, read_dicom_series};

fn fixtures() -> PathBuf {
    voxtell_testutil::fixtures().join("io/dicom")
}

type Manifest = voxtell_testutil::Manifest<Case>;

#[derive(Deserialize)]
struct Case {
    name: String,
    folder: String,
    readable: bool,
    expect_error: Option<String>,
    expected: Option<String>,
    affine: Option<String>,
    #[serde(default)]
    sub_cases: Vec<SubCase>,
}

#[derive(Deserialize)]
struct SubCase {
    series_uid: String,
    expected: String,
    affine: String,
}

fn manifest() -> Manifest {
    voxtell_testutil::read_json(fixtures().join("manifest.json"))
}

fn assert_matches_sitk(vol: &Volume, expected: &str, affine: &str, name: &str) {
    let want: Array3<f32> = read_npy(fixtures().join(expected)).unwrap();
    assert_eq!(vol.data.shape(), want.shape(), "{name}: shape");
    for ((idx, a), b) in vol.data.indexed_iter().zip(want.iter()) {
        assert_eq!(a.to_bits(), b.to_bits(), "{name}: voxel {idx:?}: ours {a}, SimpleITK {b}");
    }
    // SimpleITK's NIfTI stores the affine in f32, so agreement is to f32 precision.
    let want: Array2<f64> = read_npy(fixtures().join(affine)).unwrap();
    for r in 0..4 {
        for c in 0..4 {
            let (ours, theirs) = (vol.affine[r][c], want[[r, c]]);
            assert!(
                (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0),
                "{name}: affine[{r}][{c}] {ours} vs {theirs}"
            );
        }
    }
}

#[test]
fn series_match_simpleitk() {
    let mut checked = 0;
    for case in manifest().cases.iter().filter(|c| c.readable) {
        let vol = read(fixtures().join(&case.folder)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_matches_sitk(&vol, case.expected.as_ref().unwrap(), case.affine.as_ref().unwrap(), &case.name);
        checked += 1;
    }
    assert_eq!(checked, 6, "ct_axial, mr_oblique, ct_rle, ct_deflate, ct_j2k, ct_jpeg_lossless");
}

#[test]
fn a_chosen_series_is_read_from_a_folder_with_two() {
    let case = manifest().cases.into_iter().find(|c| c.name == "two_series").unwrap();
    let folder = fixtures().join(&case.folder);
    let series = list_series(&folder).unwrap();
    assert_eq!(series.len(), 2);
    for sub in &case.sub_cases {
        let vol = read_dicom_series(
            &folder,
            &DicomOptions { series_uid: Some(sub.series_uid.clone()), ..Default::default() },
        )
        .unwrap();
        assert_matches_sitk(&vol, &sub.expected, &sub.affine, &sub.series_uid);
    }
    let err = read_dicom_series(
        &folder,
        &DicomOptions { series_uid: Some("1.2.3.4".into()), ..Default::default() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("1.2.3.4"), "{err}");
}

#[test]
fn inconsistent_series_are_rejected_with_the_reason() {
    for case in manifest().cases.iter().filter(|c| !c.readable) {
        let folder = fixtures().join(&case.folder);
        let err = read(&folder).expect_err(&case.name);
        let text = err.to_string();
        match case.expect_error.as_deref() {
            Some("multiple_series") => {
                assert!(
                    matches!(&err, IoError::MultipleSeries { series, .. } if series.len() == 2),
                    "{text}"
                );
                for sub in &case.sub_cases {
                    assert!(text.contains(&sub.series_uid), "{text}");
                }
            }
            Some("uneven_spacing") => assert!(text.contains("uneven slice spacing"), "{text}"),
            Some("not_dicom") => {
                assert!(text.contains("IM9999.dcm") && text.contains("not a readable DICOM file"), "{text}")
            }
            Some("inconsistent_orientation") => assert!(text.contains("ImageOrientationPatient"), "{text}"),
            Some("unsupported_transfer_syntax") => {
                assert!(
                    text.contains("cannot decode pixel data") && text.contains("1.2.840.10008.1.2.4.80"),
                    "{text}"
                )
            }
            other => panic!("{}: unknown expectation {other:?}", case.name),
        }
    }
}

#[test]
fn empty_and_missing_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_dicom_series(dir.path(), &DicomOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no files"), "{err}");
    let err = read_dicom_series(dir.path().join("nope"), &DicomOptions::default()).unwrap_err();
    assert!(matches!(err, IoError::Os { .. }), "{err}");
}

#[test]
fn a_dicom_input_is_written_back_in_its_own_geometry() {
    let vol = read(fixtures().join("mr_oblique")).unwrap();
    let ras = vol.to_ras().unwrap();
    let labels = ras.data.mapv(|v| u16::from(v > 0.0));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mask.nii.gz");
    voxtell_io::write_seg(&out, labels.view(), &ras.geometry, WriteOptions::default()).unwrap();
    let back = voxtell_io::read_nifti(&out).unwrap();
    assert_eq!(back.shape(), vol.shape());
    for r in 0..4 {
        for c in 0..4 {
            assert!((back.affine[r][c] - vol.affine[r][c]).abs() < 1e-4, "affine[{r}][{c}]");
        }
    }
    for (m, v) in back.data.iter().zip(vol.data.iter()) {
        assert_eq!(*m, f32::from(u8::from(*v > 0.0)));
    }
}

/// The file's own text value of `tag`, read independently of the reader.
fn file_text(path: &Path, tag: dicom_core::Tag) -> Option<String> {
    let obj = dicom_object::open_file(path).unwrap();
    let v = obj.element_opt(tag).ok().flatten()?.to_str().ok()?.trim_end_matches(['\0', ' ']).to_string();
    Some(v)
}

#[test]
fn the_source_series_lists_every_slice_in_the_volumes_order_with_its_uids_and_position() {
    use dicom_dictionary_std::tags;
    use voxtell_io::read_dicom_series_with_source;
    let mut checked = 0;
    for case in manifest().cases.iter().filter(|c| c.readable) {
        let folder = fixtures().join(&case.folder);
        // Shuffled on disk: the copies' names run against the slice order (reversed, rotated).
        let shuffled = tempfile::tempdir().unwrap();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (i, f) in files.iter().enumerate() {
            std::fs::copy(
                f,
                shuffled.path().join(format!("{:03}.dcm", (files.len() - 1 - i + 2) % files.len())),
            )
            .unwrap();
        }
        let (vol, series) = read_dicom_series_with_source(shuffled.path(), &DicomOptions::default()).unwrap();
        assert_eq!(
            vol.data,
            read_dicom_series(&folder, &DicomOptions::default()).unwrap().data,
            "{}",
            case.name
        );
        let n = vol.data.shape()[2];
        assert_eq!(series.slices.len(), n, "{}", case.name);
        assert_eq!((series.columns, series.rows), (vol.data.shape()[0], vol.data.shape()[1]));
        for (k, s) in series.slices.iter().enumerate() {
            // Plane k's origin through the affine (RAS) is the slice's position (LPS).
            let ras: Vec<f64> = (0..3).map(|w| vol.affine[w][2] * k as f64 + vol.affine[w][3]).collect();
            let lps = [-ras[0], -ras[1], ras[2]];
            for w in 0..3 {
                assert!(
                    (lps[w] - s.position[w]).abs() < 1e-4,
                    "{}: slice {k}: {lps:?} vs {:?}",
                    case.name,
                    s.position
                );
            }
            assert_eq!(s.sop_instance_uid, file_text(&s.path, tags::SOP_INSTANCE_UID), "{}", case.name);
            assert_eq!(s.sop_class_uid, file_text(&s.path, tags::SOP_CLASS_UID), "{}", case.name);
            assert!(s.sop_instance_uid.is_some(), "{}: slice {k} without SOPInstanceUID", case.name);
        }
        let mut uids: Vec<_> = series.slices.iter().map(|s| s.sop_instance_uid.clone()).collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), n, "{}: SOPInstanceUIDs repeat", case.name);
        let first = &series.slices[0].path;
        for (keyword, tag) in voxtell_io::SERIES_ATTRIBUTES {
            assert_eq!(
                series.attribute(keyword),
                file_text(first, tag).as_deref(),
                "{}: {keyword}",
                case.name
            );
        }
        assert!(series.attribute("StudyInstanceUID").is_some(), "{}", case.name);
        // From the headers alone: the same.
        assert_eq!(voxtell_io::read_dicom_source(shuffled.path(), &DicomOptions::default()).unwrap(), series);
        checked += 1;
    }
    assert_eq!(checked, 6);
}
