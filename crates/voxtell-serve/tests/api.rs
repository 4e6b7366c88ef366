//! The server's routes on a real loopback server with the tiny fixture model: the official
//! contract's happy paths, and every error a client can cause.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use voxtell_wire::WireArray;

const CT: &str = "infer/predict/images/ct_oblique.nii.gz";

/// The official masks of ct_oblique for "Liver" and "lesion (liver)/segment 4", in the (S, A, R)
/// space, read from the official predictor's output files.
fn official_masks() -> Vec<Vec<u8>> {
    ["Liver", "lesion__liver__segment_4"]
        .iter()
        .map(|safe| {
            let v = voxtell_io::read_nifti(
                fixtures().join(format!("infer/predict/official/ct_oblique_{safe}.nii.gz")),
            )
            .unwrap();
            v.to_ras().unwrap().data.iter().map(|&x| x as u8).collect()
        })
        .collect()
}

#[test]
fn health_capabilities_and_unknown_routes() {
    let (_server, c) = start(config());
    let h = c.get("/healthz");
    assert_eq!((h.status, h.json()), (200, json!({ "ok": true })));
    let caps = c.get("/capabilities").json();
    assert_eq!(caps["model"], "cfg_a");
    assert_eq!(caps["patch_size"], json!([32, 32, 32]));
    // Sorted bank prompts, as the official server lists them.
    assert_eq!(
        caps["available_embeddings"],
        json!(["left kidney", "lesion (liver)/segment 4", "liver", "läsion der leber"])
    );
    let a = c.get("/no/such/route");
    assert_eq!((a.status, a.detail().as_str()), (404, "Not Found"));
    let a = c.send("DELETE", "/healthz", &[], None);
    assert_eq!((a.status, a.detail().as_str()), (405, "Method Not Allowed"));
}

#[test]
fn upload_answers_the_reoriented_image_as_nnunet_reads_it() {
    let (_server, c) = start(config());
    let gz = read_fixture(CT);
    let (id, meta, a) = c.upload(&gz, true);
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(a.content_type.as_deref(), Some("application/octet-stream"));
    // Python's json.dumps text, the reader's spacing (float32 zooms, reversed) and shape.
    let expected_meta = format!(
        "{{\"image_id\": \"{id}\", \"spacing\": [2.5, 0.800000011920929, 1.25], \"shape\": [24, 53, 42]}}"
    );
    assert_eq!(a.meta.as_deref(), Some(expected_meta.as_str()));
    assert_eq!(meta["shape"], json!([24, 53, 42]));
    let image = voxtell_wire::decode(&a.body, 1 << 30).unwrap();
    assert_eq!(image.numpy_str(), "<f4");
    assert_eq!(image.shape(), &[24, 53, 42]);
    let ours = voxtell_io::read_nifti_bytes(&gz, "ct.nii.gz").unwrap().to_ras().unwrap();
    assert_eq!(image.to_f32().unwrap(), ours.data.iter().copied().collect::<Vec<_>>());

    // Uncompressed .nii is accepted (the official server answers 500), and gives the same image.
    let (_, meta2, a2) = c.upload(&gunzip(&gz), true);
    assert_eq!(meta2["shape"], meta["shape"]);
    assert_eq!(meta2["spacing"], meta["spacing"]);
    assert_eq!(voxtell_wire::decode(&a2.body, 1 << 30).unwrap().bytes(), image.bytes());

    // include_image=false: only the metadata.
    let (_, _, a3) = c.upload(&gz, false);
    assert!(a3.body.is_empty());
    for flag in ["0", "no", "off", "False"] {
        let a = c.post(&format!("/images?include_image={flag}"), &gz);
        assert_eq!(a.status, 200);
        assert!(a.body.is_empty(), "include_image={flag}");
    }
    let a = c.post("/images?include_image=maybe", &gz);
    assert_eq!(a.status, 422);
    assert!(a.detail().contains("include_image"), "{}", a.detail());
}

