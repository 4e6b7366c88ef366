//! Every payload in fixtures/wire/ (made by the official voxtell 0.1.2 serializer under
//! python-blosc2 2.7.1 and 4.15.0, see tools/wire_fixtures.sh) decodes to its expected array.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use voxtell_wire::{Dtype, declared_size, decode, encode};

fn wire_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/wire")
}

/// A minimal .npy (format 1.0/2.0) reader: dtype string, shape, raw bytes.
fn read_npy_gz(path: &Path) -> (String, Vec<usize>, Vec<u8>) {
    let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open npy.gz"));
    let mut npy = Vec::new();
    gz.read_to_end(&mut npy).expect("gunzip");
    assert_eq!(&npy[..6], b"\x93NUMPY", "{}", path.display());
    let (header_len, start) = match npy[6] {
        1 => (u16::from_le_bytes([npy[8], npy[9]]) as usize, 10),
        _ => (u32::from_le_bytes([npy[8], npy[9], npy[10], npy[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&npy[start..start + header_len]).expect("utf8 header");
    let field = |key: &str| {
        let at = header.find(key).expect(key) + key.len();
        header[at..].trim_start_matches([' ', ':'])
    };
    let descr = field("'descr'").trim_start_matches('\'');
    let descr = descr[..descr.find('\'').expect("descr end")].to_string();
    assert!(field("'fortran_order'").starts_with("False"));
    let shape_text = field("'shape'");
    let shape_text = &shape_text[1..shape_text.find(')').expect("shape end")];
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    (descr, shape, npy[start + header_len..].to_vec())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn official_payloads_decode_exactly() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(wire_dir().join("manifest.json")).expect("manifest"))
            .expect("json");
    let payloads = manifest["payloads"].as_array().expect("payloads");
    assert!(payloads.len() >= 100, "{} payloads", payloads.len());
    let mut exact = 0;
    for entry in payloads {
        let file = entry["file"].as_str().expect("file");
        let body = std::fs::read(wire_dir().join(file)).expect(file);
        let want = &entry["expected"];
        let raw_bytes = want["raw_bytes"].as_u64().expect("raw_bytes");
        assert_eq!(declared_size(&body).expect(file), raw_bytes, "{file}");
        let got = decode(&body, 1 << 30).unwrap_or_else(|e| panic!("{file}: {e}"));
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        assert_eq!(got.numpy_str(), want["dtype"].as_str().expect("dtype"), "{file}");
        assert_eq!(got.shape(), &shape[..], "{file}");
        assert_eq!(got.bytes().len() as u64, raw_bytes, "{file}");
        let expected: Vec<u8> = if let Some(repeat) = want["repeat"].as_str() {
            hex(repeat).repeat(raw_bytes as usize / (repeat.len() / 2))
        } else if let Some(array) = want["array"].as_str() {
            let (descr, npy_shape, data) = read_npy_gz(&wire_dir().join(array));
            assert_eq!(descr, got.numpy_str(), "{array}");
            assert_eq!(npy_shape, shape, "{array}");
            data
        } else {
            // Uninitialized special chunk: the content is unspecified; this crate gives zeros.
            assert_eq!(want["content"].as_str().map(|c| c.starts_with("unspecified")), Some(true), "{file}");
            vec![0; raw_bytes as usize]
        };
        assert!(got.bytes() == expected, "{file}: decoded bytes differ from the expected array");
        if want["content"] == "exact" {
            exact += 1;
        }
        // And what this crate writes for it reads back the same.
        assert_eq!(decode(&encode(&got).expect("encode"), 1 << 30).expect("re-decode"), got, "{file}");
    }
    assert!(exact + 2 >= payloads.len());
}

#[test]
fn fixtures_cover_every_chunk_kind() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(wire_dir().join("manifest.json")).expect("manifest"))
            .expect("json");
    let headers: Vec<Vec<u8>> = manifest["payloads"]
        .as_array()
        .expect("payloads")
        .iter()
        .filter_map(|e| e["first_chunk_header"].as_str().map(hex))
        .collect();
    let has = |f: &dyn Fn(&[u8]) -> bool| headers.iter().any(|h| f(h));
    for codec in [0u8, 1, 3, 4] {
        assert!(has(&|h| h[2] >> 5 == codec), "codec format {codec}");
    }
    assert!(has(&|h| h[2] & 0x02 != 0), "memcpy chunk");
    assert!(has(&|h| h[2] & 0x10 != 0 && h[2] & 0x02 == 0), "unsplit blocks");
    assert!(has(&|h| h[2] & 0x10 == 0 && h[3] > 1 && h[2] & 0x02 == 0), "split blocks");
    for special in [0x10u8, 0x20, 0x30, 0x40] {
        assert!(has(&|h| h[31] & 0x70 == special), "special value {special:#x}");
    }
    assert!(has(&|h| h[31] & 0x01 != 0), "zstd dictionary");
    for filter in [1u8, 2, 3] {
        assert!(has(&|h| h[16..22].contains(&filter)), "filter {filter}");
    }
    // Both writers: C-Blosc2 2.15 (python-blosc2 2.7.1) and 3.6 (4.15.0); both write version 5.
    assert!(headers.iter().all(|h| h[0] == 5));
    let dtypes: Vec<&str> = manifest["payloads"]
        .as_array()
        .expect("payloads")
        .iter()
        .filter_map(|e| e["expected"]["dtype"].as_str())
        .collect();
    for d in Dtype::ALL {
        assert!(dtypes.iter().any(|s| Dtype::parse_numpy(s).ok().map(|p| p.0) == Some(d)), "{d}");
    }
}
