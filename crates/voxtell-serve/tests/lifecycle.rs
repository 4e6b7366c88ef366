//! Jobs over time on a real loopback server: the queue, cancel mid-job, several streams, a
//! reconnect, reaping, the cache's eviction, upload limits, DICOM zips (and zip bombs), and
//! shutdown with a job running.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use voxtell_serve::ServeConfig;

#[test]
fn jobs_queue_cancel_and_stream_to_several_clients() {
    let (_server, c) = start(config());
    let (big, _, _) = c.upload(&big_image(), false);
    let (small, _, _) = c.upload(&small_image(0), false);
    let first = c.start_job(&big, json!(["liver", "left kidney"]));
    let second = c.start_job(&small, json!(["liver"]));
    // The second job waits, and its stream says where it is (the widget ignores this line).
    let mut waiting = c.events(&second);
    assert_eq!(waiting.next_line().unwrap(), json!({ "event": "queued", "position": 1 }));
    // Two clients on the running job both see its progress.
    let mut a = c.events(&first);
    let mut b = c.events(&first);
    let la = a.next_line().unwrap();
    let lb = b.next_line().unwrap();
    for l in [&la, &lb] {
        assert_eq!(l["total"], 343, "{l}");
        assert!(l["done"].as_u64().unwrap() >= 1);
    }
    // Health checks and uploads are answered while the job runs.
    let t = Instant::now();
    assert_eq!(c.get("/healthz").status, 200);
    c.upload(&small_image(1), false);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(c.get(&format!("/jobs/{first}/result")).detail(), "Job not finished (status=running).");
    assert_eq!(c.get(&format!("/jobs/{second}/result")).detail(), "Job not finished (status=queued).");

    // Cancel mid-job: the stream's last progress line precedes the terminal one.
    assert_eq!(c.post(&format!("/jobs/{first}/cancel"), b"").json(), json!({ "cancelling": true }));
    for stream in [&mut a, &mut b] {
        let rest: Vec<_> = std::iter::from_fn(|| stream.next_line()).collect();
        assert_eq!(rest.last().unwrap(), &json!({ "status": "cancelled" }));
        let last_done = rest.iter().rev().find_map(|l| l["done"].as_u64()).unwrap_or(1);
        assert!(last_done < 343, "cancelled after {last_done} of 343 tiles");
    }
    let r = c.get(&format!("/jobs/{first}/result"));
    assert_eq!((r.status, r.detail().as_str()), (409, "Job not finished (status=cancelled)."));
    // The queued job then runs to the end.
    let rest: Vec<_> = std::iter::from_fn(|| waiting.next_line()).collect();
    assert_eq!(rest.last().unwrap(), &json!({ "status": "done" }));
    assert!(rest.iter().any(|l| l.get("done").is_some()));
    assert_eq!(c.get(&format!("/jobs/{second}/result")).status, 200);
    // A reconnect after the end gets the terminal line only.
    assert_eq!(c.all_events(&first), vec![json!({ "status": "cancelled" })]);
}

#[test]
fn a_queued_job_cancelled_never_runs() {
    let (_server, c) = start(config());
    let (big, _, _) = c.upload(&big_image(), false);
    let first = c.start_job(&big, json!(["liver"]));
    let second = c.start_job(&big, json!(["liver"]));
    assert_eq!(c.post(&format!("/jobs/{second}/cancel"), b"").status, 200);
    assert_eq!(c.all_events(&second), vec![json!({ "status": "cancelled" })]);
    c.post(&format!("/jobs/{first}/cancel"), b"");
    assert_eq!(c.all_events(&first).last().unwrap(), &json!({ "status": "cancelled" }));
}