#[test]
fn bad_uploads_are_4xx_with_a_detail() {
    let (_server, c) = start(config());
    let gz = read_fixture(CT);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", Vec::new(), 400, "empty"),
        ("garbage", b"not an image at all, just words".to_vec(), 400, "Cannot read the upload"),
        ("truncated gzip", gz[..gz.len() / 2].to_vec(), 400, "Cannot read the upload"),
        ("truncated nii", gunzip(&gz)[..1000].to_vec(), 400, "Cannot read the upload"),
        ("bad zip", b"PK\x03\x04 and then nothing".to_vec(), 400, "zip"),
    ];
    for (what, body, status, needle) in cases {
        let a = c.post("/images", &body);
        assert_eq!(a.status, status, "{what}: {:?}", String::from_utf8_lossy(&a.body));
        assert!(a.detail().contains(needle), "{what}: {}", a.detail());
    }
    // A 4-D image.
    let mut four_d = nifti_i16([4, 4, 4], [1.0; 3], |_, _, _| 1);
    four_d[40..42].copy_from_slice(&4i16.to_le_bytes());
    four_d[48..50].copy_from_slice(&1i16.to_le_bytes());
    let a = c.post("/images", &four_d);
    assert_eq!(a.status, 200, "a 4-D header with one volume is 3-D");
    four_d[48..50].copy_from_slice(&2i16.to_le_bytes());
    let a = c.post("/images", &four_d);
    assert_eq!(a.status, 400);
    assert!(a.detail().contains("3-D"), "{}", a.detail());
    // The connection stays usable after errors.
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn a_job_streams_progress_and_returns_the_official_masks() {
    let (_server, c) = start(config());
    let (id, _, _) = c.upload(&read_fixture(CT), false);
    let job = c.start_job(&id, json!(["Liver", "lesion (liver)/segment 4"]));
    let events = c.all_events(&job);
    // One progress line per tile (6 tiles, one prompt group), then the terminal line.
    let expected: Vec<_> =
        (1..=6).map(|d| json!({ "done": d, "total": 6 })).chain([json!({ "status": "done" })]).collect();
    assert_eq!(events, expected);
    // A stream opened after the end gets the terminal line alone (the official replay).
    assert_eq!(c.all_events(&job), vec![json!({ "status": "done" })]);

    let r = c.get(&format!("/jobs/{job}/result"));
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("application/octet-stream"));
    let masks = voxtell_wire::decode(&r.body, 1 << 30).unwrap();
    assert_eq!(masks.numpy_str(), "|u1");
    assert_eq!(masks.shape(), &[2, 24, 53, 42]);
    assert!(masks.bytes().iter().all(|&v| v <= 1));
    let n = 24 * 53 * 42;
    for (i, official) in official_masks().iter().enumerate() {
        let ours = &masks.bytes()[i * n..(i + 1) * n];
        let differing = ours.iter().zip(official).filter(|(a, b)| a != b).count();
        // The official numerics accumulate in f16: voxels whose logit is within rounding of 0
        // may differ (crates/voxtell-infer/tests/official.rs bounds them); here at most 0.1 %.
        assert!(differing * 1000 <= n, "prompt {i}: {differing} voxels differ from the official mask");
        assert!(ours.contains(&1), "prompt {i}: empty mask");
    }

    // A single string is one prompt, not a list of characters.
    let job = c.start_job(&id, json!("liver"));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    let one = voxtell_wire::decode(&c.get(&format!("/jobs/{job}/result")).body, 1 << 30).unwrap();
    assert_eq!(one.shape(), &[1, 24, 53, 42]);
    // The bank is looked up case-insensitively: "liver" and "Liver" are one vector.
    assert_eq!(one.bytes(), &masks.bytes()[..n]);
}

#[test]
fn keep_largest_keeps_one_component_per_prompt() {
    let (_server, c) = start(config());
    let (id, _, _) = c.upload(&read_fixture(CT), false);
    let a = c.post_json(
        "/jobs",
        &json!({ "image_id": id, "prompts": ["lesion (liver)/segment 4"], "keep_largest": true }),
    );
    let job = a.json()["job_id"].as_str().unwrap().to_string();
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    let kept = voxtell_wire::decode(&c.get(&format!("/jobs/{job}/result")).body, 1 << 30).unwrap();
    let plain = c.start_job(&id, json!(["lesion (liver)/segment 4"]));
    c.all_events(&plain);
    let plain = voxtell_wire::decode(&c.get(&format!("/jobs/{plain}/result")).body, 1 << 30).unwrap();
    let count = |a: &WireArray| a.bytes().iter().filter(|&&v| v == 1).count();
    assert!(count(&kept) <= count(&plain));
    // Every kept voxel was in the plain mask.
    assert!(kept.bytes().iter().zip(plain.bytes()).all(|(k, p)| *k <= *p));
}

