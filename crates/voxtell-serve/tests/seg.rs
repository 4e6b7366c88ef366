//! `GET /jobs/{id}/seg.dcm` on a real loopback server with the tiny fixture model: a fixture
//! series uploaded as a zip, segmented, and its SEG read back with dicom-object — every frame
//! must be the result's mask (`GET /jobs/{id}/result`) put back on the source grid at the slice
//! of the instance it names; dciodvfy (Debian `dicom3tools`) must report no error. Then every
//! refusal: not a DICOM upload, unknown, unfinished, evicted, no key.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, open_file};
use ndarray::ArrayView3;
use serde_json::json;
use voxtell_serve::ServeConfig;
use voxtell_testutil::dciodvfy;
use voxtell_wire::WireArray;

/// Every prompt of the fixture bank (one not ASCII, for the character set).
const PROMPTS: [&str; 4] = ["liver", "left kidney", "lesion (liver)/segment 4", "läsion der leber"];

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<InMemDicomObject> {
    obj.element(tag).unwrap().items().unwrap().to_vec()
}

fn int(obj: &InMemDicomObject, tag: dicom_core::Tag) -> usize {
    obj.element(tag).unwrap().to_int::<usize>().unwrap()
}

/// Frame `f` of a SEG, unpacked (rows × columns, row-major).
fn frame(seg: &DefaultDicomObject, f: usize, rows: usize, cols: usize) -> Vec<u8> {
    let data = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let plane = rows * cols;
    (0..plane).map(|p| (data[(f * plane + p) / 8] >> ((f * plane + p) % 8)) & 1).collect()
}

/// Upload the fixture series `name` as a zip, run `prompts` on it; the job, the image and the
/// masks the server answers.
fn segment(c: &Client, name: &str, prompts: &[&str]) -> (String, WireArray, WireArray) {
    let (id, _, upload) = c.upload(&zip_of(&series_files(name)), true);
    let image = voxtell_wire::decode(&upload.body, 1 << 30).unwrap();
    let job = c.start_job(&id, json!(prompts));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }), "{name}");
    let r = c.get(&format!("/jobs/{job}/result"));
    assert_eq!(r.status, 200);
    (job, image, voxtell_wire::decode(&r.body, 1 << 30).unwrap())
}

