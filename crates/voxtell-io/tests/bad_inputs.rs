//! Bad files and bad writes: every one is a typed error that names the file, never a panic and
//! never a partial output.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use voxtell_io::{IoError, WriteOptions, read_nifti, write_nifti, write_seg};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/io/nifti").join(name)
}

/// The uncompressed bytes of a valid float32 fixture (5 × 6 × 7 voxels, sform affine).
fn valid_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture("orient/o05.nii.gz")).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn put_i16(b: &mut [u8], offset: usize, v: i16) {
    b[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], offset: usize, v: f32) {
    b[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
}

/// Write `bytes` to a temporary `.nii` file, read it, and return the error.
fn read_err(dir: &Path, name: &str, bytes: &[u8]) -> IoError {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = read_nifti(&path).expect_err(name);
    assert!(err.to_string().contains(name), "message must name the file: {err}");
    err
}

#[test]
fn damaged_headers_and_data_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let valid = valid_bytes();

    let e = read_err(d, "short_header.nii", &valid[..100]);
    assert!(matches!(e, IoError::Truncated { .. }), "{e}");

    let e = read_err(d, "short_data.nii", &valid[..valid.len() - 7]);
    assert!(matches!(e, IoError::Truncated { .. }), "{e}");

    let mut b = valid.clone();
    b[344..348].copy_from_slice(b"xyz\0");
    let e = read_err(d, "magic.nii", &b);
    assert!(matches!(e, IoError::NotNifti { .. }) && e.to_string().contains("magic"), "{e}");

    let mut b = valid.clone();
    b[0..4].copy_from_slice(&123i32.to_le_bytes());
    let e = read_err(d, "sizeof.nii", &b);
    assert!(matches!(e, IoError::NotNifti { .. }), "{e}");

    let mut b = valid.clone();
    b[0..4].copy_from_slice(&540i32.to_le_bytes());
    let e = read_err(d, "nifti2.nii", &b);
    assert!(e.to_string().contains("NIfTI-2"), "{e}");

    let e = read_err(d, "text.nii", b"this is not an image at all, just some words in a file");
    assert!(matches!(e, IoError::Truncated { .. } | IoError::NotNifti { .. }), "{e}");

    for (name, dim_index, value) in [("zero_dim.nii", 2, 0i16), ("negative_dim.nii", 1, -5)] {
        let mut b = valid.clone();
        put_i16(&mut b, 40 + 2 * dim_index, value);
        let e = read_err(d, name, &b);
        assert!(matches!(e, IoError::BadHeader { .. }) && e.to_string().contains("not positive"), "{e}");
    }

    let mut b = valid.clone();
    for i in 1..=3 {
        put_i16(&mut b, 40 + 2 * i, i16::MAX);
    }
    let e = read_err(d, "huge_dims.nii", &b);
    assert!(matches!(e, IoError::Truncated { .. }), "{e}");

    let mut b = valid.clone();
    put_i16(&mut b, 40, 7);
    for i in 1..=7 {
        put_i16(&mut b, 40 + 2 * i, i16::MAX);
    }
    let e = read_err(d, "seven_huge_dims.nii", &b);
    assert!(matches!(e, IoError::NotThreeD { .. }), "{e}");

    let mut b = valid.clone();
    put_i16(&mut b, 40, 4);
    put_i16(&mut b, 48, 2);
    let e = read_err(d, "four_d.nii", &b);
    assert!(matches!(e, IoError::NotThreeD { ref dims, .. } if dims == &[5, 6, 7, 2]), "{e}");

    let mut b = valid.clone();
    put_i16(&mut b, 40, 2);
    let e = read_err(d, "two_d.nii", &b);
    assert!(matches!(e, IoError::NotThreeD { .. }), "{e}");

    let mut b = valid.clone();
    put_i16(&mut b, 40, 0);
    let e = read_err(d, "dim0_zero.nii", &b);
    assert!(matches!(e, IoError::BadHeader { .. }), "{e}");

    for (name, code) in [("complex.nii", 32i16), ("binary.nii", 1), ("unknown_type.nii", 9999)] {
        let mut b = valid.clone();
        put_i16(&mut b, 70, code);
        let e = read_err(d, name, &b);
        assert!(matches!(e, IoError::UnsupportedDatatype { code: c, .. } if c == code), "{e}");
    }

    for (name, offset) in [("low_offset.nii", 100.0f32), ("nan_offset.nii", f32::NAN)] {
        let mut b = valid.clone();
        put_f32(&mut b, 108, offset);
        let e = read_err(d, name, &b);
        assert!(matches!(e, IoError::BadHeader { .. }) && e.to_string().contains("vox_offset"), "{e}");
    }

    let mut b = valid.clone();
    put_f32(&mut b, 108, 1.0e9);
    let e = read_err(d, "far_offset.nii", &b);
    assert!(matches!(e, IoError::Truncated { .. }), "{e}");

    // A qform whose quaternion (b, c, d) has norm above 1.
    let mut b = valid.clone();
    put_i16(&mut b, 252, 1);
    put_i16(&mut b, 254, 0);
    for off in [256, 260, 264] {
        put_f32(&mut b, off, 0.9);
    }
    let e = read_err(d, "bad_quaternion.nii", &b);
    assert!(matches!(e, IoError::BadGeometry { .. }), "{e}");

    let mut b = valid.clone();
    put_f32(&mut b, 280, f32::INFINITY);
    let e = read_err(d, "inf_affine.nii", &b);
    assert!(matches!(e, IoError::BadGeometry { .. }), "{e}");
}