#[test]
fn bad_jobs_are_refused_in_the_official_order() {
    let (_server, c) = start(config());
    let (id, _, _) = c.upload(&read_fixture(CT), false);
    let check = |body: serde_json::Value, status: u16, detail: &str| {
        let a = c.post_json("/jobs", &body);
        assert_eq!(a.status, status, "{body}: {:?}", String::from_utf8_lossy(&a.body));
        assert!(a.detail().contains(detail), "{body}: {}", a.detail());
    };
    // The image is checked before the prompts.
    check(json!({ "image_id": "nope", "prompts": [] }), 404, "Unknown image_id (upload it first).");
    check(json!({ "prompts": ["liver"] }), 404, "Unknown image_id");
    check(json!({ "image_id": id }), 400, "No prompts given.");
    check(json!({ "image_id": id, "prompts": [] }), 400, "No prompts given.");
    check(json!({ "image_id": id, "prompts": 0 }), 400, "No prompts given.");
    check(json!({ "image_id": id, "prompts": "" }), 400, "No prompts given.");
    check(json!({ "image_id": id, "prompts": 5 }), 400, "prompts must be a list of non-empty strings.");
    check(
        json!({ "image_id": id, "prompts": ["liver", "  "] }),
        400,
        "prompts must be a list of non-empty strings.",
    );
    check(
        json!({ "image_id": id, "prompts": ["liver", 3] }),
        400,
        "prompts must be a list of non-empty strings.",
    );
    check(json!({ "image_id": id, "prompts": ["liver", "spleen"] }), 400, "\"spleen\"");
    for body in [&b"{not json"[..], b"[1, 2]"] {
        let a = c.send("POST", "/jobs", &[("Content-Type", "application/json")], Some(body));
        assert_eq!(a.status, 422, "{:?}", String::from_utf8_lossy(body));
    }
    for path in ["/jobs/0123/events", "/jobs/0123/result"] {
        let a = c.get(path);
        assert_eq!((a.status, a.detail().as_str()), (404, "Unknown job_id."), "{path}");
    }
    let a = c.post("/jobs/0123/cancel", b"");
    assert_eq!((a.status, a.detail().as_str()), (404, "Unknown job_id."));
    // Cancelling a finished job is fine, as in the official server.
    let job = c.start_job(&id, json!(["liver"]));
    c.all_events(&job);
    assert_eq!(c.post(&format!("/jobs/{job}/cancel"), b"").json(), json!({ "cancelling": true }));
    assert_eq!(c.get(&format!("/jobs/{job}/result")).status, 200);
}

#[test]
fn export_writes_the_label_map_as_the_official_writer() {
    let (_server, c) = start(config());
    let (id, _, _) = c.upload(&read_fixture(CT), false);
    let job = c.start_job(&id, json!(["Liver", "lesion (liver)/segment 4"]));
    c.all_events(&job);
    let masks = voxtell_wire::decode(&c.get(&format!("/jobs/{job}/result")).body, 1 << 30).unwrap();
    // The widget's combined label map: value i + 1 where mask i is set, later prompts on top,
    // sent as uint16.
    let n = 24 * 53 * 42;
    let mut labels = vec![0u16; n];
    for i in 0..2 {
        for (l, &m) in labels.iter_mut().zip(&masks.bytes()[i * n..(i + 1) * n]) {
            if m == 1 {
                *l = i as u16 + 1;
            }
        }
    }
    let bytes: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let payload =
        voxtell_wire::encode(&WireArray::new(voxtell_wire::Dtype::U16, vec![24, 53, 42], bytes).unwrap())
            .unwrap();
    let a = c.post(&format!("/images/{id}/export"), &payload);
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(&a.body[..2], &[0x1f, 0x8b], "a .nii.gz");
    let ours = voxtell_io::read_nifti_bytes(&a.body, "export.nii.gz").unwrap();
    let official =
        voxtell_io::read_nifti(fixtures().join("infer/predict/official_combined/ct_oblique.nii.gz")).unwrap();
    assert_eq!(ours.data.shape(), official.data.shape(), "the scan's own voxel order");
    assert_eq!(ours.affine, official.affine);
    let differing = ours.data.iter().zip(official.data.iter()).filter(|(a, b)| a != b).count();
    assert!(differing * 1000 <= n, "{differing} voxels differ from the official combined map");

    // A label map of another shape, a bad payload, an unknown image.
    let wrong = voxtell_wire::encode(&WireArray::from_u8(vec![42, 53, 24], vec![0; n]).unwrap()).unwrap();
    let a = c.post(&format!("/images/{id}/export"), &wrong);
    assert_eq!(a.status, 400);
    assert!(a.detail().contains("[42, 53, 24]"), "{}", a.detail());
    let a = c.post(&format!("/images/{id}/export"), b"VXA2 but broken");
    assert_eq!(a.status, 400);
    let floats =
        voxtell_wire::encode(&WireArray::from_f32(vec![24, 53, 42], &vec![0.0; n]).unwrap()).unwrap();
    assert_eq!(c.post(&format!("/images/{id}/export"), &floats).status, 400);
    let a = c.post("/images/0123/export", &payload);
    assert_eq!((a.status, a.detail().as_str()), (404, "Unknown image_id."));
}