/// Check the SEG `bytes` of `prompts` on the fixture series `name` against the server's
/// `image` and `masks`; returns the prompts that have a segment.
fn check_seg(
    bytes: &[u8],
    name: &str,
    prompts: &[&str],
    image: &WireArray,
    masks: &WireArray,
) -> Vec<String> {
    let (volume, series) = voxtell_io::read_dicom_series_with_source(
        fixtures().join("io/dicom").join(name),
        &voxtell_io::DicomOptions::default(),
    )
    .unwrap();
    let geometry = volume.to_ras().unwrap().geometry;
    let sar = geometry.ras_shape();
    assert_eq!(masks.shape(), &[prompts.len(), sar[0], sar[1], sar[2]]);
    // The server's grid is the source's: its image, put back, is the series as read.
    let values = image.to_f32().unwrap();
    let restored = geometry.restore_view(ArrayView3::from_shape(sar, &values).unwrap()).unwrap();
    assert_eq!(restored, volume.data, "{name}: the uploaded image does not map back onto the series");

    // Each prompt's mask on the source grid (columns, rows, slices).
    let n = sar.iter().product::<usize>();
    let on_source: Vec<_> = (0..prompts.len())
        .map(|i| {
            let mask = ArrayView3::from_shape(sar, &masks.bytes()[i * n..(i + 1) * n]).unwrap();
            geometry.restore_view(mask).unwrap()
        })
        .collect();
    let kept: Vec<usize> = (0..prompts.len()).filter(|&i| on_source[i].iter().any(|&v| v != 0)).collect();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}_seg.dcm"));
    std::fs::write(&path, bytes).unwrap();
    let seg = open_file(&path).unwrap();
    assert_eq!(text(&seg, tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.66.4");
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    for (keyword, tag) in [
        ("StudyInstanceUID", tags::STUDY_INSTANCE_UID),
        ("FrameOfReferenceUID", tags::FRAME_OF_REFERENCE_UID),
    ] {
        assert_eq!(Some(text(&seg, tag).as_str()), series.attribute(keyword), "{name}: {keyword}");
    }
    assert_ne!(text(&seg, tags::SERIES_INSTANCE_UID), series.series_uid);
    let (rows, cols) = (int(&seg, tags::ROWS), int(&seg, tags::COLUMNS));
    assert_eq!((rows, cols), (series.rows, series.columns));

    // Segments: the non-empty prompts in order, with the codes and colours `voxtell predict` uses.
    let segments = items(&seg, tags::SEGMENT_SEQUENCE);
    assert_eq!(segments.len(), kept.len(), "{name}: segments");
    for (s, (item, &i)) in segments.iter().zip(&kept).enumerate() {
        assert_eq!(int(item, tags::SEGMENT_NUMBER), s + 1);
        assert_eq!(text(item, tags::SEGMENT_LABEL), prompts[i]);
        assert_eq!(text(item, tags::SEGMENT_DESCRIPTION), prompts[i]);
        let (category, property) = voxtell_infer::code_for(prompts[i]);
        let code = |seq| text(&items(item, seq)[0], tags::CODE_VALUE);
        assert_eq!(code(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE), category.value);
        assert_eq!(code(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE), property.value);
        let lab =
            item.element(tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE).unwrap().to_multi_int::<u16>().unwrap();
        let colour = voxtell_io::dicom_seg::srgb_to_dicom_lab(voxtell_infer::preview::mask_colour(i));
        assert_eq!(lab, colour.to_vec(), "{name}: colour of {:?}", prompts[i]);
    }

    // Frames: each names a source instance and equals its prompt's mask at that slice.
    let per_frame = items(&seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    assert_eq!(per_frame.len(), int(&seg, tags::NUMBER_OF_FRAMES));
    let mut seen = BTreeSet::new();
    for (f, item) in per_frame.iter().enumerate() {
        let s = int(&items(item, tags::SEGMENT_IDENTIFICATION_SEQUENCE)[0], tags::REFERENCED_SEGMENT_NUMBER);
        let derivation = &items(item, tags::DERIVATION_IMAGE_SEQUENCE)[0];
        let uid = text(&items(derivation, tags::SOURCE_IMAGE_SEQUENCE)[0], tags::REFERENCED_SOP_INSTANCE_UID);
        let k = series
            .slices
            .iter()
            .position(|sl| sl.sop_instance_uid.as_deref() == Some(uid.as_str()))
            .unwrap_or_else(|| panic!("{name}: frame {f} names {uid}, no instance of the series"));
        let mask = &on_source[kept[s - 1]];
        let want: Vec<u8> = (0..rows * cols).map(|p| mask[[p % cols, p / cols, k]]).collect();
        assert_eq!(frame(&seg, f, rows, cols), want, "{name}: frame {f} (segment {s}, slice {k})");
        assert!(seen.insert((s, k)), "{name}: segment {s} has two frames on slice {k}");
    }
    // And every slice with a voxel of a segment has its frame.
    let expected: BTreeSet<(usize, usize)> = kept
        .iter()
        .enumerate()
        .flat_map(|(s, &i)| {
            let mask = &on_source[i];
            (0..mask.shape()[2])
                .filter(move |&k| mask.index_axis(ndarray::Axis(2), k).iter().any(|&v| v != 0))
                .map(move |k| (s + 1, k))
        })
        .collect();
    assert_eq!(seen, expected, "{name}: frames");
    dciodvfy(&path);
    kept.iter().map(|&i| prompts[i].to_string()).collect()
}

/// Nothing of a request is left in the server's scratch folder.
fn assert_scratch_empty(server: &voxtell_serve::Server) {
    let left: Vec<_> = std::fs::read_dir(server.scratch_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left in the scratch folder: {left:?}");
}

#[test]
fn a_dicom_upload_gives_a_seg_of_the_masks_on_its_slices() {
    let (server, c) = start(config());
    for name in ["ct_axial", "mr_oblique"] {
        let (job, image, masks) = segment(&c, name, &PROMPTS);
        let a = c.get(&format!("/jobs/{job}/seg.dcm"));
        assert_eq!(a.status, 200, "{name}: {:?}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.content_type.as_deref(), Some("application/dicom"));
        assert_eq!(a.disposition, Some(format!("attachment; filename=\"voxtell_{job}_seg.dcm\"")));
        assert_eq!(&a.body[128..132], b"DICM", "{name}: a DICOM file");
        let kept = check_seg(&a.body, name, &PROMPTS, &image, &masks);
        eprintln!("{name}: segments {kept:?}");
        assert!(!kept.is_empty(), "{name}: no prompt found anything; the check would be vacuous");
        assert_scratch_empty(&server);
    }
}

/// The tiny model with the fixture bank and one more prompt, [`NOTHING`], whose vector is NaN:
/// its logits are NaN, so its mask is empty (the tiny model finds something for every real
/// prompt on the fixture series).
fn predictor_with_nothing() -> voxtell_infer::Predictor {
    let device = candle_core::Device::Cpu;
    let mut bank = voxtell_text::EmbeddingBank::read(fixtures().join("infer/predict/bank.npz")).unwrap();
    bank.insert(NOTHING, &vec![f32::NAN; bank.dim()]).unwrap();
    let vectors = voxtell_text::PromptVectors::new(bank, None, candle_core::DType::F32, &device);
    let folder = voxtell_fusion::ModelDir::open(fixtures().join("fusion/cfg_a")).unwrap();
    let options = voxtell_infer::PredictOptions { max_memory: Some(1 << 30), ..Default::default() };
    voxtell_infer::Predictor::open(&folder, vectors, options, &device, &[]).unwrap()
}

/// A prompt whose mask is always empty ([`predictor_with_nothing`]).
const NOTHING: &str = "nothing at all";

#[test]
fn empty_masks_have_no_segment_and_a_seg_of_none_is_409() {
    let (server, c) = start_with(predictor_with_nothing(), config());
    // The empty prompt between two others: the segments are renumbered, the colours stay the
    // prompts'.
    let prompts = ["liver", NOTHING, "left kidney"];
    let (job, image, masks) = segment(&c, "ct_axial", &prompts);
    let n = masks.len() / 3;
    assert!(masks.bytes()[n..2 * n].iter().all(|&v| v == 0), "the NaN prompt found something");
    let a = c.get(&format!("/jobs/{job}/seg.dcm"));
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(check_seg(&a.body, "ct_axial", &prompts, &image, &masks), ["liver", "left kidney"]);

    let (job, _, _) = segment(&c, "ct_axial", &[NOTHING]);
    let a = c.get(&format!("/jobs/{job}/seg.dcm"));
    assert_eq!(a.status, 409);
    assert!(a.detail().contains("Every mask of this job is empty"), "{}", a.detail());
    assert!(a.detail().contains(NOTHING), "{}", a.detail());
    assert_scratch_empty(&server);
}

#[test]
fn a_seg_needs_the_key_a_dicom_series_and_a_finished_job() {
    let (server, c) = start(ServeConfig { api_key: Some("s3cret".into()), ..config() });
    let a = c.with_key(None).get("/jobs/0123/seg.dcm");
    assert_eq!((a.status, a.detail().as_str()), (401, "Invalid or missing API key."));
    let a = c.get("/jobs/0123/seg.dcm");
    assert_eq!((a.status, a.detail().as_str()), (404, "Unknown job_id."));

    // A NIfTI upload has no series to refer to: told at once, even while its job runs.
    let (big, _, _) = c.upload(&big_image(), false);
    let running = c.start_job(&big, json!(["liver"]));
    let a = c.get(&format!("/jobs/{running}/seg.dcm"));
    assert_eq!(a.status, 409, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(a.detail().contains("uploaded as a zip of one DICOM series"), "{}", a.detail());

    // A DICOM job queued behind it, then cancelled: not finished, as for its result.
    let (dicom, _, _) = c.upload(&zip_of(&series_files("ct_axial")), false);
    let queued = c.start_job(&dicom, json!(["liver"]));
    let a = c.get(&format!("/jobs/{queued}/seg.dcm"));
    assert_eq!((a.status, a.detail().as_str()), (409, "Job not finished (status=queued)."));
    c.post(&format!("/jobs/{queued}/cancel"), b"");
    let a = c.get(&format!("/jobs/{queued}/seg.dcm"));
    assert_eq!((a.status, a.detail().as_str()), (409, "Job not finished (status=cancelled)."));
    c.post(&format!("/jobs/{running}/cancel"), b"");
    assert_eq!(c.all_events(&running).last().unwrap(), &json!({ "status": "cancelled" }));

    // A finished NIfTI job: still not a DICOM series.
    let (nifti, _, _) = c.upload(&read_fixture("infer/predict/images/ct_oblique.nii.gz"), false);
    let job = c.start_job(&nifti, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    let a = c.get(&format!("/jobs/{job}/seg.dcm"));
    assert_eq!(a.status, 409);
    assert!(a.detail().contains("not uploaded as a DICOM series"), "{}", a.detail());
    assert_eq!(c.get(&format!("/jobs/{job}/result")).status, 200);

    // A series without the Frame of Reference a SEG must name: readable, segmented, but no SEG;
    // the detail names the attribute and the zip entry.
    let (bare, _, _) = c.upload(&zip_of(&without_frame_of_reference("ct_axial")), false);
    let job = c.start_job(&bare, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    let a = c.get(&format!("/jobs/{job}/seg.dcm"));
    assert_eq!(a.status, 409, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(
        a.detail().contains("FrameOfReferenceUID") && a.detail().contains("ct_axial/IM0"),
        "{}",
        a.detail()
    );

    // With the key, a finished DICOM job gives its SEG.
    let job = c.start_job(&dicom, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    assert_eq!(c.get(&format!("/jobs/{job}/seg.dcm")).status, 200);
    assert_scratch_empty(&server);
}

/// The files of the fixture series `name` without their FrameOfReferenceUID.
fn without_frame_of_reference(name: &str) -> Vec<(String, Vec<u8>)> {
    series_files(name)
        .into_iter()
        .map(|(file, bytes)| {
            // A DICOM file: 128 bytes of preamble, then "DICM" and the meta group.
            let mut obj = dicom_object::OpenFileOptions::new().from_reader(&bytes[128..]).unwrap();
            assert!(obj.remove_element(tags::FRAME_OF_REFERENCE_UID), "{file}");
            let mut out = Vec::new();
            obj.write_all(&mut out).unwrap();
            (file, out)
        })
        .collect()
}

#[test]
fn an_evicted_series_or_result_is_410() {
    // Room for the series (840 voxels, about 2 KiB kept, with its description) and its result
    // (a few hundred bytes), or for two 9500-byte images and the result; each further upload
    // evicts the least recently used entries until it fits.
    let (_server, c) = start(ServeConfig { cache_memory: 20_000, ..config() });
    let (dicom, _, _) = c.upload(&zip_of(&series_files("ct_axial")), false);
    let job = c.start_job(&dicom, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    let filler = |seed| nifti_i16([19, 25, 10], [1.0; 3], move |i, j, k| ((i + j + k + seed) % 9) as i16);
    for seed in 0..2 {
        c.upload(&filler(seed), false);
    }
    // The series went first (it was used before the result was made); the result stays.
    let a = c.get(&format!("/jobs/{job}/seg.dcm"));
    assert_eq!(a.status, 410, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(a.detail().contains("holds its DICOM series, was evicted"), "{}", a.detail());
    // That request used the result: three more uploads make it the oldest, and evict it.
    for seed in 2..5 {
        c.upload(&filler(seed), false);
    }
    let a = c.get(&format!("/jobs/{job}/seg.dcm"));
    assert_eq!(a.status, 410, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(a.detail().contains("The result of this job was evicted"), "{}", a.detail());
    assert_eq!(c.get(&format!("/jobs/{job}/result")).status, 410);
}
