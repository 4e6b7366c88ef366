//! Hostile and broken bodies: each is an error naming what is wrong, never a panic, an
//! unbounded allocation or a hang.

use voxtell_wire::{Dtype, WireArray, WireError, declared_size, decode, encode, parse_header};

fn small_body() -> (WireArray, Vec<u8>) {
    let raw: Vec<u8> = (0..2 * 3 * 50u32).flat_map(|i| ((i * 37) as u16 % 300).to_le_bytes()).collect();
    let array = WireArray::new(Dtype::U16, vec![2, 3, 50], raw).expect("array");
    let body = encode(&array).expect("encode");
    (array, body)
}

fn header_len(body: &[u8]) -> usize {
    parse_header(body).expect("header").data_offset
}

/// A header for `dtype`/`dims`/`total` and no chunks.
fn header(dtype: &str, dims: &[u64], total: u64) -> Vec<u8> {
    let mut b = b"VXA2".to_vec();
    b.push(dtype.len() as u8);
    b.extend_from_slice(dtype.as_bytes());
    b.push(dims.len() as u8);
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&total.to_le_bytes());
    b
}

fn frame(raw_len: u64, chunk: &[u8]) -> Vec<u8> {
    let mut b = raw_len.to_le_bytes().to_vec();
    b.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
    b.extend_from_slice(chunk);
    b
}

#[test]
fn worked_example_from_the_spec() {
    // uint16 (2, 3) → VXA2 03 "<u2" 02 | 2 | 3 | 12 | chunk 12 | ...
    let array =
        WireArray::new(Dtype::U16, vec![2, 3], (0..6u16).flat_map(u16::to_le_bytes).collect()).expect("a");
    let body = encode(&array).expect("encode");
    let mut want = header("<u2", &[2, 3], 12);
    want.extend_from_slice(&12u64.to_le_bytes());
    assert_eq!(&body[..want.len()], &want[..]);
    assert_eq!(body[want.len() + 8], 5, "chunk format version");
}