#[test]
fn idle_images_and_old_jobs_are_reaped() {
    let (_server, c) = start(ServeConfig { idle_timeout: Duration::from_millis(600), ..config() });
    let (id, _, _) = c.upload(&small_image(0), false);
    let job = c.start_job(&id, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    std::thread::sleep(Duration::from_millis(1500));
    let a = c.post_json("/jobs", &json!({ "image_id": id, "prompts": ["liver"] }));
    assert_eq!(a.status, 404);
    assert_eq!(c.get(&format!("/jobs/{job}/events")).status, 404);
}

#[test]
fn the_cache_evicts_the_least_recently_used_image() {
    // 16³ int16 images are kept as 8 KiB of 16-bit integers; room for two.
    let (_server, c) = start(ServeConfig { cache_memory: 20_000, ..config() });
    let (a, _, _) = c.upload(&small_image(0), false);
    let (b, _, _) = c.upload(&small_image(1), false);
    // Using `a` makes `b` the least recently used.
    let job = c.start_job(&a, json!(["liver"]));
    c.all_events(&job);
    let (cc, _, _) = c.upload(&small_image(2), false);
    let refused = c.post_json("/jobs", &json!({ "image_id": b, "prompts": ["liver"] }));
    assert_eq!(refused.status, 404, "b was evicted");
    for id in [&a, &cc] {
        let job = c.start_job(id, json!(["liver"]));
        assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    }
    // An image larger than the whole cache is refused before it is read.
    let a = c.post("/images", &nifti_i16([40, 40, 40], [1.0; 3], |_, _, _| 1));
    assert_eq!(a.status, 413);
    assert!(a.detail().contains("--cache-memory"), "{}", a.detail());
}

#[test]
fn sizes_are_checked_before_anything_is_allocated() {
    let (_server, c) = start(ServeConfig { max_upload: 8 << 20, cache_memory: 8 << 20, ..config() });
    // A body over --max-upload.
    let a = c.post("/images", &vec![0u8; 9 << 20]);
    assert_eq!(a.status, 413);
    assert!(a.detail().contains("--max-upload"), "{}", a.detail());
    // A header declaring 2000³ voxels in a few hundred bytes.
    let mut huge = nifti_i16([2, 2, 2], [1.0; 3], |_, _, _| 1);
    for (i, d) in [2000i16, 2000, 2000].iter().enumerate() {
        huge[42 + 2 * i..44 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    for body in [huge.clone(), gzip(&huge)] {
        let a = c.post("/images", &body);
        assert_eq!(a.status, 413, "{:?}", String::from_utf8_lossy(&a.body));
        assert!(a.detail().contains("[2000, 2000, 2000]"), "{}", a.detail());
    }
    // A gzip bomb: 32 MiB of voxels in a few hundred KiB.
    let bomb = gzip(&nifti_i16([256, 256, 256], [1.0; 3], |_, _, _| 0));
    assert!(bomb.len() < 1 << 20);
    let a = c.post("/images", &bomb);
    assert_eq!(a.status, 413);
    // Fits --max-upload (4.4 MB stored as int16) but not the cache as f32 (8.8 MB > 8 MiB).
    let a = c.post("/images", &nifti_i16([130, 130, 130], [1.0; 3], |_, _, _| 1));
    assert_eq!(a.status, 413);
    assert!(a.detail().contains("--cache-memory"), "{}", a.detail());
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn a_zip_of_one_dicom_series_is_an_image() {
    let (_server, c) = start(config());
    let (id, meta, a) = c.upload(&zip_of(&series_files("ct_axial")), true);
    let ours = voxtell_io::read_dicom_series(fixtures().join("io/dicom/ct_axial"), &Default::default())
        .unwrap()
        .to_ras()
        .unwrap();
    assert_eq!(meta["shape"], json!(ours.data.shape()));
    let image = voxtell_wire::decode(&a.body, 1 << 30).unwrap();
    assert_eq!(image.to_f32().unwrap(), ours.data.iter().copied().collect::<Vec<_>>());
    let job = c.start_job(&id, json!(["liver"]));
    assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));

    // Two series: refused, listing them.
    let mut two = series_files("ct_axial");
    two.extend(series_files("mr_oblique"));
    let a = c.post("/images", &zip_of(&two));
    assert_eq!(a.status, 400);
    assert!(a.detail().contains("2 DICOM series"), "{}", a.detail());
    // Entry names never become paths.
    let evil = zip_of(&[("../../../../tmp/voxtell-evil.dcm".to_string(), b"not dicom".to_vec())]);
    let a = c.post("/images", &evil);
    assert_eq!(a.status, 400);
    assert!(!std::path::Path::new("/tmp/voxtell-evil.dcm").exists());
    // An empty zip.
    let a = c.post("/images", &zip_of(&[]));
    assert_eq!(a.status, 400, "{:?}", String::from_utf8_lossy(&a.body));
}

#[test]
fn a_dicom_series_larger_than_the_cache_is_413_naming_the_cache() {
    let files = series_files("ct_axial");
    // Room for the zip but not for the decoded voxels (4 bytes each).
    let (_server, c) = start(ServeConfig { cache_memory: 1024, ..config() });
    let a = c.post("/images", &zip_of(&files));
    assert_eq!(a.status, 413, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(a.detail().contains("--cache-memory") && a.detail().contains("slices"), "{}", a.detail());
}

#[test]
fn a_zip_bomb_is_stopped_at_the_cap() {
    let (_server, c) = start(ServeConfig { max_upload: 8 << 20, ..config() });
    let bomb = zip_of(&[("slice.dcm".to_string(), vec![0u8; 64 << 20])]);
    assert!(bomb.len() < 1 << 20);
    let a = c.post("/images", &bomb);
    assert_eq!(a.status, 413, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(a.detail().contains("--max-upload"), "{}", a.detail());
    let many = zip_of(&(0..5).map(|i| (format!("{i}.dcm"), vec![0u8; 2 << 20])).collect::<Vec<_>>());
    let a = c.post("/images", &many);
    assert_eq!(a.status, 413, "{:?}", String::from_utf8_lossy(&a.body));
}

#[test]
fn shutdown_cancels_the_running_job_and_ends_its_stream() {
    let (server, c) = start(config());
    let (big, _, _) = c.upload(&big_image(), false);
    let job = c.start_job(&big, json!(["liver"]));
    let queued = c.start_job(&big, json!(["liver"]));
    let mut stream = c.events(&job);
    assert!(stream.next_line().unwrap().get("done").is_some());
    let reader = std::thread::spawn(move || std::iter::from_fn(|| stream.next_line()).collect::<Vec<_>>());
    let t = Instant::now();
    server.shutdown().unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "shutdown took {:?}", t.elapsed());
    let rest = reader.join().unwrap();
    assert_eq!(rest.last().unwrap(), &json!({ "status": "cancelled" }));
    let _ = queued;
}

static RELEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_release() {
    RELEASED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn the_after_job_hook_runs_once_per_job() {
    let (_server, c) = start(ServeConfig { after_job: Some(count_release), ..config() });
    let (id, _, _) = c.upload(&small_image(0), false);
    for _ in 0..2 {
        let job = c.start_job(&id, json!(["liver"]));
        assert_eq!(c.all_events(&job).last().unwrap(), &json!({ "status": "done" }));
    }
    // The hook runs after the job's terminal line; give the worker a moment.
    let t = Instant::now();
    while RELEASED.load(std::sync::atomic::Ordering::SeqCst) < 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(RELEASED.load(std::sync::atomic::Ordering::SeqCst), 2);
}