#[test]
fn damaged_gzip_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let gz = std::fs::read(fixture("orient/o05.nii.gz")).unwrap();
    let e = read_err(dir.path(), "cut.nii.gz", &gz[..gz.len() / 2]);
    assert!(matches!(e, IoError::Truncated { .. }), "{e}");
    let mut corrupt = gz.clone();
    for byte in corrupt[20..60].iter_mut() {
        *byte ^= 0x5a;
    }
    let e = read_err(dir.path(), "corrupt.nii.gz", &corrupt);
    assert!(matches!(e, IoError::NotNifti { .. } | IoError::Truncated { .. }), "{e}");
    // A gzip stream claiming a volume far larger than deflate can expand to.
    let mut b = valid_bytes();
    for i in 1..=3 {
        put_i16(&mut b, 40 + 2 * i, 2000);
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&b).unwrap();
    let e = read_err(dir.path(), "claims_32gb.nii.gz", &enc.finish().unwrap());
    assert!(matches!(e, IoError::Truncated { .. }), "{e}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_bytes();
    // A small deterministic generator; every prefix and every byte flip of the header must be
    // handled without a panic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let path = dir.path().join("fuzz.nii");
    for round in 0..400 {
        let mut b = valid.clone();
        let flips = 1 + (next() % 4) as usize;
        for _ in 0..flips {
            let at = (next() % 352) as usize;
            b[at] = next() as u8;
        }
        if round % 5 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        std::fs::write(&path, &b).unwrap();
        let _ = read_nifti(&path).and_then(|v| v.to_ras().map(|_| ()));
    }
}

#[test]
fn missing_file_is_an_os_error_naming_it() {
    let e = read_nifti("/definitely/not/here.nii.gz").unwrap_err();
    assert!(matches!(e, IoError::Os { .. }) && e.to_string().contains("/definitely/not/here.nii.gz"), "{e}");
}

#[test]
fn degenerate_affine_cannot_be_reoriented() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = valid_bytes();
    for off in (280..328).step_by(4) {
        put_f32(&mut b, off, 0.0);
    }
    let path = dir.path().join("flat.nii");
    std::fs::write(&path, &b).unwrap();
    let vol = read_nifti(&path).unwrap();
    let e = vol.to_ras().unwrap_err();
    assert!(matches!(e, IoError::BadGeometry { .. }) && e.to_string().contains("flat.nii"), "{e}");
}

#[test]
fn writes_are_atomic_and_never_clobber_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let vol = read_nifti(fixture("orient/o05.nii.gz")).unwrap();
    let ras = vol.to_ras().unwrap();
    let labels = ras.data.mapv(|v| u16::from(v > 0.0));
    let out = dir.path().join("mask.nii.gz");
    std::fs::write(&out, b"precious").unwrap();

    let e = write_seg(&out, labels.view(), &ras.geometry, WriteOptions::default()).unwrap_err();
    assert!(matches!(e, IoError::OutputExists { .. }), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    write_seg(&out, labels.view(), &ras.geometry, WriteOptions { overwrite: true }).unwrap();
    assert_eq!(read_nifti(&out).unwrap().shape(), vol.shape());

    // A mask of the wrong shape is refused before anything is written.
    let wrong = ndarray::Array3::<u16>::zeros((2, 2, 2));
    let other = dir.path().join("wrong.nii.gz");
    let e = write_seg(&other, wrong.view(), &ras.geometry, WriteOptions::default()).unwrap_err();
    assert!(matches!(e, IoError::BadOutput { .. }) && e.to_string().contains("wrong.nii.gz"), "{e}");
    assert!(!other.exists());

    // A folder that does not exist: an OS error, and no temporary file anywhere.
    let nowhere = dir.path().join("missing").join("m.nii");
    let e = write_nifti(&nowhere, labels.view(), &ras.geometry.original_affine, WriteOptions::default())
        .unwrap_err();
    assert!(matches!(e, IoError::Os { .. }), "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".voxtell-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Uncompressed output works too, and reads back the same labels.
    let plain = dir.path().join("plain.nii");
    write_seg(&plain, labels.view(), &ras.geometry, WriteOptions::default()).unwrap();
    let back = read_nifti(&plain).unwrap().to_ras().unwrap();
    assert_eq!(back.data, labels.mapv(f32::from));
}

#[test]
fn probabilities_round_trip_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let vol = read_nifti(fixture("orient/o21.nii.gz")).unwrap();
    let ras = vol.to_ras().unwrap();
    let probs = ras.data.mapv(|v| 1.0 / (1.0 + (-v / 100.0).exp()));
    let out = dir.path().join("probs.nii.gz");
    voxtell_io::write_ras_f32(&out, probs.view(), &ras.geometry, WriteOptions::default()).unwrap();
    let back = read_nifti(&out).unwrap();
    assert!(matches!(back.source.format, voxtell_io::SourceFormat::Nifti { datatype: "float32", .. }));
    assert_eq!(back.axcodes(), vol.axcodes());
    assert_eq!(back.to_ras().unwrap().data, probs, "bit-exact f32 round trip");
}
