//! Writing a DICOM SEG of a whole-body-sized series: 512 × 512 × 600 slices, 10 segments, from
//! masks held as a prediction holds them (the network's (S, A, R) layout, inside the body's crop
//! box) restored to the source grid as views, one at a time ([`SegBuilder::add_part`]), as
//! `voxtell predict --output-type dicom-seg` does.
//!
//! Prints, per source orientation (axial, and coronal, whose restore is strided), the seconds to
//! write the SEG, its frames and size, and how far the process's peak RSS rose above the RSS
//! before the write (`/proc/self/clear_refs` resets the peak), next to the packed pixel data.
//! The issue's bound: at most 10 s, and at most the packed pixel data + 200 MB.
//!
//! ```sh
//! cargo bench -p voxtell-io --bench dicom_seg
//! ```
//!
//! A bench program, not criterion: one write takes seconds and the figure that matters is the
//! peak memory of that one write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array3;
use voxtell_io::dicom_seg::{Code, SegBuilder, SegOptions, SegSegment, TISSUE};
use voxtell_io::{DicomSeries, SliceRef, Volume};

const COLUMNS: usize = 512;
const ROWS: usize = 512;
const SLICES: usize = 600;
const SEGMENTS: usize = 10;

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A series of `SLICES` slices whose rows run along `row` and columns along `col` (LPS unit
/// vectors), 0.8 mm pixels, 1 mm apart along their normal.
fn series(row: [f64; 3], col: [f64; 3]) -> (DicomSeries, voxtell_io::Affine) {
    let n = [
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    ];
    let origin = [-200.0, -200.0, -300.0];
    let sp = 0.8;
    let slices = (0..SLICES)
        .map(|k| SliceRef {
            path: PathBuf::from(format!("slice{k:04}.dcm")),
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            sop_instance_uid: Some(format!("1.2.826.0.1.3680043.10.1.{k}")),
            position: [0, 1, 2].map(|w| origin[w] + k as f64 * n[w]),
        })
        .collect();
    let attributes = BTreeMap::from([
        ("StudyInstanceUID", "1.2.826.0.1.3680043.10.2".to_string()),
        ("FrameOfReferenceUID", "1.2.826.0.1.3680043.10.3".to_string()),
        ("PatientID", "BENCH".to_string()),
    ]);
    let source = DicomSeries {
        series_uid: "1.2.826.0.1.3680043.10.4".into(),
        slices,
        orientation: [row[0], row[1], row[2], col[0], col[1], col[2]],
        pixel_spacing: [sp, sp],
        rows: ROWS,
        columns: COLUMNS,
        attributes,
    };
    // Voxel (column, row, slice) → RAS: LPS with x and y negated.
    let lps = |w: usize| [row[w] * sp, col[w] * sp, n[w], origin[w]];
    let flip = [-1.0, -1.0, 1.0];
    let mut affine = [[0.0; 4]; 4];
    for (w, f) in flip.iter().enumerate() {
        affine[w] = lps(w).map(|v| v * f);
    }
    affine[3] = [0.0, 0.0, 0.0, 1.0];
    (source, affine)
}

/// The crop box of a body in the (S, A, R) grid: where its masks are held.
fn body(ras_shape: [usize; 3]) -> [[usize; 2]; 3] {
    ras_shape.map(|d| [d / 20, d - d / 10])
}

/// Ten ellipsoids in the (S, A, R) grid, from a 2 cm nodule to most of the body, inside `body`.
fn masks(ras_shape: [usize; 3], body: [[usize; 2]; 3]) -> Vec<Array3<u8>> {
    (0..SEGMENTS)
        .map(|i| {
            let f = (i + 1) as f64 / SEGMENTS as f64;
            let centre = ras_shape.map(|d| d as f64 * (0.3 + 0.4 * f));
            let radius = ras_shape.map(|d| d as f64 * (0.02 + 0.4 * f * f));
            let box_shape = body.map(|[lo, hi]| hi - lo);
            Array3::from_shape_fn(box_shape, |(s, a, r)| {
                let (s, a, r) = (s + body[0][0], a + body[1][0], r + body[2][0]);
                let d = [s, a, r]
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| ((v as f64 - centre[k]) / radius[k]).powi(2))
                    .sum::<f64>();
                u8::from(d <= 1.0)
            })
        })
        .collect()
}

fn run(name: &str, row: [f64; 3], col: [f64; 3]) {
    let (source, affine) = series(row, col);
    let geometry = Volume::new(Array3::zeros((COLUMNS, ROWS, SLICES)), affine).to_ras().unwrap().geometry;
    let body = body(geometry.ras_shape());
    let masks = masks(geometry.ras_shape(), body);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.dcm");
    let options = SegOptions {
        algorithm_name: "VoxTell".into(),
        algorithm_version: env!("CARGO_PKG_VERSION").into(),
        manufacturer: "voxtell-rs".into(),
        series_number: 100,
        series_description: "bench".into(),
        overwrite: true,
    };
    let organ = Code { value: "123037004", scheme: "SCT", meaning: "Anatomical Structure" };
    let before = status_bytes("VmRSS:");
    // Reset the peak to the current RSS (Linux).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let t = Instant::now();
    let mut seg = SegBuilder::new(&path, &source, options).unwrap();
    for (i, m) in masks.iter().enumerate() {
        let text = format!("structure {i}");
        let (view, offset) = geometry.restore_part(m.view(), body.map(|[lo, _]| lo)).unwrap();
        let segment =
            SegSegment { text: &text, mask: view, category: organ, property: TISSUE, color: [200, 60, 60] };
        seg.add_part(&segment, offset).unwrap();
    }
    let written = seg.finish().unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let peak = status_bytes("VmHWM:");
    let bytes = std::fs::metadata(&path).unwrap().len();
    let packed = (written.frames * ROWS * COLUMNS).div_ceil(8) as u64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{name:8} {COLUMNS}×{ROWS}×{SLICES}, {SEGMENTS} segments: {seconds:.2} s, {} frames, file {:.1} MiB, \
         packed pixels {:.1} MiB, peak RSS rise {}",
        written.frames,
        mib(bytes),
        mib(packed),
        if reset {
            format!("{:.1} MiB (bound {:.1} MiB)", mib(peak.saturating_sub(before)), mib(packed) + 200.0)
        } else {
            "not measured (no /proc/self/clear_refs)".into()
        },
    );
}

fn main() {
    run("axial", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]);
    run("coronal", [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]);
}