#[test]
fn bad_magic() {
    let (_, mut body) = small_body();
    body[0] = b'X';
    let err = decode(&body, 1 << 20).expect_err("magic");
    assert!(matches!(err, WireError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("magic"));
    assert!(matches!(decode(b"VXA1", 1 << 20), Err(WireError::BadMagic { .. })));
    assert!(matches!(decode(b"GET / HTTP/1.1", 1 << 20), Err(WireError::BadMagic { .. })));
    assert!(matches!(decode(b"VX", 1 << 20), Err(WireError::Truncated { .. })));
    assert!(matches!(decode(b"", 1 << 20), Err(WireError::Truncated { .. })));
}

#[test]
fn truncated_at_every_byte() {
    let (_, body) = small_body();
    let hl = header_len(&body);
    for cut in 0..body.len() {
        let err = decode(&body[..cut], 1 << 20).expect_err("truncated");
        if cut < hl {
            assert!(matches!(err, WireError::Truncated { .. }), "cut {cut}: {err}");
            assert!(declared_size(&body[..cut]).is_err());
            let msg = err.to_string();
            assert!(msg.contains("truncated") && msg.contains("at byte "), "{msg}");
        } else if cut == hl {
            // Header alone: no chunks, so the total is missing.
            assert!(matches!(err, WireError::TotalMismatch { declared: 600, got: 0 }), "cut {cut}: {err}");
        } else {
            assert!(matches!(err, WireError::Truncated { .. }), "cut {cut}: {err}");
        }
    }
    assert!(decode(&body, 1 << 20).is_ok());
}

#[test]
fn wrong_total_and_shape() {
    let (_, body) = small_body();
    let hl = header_len(&body);
    // Total disagrees with the shape.
    let mut b = body.clone();
    b[hl - 8..hl].copy_from_slice(&602u64.to_le_bytes());
    let err = decode(&b, 1 << 20).expect_err("total");
    assert!(matches!(err, WireError::ShapeMismatch { expected: 600, declared: 602, .. }), "{err}");
    assert!(err.to_string().contains("600") && err.to_string().contains("602"));
    // Shape and total agree with each other, but not with the chunk.
    let mut b = header("<u2", &[2, 3, 51], 612);
    b.extend_from_slice(&body[hl..]);
    let err = decode(&b, 1 << 20).expect_err("short");
    assert!(matches!(err, WireError::TotalMismatch { declared: 612, got: 600 }), "{err}");
    // A chunk that decompresses past the total.
    let mut b = header("<u2", &[2, 3, 49], 588);
    b.extend_from_slice(&body[hl..]);
    assert!(matches!(decode(&b, 1 << 20), Err(WireError::ChunkCorrupt { index: 0, .. })));
    // The frame's raw length differs from the chunk's.
    let mut b = body.clone();
    b[hl..hl + 8].copy_from_slice(&598u64.to_le_bytes());
    let err = decode(&b, 1 << 20).expect_err("raw len");
    assert!(err.to_string().contains("598") && err.to_string().contains("600"), "{err}");
    // Shape overflow.
    let b = header("<f8", &[1 << 62, 8], 0);
    assert!(matches!(decode(&b, 1 << 20), Err(WireError::ShapeOverflow { .. })));
}

#[test]
fn unknown_dtypes() {
    for dtype in ["<c8", "float32", "<U4", "|O", "<f3", "", "\u{e9}"] {
        let b = header(dtype, &[1], 1);
        let err = decode(&b, 1 << 20).expect_err(dtype);
        assert!(matches!(err, WireError::UnknownDtype(_)), "{dtype}: {err}");
    }
    let mut b = header("<u2", &[1], 2);
    b[5] = 0xff;
    assert!(matches!(decode(&b, 1 << 20), Err(WireError::UnknownDtype(_))));
}

type Corruption = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn corrupt_chunk_headers() {
    let (_, body) = small_body();
    let hl = header_len(&body);
    let c = hl + 16; // first byte of the blosc2 chunk
    let cases: Vec<(&str, Corruption)> = vec![
        ("version 6", Box::new(move |b: &mut Vec<u8>| b[c] = 6)),
        (
            "cbytes beyond frame",
            Box::new(move |b: &mut Vec<u8>| b[c + 12..c + 16].copy_from_slice(&100_000i32.to_le_bytes())),
        ),
        (
            "cbytes tiny",
            Box::new(move |b: &mut Vec<u8>| b[c + 12..c + 16].copy_from_slice(&3i32.to_le_bytes())),
        ),
        (
            "negative nbytes",
            Box::new(move |b: &mut Vec<u8>| b[c + 4..c + 8].copy_from_slice(&(-600i32).to_le_bytes())),
        ),
        (
            "blocksize 0",
            Box::new(move |b: &mut Vec<u8>| b[c + 8..c + 12].copy_from_slice(&0i32.to_le_bytes())),
        ),
        ("typesize 0", Box::new(move |b: &mut Vec<u8>| b[c + 3] = 0)),
        ("lazy chunk", Box::new(move |b: &mut Vec<u8>| b[c + 31] |= 0x08)),
        ("unknown codec", Box::new(move |b: &mut Vec<u8>| b[c + 2] = (b[c + 2] & 0x1f) | (6 << 5))),
        ("unknown filter", Box::new(move |b: &mut Vec<u8>| b[c + 21] = 200)),
        (
            "garbage payload",
            Box::new(move |b: &mut Vec<u8>| {
                let end = b.len();
                b[c + 32..end].iter_mut().for_each(|x| *x = 0xa5);
            }),
        ),
    ];
    for (name, corrupt) in cases {
        let mut b = body.clone();
        corrupt(&mut b);
        match decode(&b, 1 << 20) {
            Err(WireError::ChunkCorrupt { index: 0, reason, .. }) => assert!(!reason.is_empty(), "{name}"),
            Err(WireError::TooLarge { .. }) => panic!("{name}: too large"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A frame too short for a blosc2 header.
    let mut b = header("|u1", &[4], 4);
    b.extend(frame(4, &[5, 1, 0x95, 1]));
    assert!(matches!(decode(&b, 1 << 20), Err(WireError::ChunkCorrupt { .. })));
}

#[test]
fn huge_declarations_are_refused_before_allocating() {
    // 2^60 bytes in the header: refused by the limit, not by the allocator.
    let b = header("|u1", &[1 << 30, 1 << 30], 1 << 60);
    let err = decode(&b, 1 << 30).expect_err("2^60");
    assert!(
        matches!(err, WireError::TooLarge { declared, limit, .. } if declared == 1 << 60 && limit == 1 << 30),
        "{err}"
    );
    assert!(err.to_string().contains("1152921504606846976") && err.to_string().contains("1073741824"));
    assert_eq!(declared_size(&b).expect("declared"), 1 << 60);
    // Even with no limit, a lying header decodes nothing past the body: the chunk frame that
    // should follow is missing.
    let b = header("|u1", &[1 << 20], 1 << 20);
    assert!(matches!(decode(&b, u64::MAX), Err(WireError::TotalMismatch { .. })));
    // A compressed length of 2^63.
    let mut b = header("|u1", &[4], 4);
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(matches!(decode(&b, 1 << 20), Err(WireError::Truncated { .. })));
}

#[test]
fn chunk_nbytes_over_the_limit() {
    // A 32-byte "run of zeros" chunk that claims 2^31 − 1 bytes, under a small header total.
    let mut chunk = vec![0u8; 32];
    chunk[..4].copy_from_slice(&[5, 1, 0x05, 1]);
    chunk[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    chunk[8..12].copy_from_slice(&(1i32 << 20).to_le_bytes());
    chunk[12..16].copy_from_slice(&32i32.to_le_bytes());
    chunk[31] = 0x10;
    let mut b = header("|u1", &[1000], 1000);
    b.extend(frame(i32::MAX as u64, &chunk));
    let err = decode(&b, 1 << 20).expect_err("nbytes");
    assert!(matches!(err, WireError::TooLarge { declared, .. } if declared == i32::MAX as u64), "{err}");
    assert!(err.to_string().contains("chunk 0"), "{err}");
    // Under the limit but past the header's total: corrupt, nothing allocated for it.
    let err = decode(&b, u64::MAX).expect_err("past total");
    assert!(matches!(err, WireError::ChunkCorrupt { .. }), "{err}");
}

#[test]
fn limits() {
    let (array, body) = small_body();
    assert_eq!(decode(&body, 600).expect("at the limit"), array);
    assert!(matches!(decode(&body, 599), Err(WireError::TooLarge { declared: 600, limit: 599, .. })));
    assert!(matches!(decode(&body, 0), Err(WireError::TooLarge { .. })));
    // An empty array passes any limit.
    let empty = encode(&WireArray::from_u8(vec![0, 9], vec![]).expect("empty")).expect("encode");
    assert_eq!(decode(&empty, 0).expect("empty").shape(), &[0, 9]);
}

#[test]
fn trailing_garbage() {
    let (_, body) = small_body();
    for extra in [&[0u8][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9], &[0; 16], &[0xff; 40]] {
        let mut b = body.clone();
        b.extend_from_slice(extra);
        assert!(decode(&b, 1 << 20).is_err(), "{} extra bytes", extra.len());
    }
    // A second, valid chunk after a complete array is past the total.
    let mut b = body.clone();
    let hl = header_len(&body);
    b.extend_from_slice(&body[hl..]);
    assert!(matches!(decode(&b, 1 << 20), Err(WireError::ChunkCorrupt { index: 1, .. })));
}

/// Mutates a few payloads many times (deterministic xorshift): never a panic, and whatever
/// decodes respects the limit.
#[test]
fn mutations_never_panic() {
    let (_, body) = small_body();
    let zeros = encode(&WireArray::from_u8(vec![4096], vec![0; 4096]).expect("z")).expect("enc");
    let f4 = encode(
        &WireArray::from_f32(vec![300], &(0..300).map(|i| i as f32 * 0.5).collect::<Vec<_>>()).expect("f"),
    )
    .expect("enc");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for seed_body in [body, zeros, f4] {
        for _ in 0..3000 {
            let mut b = seed_body.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % b.len();
                match next() % 4 {
                    0 => b[at] = next() as u8,
                    1 => b[at] ^= 1 << (next() % 8),
                    2 => b.truncate(at.max(1)),
                    _ => b.insert(at, next() as u8),
                }
            }
            if let Ok(a) = decode(&b, 1 << 16) {
                assert!(a.bytes().len() <= 1 << 16);
            }
        }
    }
}