#[test]
fn a_key_guards_every_route_but_healthz() {
    let (_server, c) = start(voxtell_serve::ServeConfig { api_key: Some("s3cret".into()), ..config() });
    let anonymous = c.with_key(None);
    assert_eq!(anonymous.get("/healthz").status, 200);
    for (method, path) in [
        ("GET", "/capabilities"),
        ("POST", "/images"),
        ("POST", "/jobs"),
        ("GET", "/jobs/x/events"),
        ("GET", "/nothing"),
    ] {
        let a = anonymous.send(method, path, &[], Some(b"{}"));
        assert_eq!((a.status, a.detail().as_str()), (401, "Invalid or missing API key."), "{method} {path}");
    }
    // A client that sends a whole upload before reading gets the 401, not a reset.
    let a = anonymous.post("/images", &read_fixture(CT));
    assert_eq!(a.status, 401);
    let wrong = c.with_key(Some("s3cre"));
    assert_eq!(wrong.get("/capabilities").status, 401);
    // The scheme is compared exactly, as the official server does.
    let a = anonymous.send("GET", "/capabilities", &[("Authorization", "bearer s3cret")], None);
    assert_eq!(a.status, 401);
    assert_eq!(c.get("/capabilities").status, 200);
    let (id, _, _) = c.upload(&read_fixture(CT), false);
    let job = c.start_job(&id, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
}

#[test]
fn prompt_groups_are_announced_and_restart_the_progress() {
    // The smallest budget the planner accepts: there one prompt fits a pass, two do not.
    let mut probe = predictor(voxtell_infer::PredictOptions::default());
    let shape = [24, 53, 42];
    let mut group = |b: u64| {
        probe.set_options(voxtell_infer::PredictOptions { max_memory: Some(b), ..Default::default() });
        probe.plan(shape, 2).ok().map(|plan| plan.prompt_group)
    };
    let (mut lo, mut hi) = (1u64, 1u64 << 30);
    assert!(group(lo).is_none() && group(hi) == Some(2));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if group(mid).is_some() { hi = mid } else { lo = mid }
    }
    let budget = hi;
    assert_eq!(group(budget), Some(1), "at {budget} bytes");
    let options = voxtell_infer::PredictOptions { max_memory: Some(budget), ..Default::default() };
    let (_server, c) = start_with(predictor(options), config());
    let (id, _, _) = c.upload(&read_fixture(CT), false);
    let job = c.start_job(&id, json!(["liver", "left kidney"]));
    let events = c.all_events(&job);
    assert_eq!(events[0]["event"], "oom_fallback", "{events:?}");
    assert!(events[0]["message"].as_str().unwrap().contains("batches of 1 prompt(s)"));
    // Each pass counts its own tiles from 1, as the official predictor does per call.
    let progress: Vec<_> = events.iter().filter(|e| e.get("done").is_some()).collect();
    let expected: Vec<_> = (1..=6).chain(1..=6).map(|d| json!({ "done": d, "total": 6 })).collect();
    assert_eq!(progress, expected.iter().collect::<Vec<_>>());
    assert_eq!(events.last().unwrap(), &json!({ "status": "done" }));
}

#[test]
fn an_image_outside_the_models_training_spacing_gets_a_warning_line_and_is_segmented() {
    // The demo model records its training spacings (in-plane 4–5 mm, slices 5–6 mm).
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo");
    let device = candle_core::Device::Cpu;
    let bank = voxtell_text::EmbeddingBank::read(demo.join("bank.npz")).unwrap();
    let vectors = voxtell_text::PromptVectors::new(bank, None, candle_core::DType::F32, &device);
    let folder = voxtell_fusion::ModelDir::open(demo.join("model")).unwrap();
    let predictor = voxtell_infer::Predictor::open(
        &folder,
        vectors,
        voxtell_infer::PredictOptions::default(),
        &device,
        &[],
    )
    .unwrap();
    let (_server, c) = start_with(predictor, config());
    let body = |i: usize, j: usize, k: usize| if (i + j + k).is_multiple_of(7) { 40 } else { -100 };
    let warnings = |spacing: [f32; 3]| -> Vec<String> {
        let (id, _, _) = c.upload(&nifti_i16([20, 18, 12], spacing, body), false);
        let job = c.start_job(&id, json!(["liver"]));
        let events = c.all_events(&job);
        assert_eq!(events.last().unwrap(), &json!({ "status": "done" }), "segmented: {events:?}");
        events
            .iter()
            .filter(|e| e["event"] == "warning")
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect()
    };
    let outside = warnings([10.0, 10.0, 10.0]);
    assert_eq!(outside.len(), 1, "{outside:?}");
    assert!(outside[0].contains("10.00 × 10.00 mm in-plane, 10.00 mm between slices"), "{}", outside[0]);
    assert!(outside[0].contains("in-plane 4–5 mm, slices 5–6 mm"), "{}", outside[0]);
    assert!(warnings([4.5, 4.5, 5.5]).is_empty());
}
