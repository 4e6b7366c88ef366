//! encode → decode round trips for every dtype, byte order and encoder setting, and the shape of
//! what the encoder writes.

use voxtell_wire::{
    ByteOrder, Codec, Dtype, EncodeOptions, Filter, WireArray, declared_size, decode, encode, encode_with,
    parse_header,
};

/// Deterministic bytes: a mix of runs and noise.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 512) % 3 == 0 { 0 } else { (x >> 56) as u8 & 0x3f }
        })
        .collect()
}

/// Walks the chunk frames of a body: (raw length, compressed bytes).
fn chunks(body: &[u8]) -> Vec<(u64, &[u8])> {
    let mut pos = parse_header(body).expect("header").data_offset;
    let mut out = Vec::new();
    while pos < body.len() {
        let raw = u64::from_le_bytes(body[pos..pos + 8].try_into().expect("8"));
        let len = u64::from_le_bytes(body[pos + 8..pos + 16].try_into().expect("8")) as usize;
        out.push((raw, &body[pos + 16..pos + 16 + len]));
        pos += 16 + len;
    }
    out
}

#[test]
fn every_dtype_and_order_round_trips() {
    for dtype in Dtype::ALL {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            for shape in [vec![3, 17, 29], vec![0, 4], vec![], vec![1], vec![2, 1, 1, 1, 5]] {
                let n: usize = shape.iter().product();
                let mut raw = bytes(n * dtype.itemsize(), 7);
                if dtype == Dtype::Bool {
                    raw.iter_mut().for_each(|b| *b &= 1);
                }
                let array = WireArray::with_order(dtype, order, shape.clone(), raw).expect("array");
                let body = encode(&array).expect("encode");
                assert_eq!(declared_size(&body).expect("size"), array.bytes().len() as u64);
                let back = decode(&body, 1 << 20).expect("decode");
                assert_eq!(back, array, "{dtype} {order:?} {shape:?}");
                assert_eq!(back.numpy_str(), array.numpy_str());
                // Header layout as the official serializer writes it.
                let s = array.numpy_str().as_bytes();
                assert_eq!(&body[..4], b"VXA2");
                assert_eq!(body[4] as usize, s.len());
                assert_eq!(&body[5..5 + s.len()], s);
                assert_eq!(body[5 + s.len()] as usize, shape.len());
                // An empty array has no chunks.
                assert_eq!(chunks(&body).is_empty(), n == 0);
            }
        }
    }
}

#[test]
fn every_encoder_setting_round_trips_and_writes_version_5() {
    let array = WireArray::new(Dtype::I16, vec![7, 33, 65], bytes(7 * 33 * 65 * 2, 3)).expect("array");
    for codec in [Codec::BloscLz, Codec::Lz4, Codec::Lz4Hc, Codec::Zlib, Codec::Zstd] {
        for filter in [Filter::NoFilter, Filter::Shuffle, Filter::BitShuffle] {
            for clevel in [0u8, 1, 5, 9] {
                for chunk_bytes in [1 << 30, 4096, 1001] {
                    let opts = EncodeOptions { codec, filter, clevel, chunk_bytes, nthreads: 2 };
                    let body = encode_with(&array, &opts).expect("encode");
                    assert_eq!(decode(&body, 1 << 20).expect("decode"), array, "{opts:?}");
                    let cs = chunks(&body);
                    // Chunk raw sizes are multiples of the itemsize, and every chunk is format 5.
                    assert!(cs.iter().all(|(raw, _)| raw % 2 == 0));
                    assert!(cs.iter().all(|(_, c)| c[0] == 5 && c[3] == 2), "{opts:?}");
                    let expected_chunks = array.bytes().len().div_ceil(chunk_bytes / 2 * 2);
                    assert_eq!(cs.len(), expected_chunks, "{opts:?}");
                    if clevel == 0 {
                        assert!(cs.iter().all(|(_, c)| c[2] & 0x02 != 0), "memcpy flag {opts:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn default_encoding_compresses_a_mask() {
    // 4 × 64 × 128 × 128 uint8 mask with one ball per prompt: ~4 MiB raw.
    let (n, z, y, x) = (4usize, 64usize, 128usize, 128usize);
    let mut raw = vec![0u8; n * z * y * x];
    for m in 0..n {
        for k in 0..z {
            for j in 0..y {
                for i in 0..x {
                    let d = (k as i64 - 30).pow(2)
                        + (j as i64 - 50 - m as i64 * 5).pow(2)
                        + (i as i64 - 60).pow(2);
                    raw[((m * z + k) * y + j) * x + i] = u8::from(d < 400);
                }
            }
        }
    }
    let array = WireArray::from_u8(vec![n, z, y, x], raw).expect("mask");
    let body = encode(&array).expect("encode");
    assert!(body.len() * 100 < array.bytes().len(), "{} bytes for {} raw", body.len(), array.bytes().len());
    assert_eq!(decode(&body, 1 << 30).expect("decode"), array);
    // Threaded decode path (chunks of 4 MiB or more) gives the same.
    let big = WireArray::new(Dtype::U16, vec![3 << 20], bytes(6 << 20, 9)).expect("big");
    let body = encode(&big).expect("encode big");
    assert_eq!(decode(&body, 1 << 30).expect("decode big"), big);
}

#[test]
fn conversions() {
    let a = WireArray::from_f32(vec![2, 2], &[1.0, -2.5, f32::NAN, 3.0]).expect("f32");
    assert_eq!(a.numpy_str(), "<f4");
    let back = decode(&encode(&a).expect("enc"), 1 << 10).expect("dec").to_f32().expect("to_f32");
    assert_eq!(back[..2], [1.0, -2.5]);
    assert!(back[2].is_nan());
    let labels = WireArray::with_order(
        Dtype::I32,
        ByteOrder::Big,
        vec![3],
        [0i32, 5, 70000].iter().flat_map(|v| v.to_be_bytes()).collect(),
    )
    .expect("labels");
    assert_eq!(labels.to_labels().expect("labels"), vec![0, 5, 70000]);
    assert_eq!(labels.to_f32().expect("f32"), vec![0.0, 5.0, 70000.0]);
    let b = WireArray::new(Dtype::Bool, vec![3], vec![0, 1, 1]).expect("bool");
    assert_eq!(b.to_labels().expect("bool labels"), vec![0, 1, 1]);
    let h = WireArray::new(Dtype::F16, vec![2], vec![0x00, 0x3c, 0x00, 0xc0]).expect("f16");
    assert_eq!(h.to_f32().expect("f16"), vec![1.0, -2.0]);
    assert!(h.to_labels().is_err());
    let d = WireArray::new(Dtype::F64, vec![1], 0.1f64.to_le_bytes().to_vec()).expect("f64");
    assert_eq!(d.to_f32().expect("f64"), vec![0.1f32]);
}

#[test]
fn chunks_decoded_one_at_a_time_are_the_array_and_are_capped_and_checked() {
    let array = WireArray::from_u8(vec![3, 40, 50], bytes(3 * 40 * 50, 9)).expect("array");
    let opts = EncodeOptions { chunk_bytes: 2000, ..Default::default() };
    let body = encode_with(&array, &opts).expect("encode");
    let (header, chunks) = voxtell_wire::decode_chunks(&body, 2000).expect("header");
    assert_eq!(header.shape, [3, 40, 50]);
    let decoded: Vec<Vec<u8>> = chunks.collect::<Result<_, _>>().expect("chunks");
    assert_eq!(decoded.len(), 3);
    assert!(decoded.iter().all(|c| c.len() == 2000));
    assert_eq!(decoded.concat(), array.bytes());
    // A chunk over the cap is refused before it is decoded.
    let (_, mut chunks) = voxtell_wire::decode_chunks(&body, 1999).expect("header");
    let e = chunks.next().expect("an item").expect_err("over the cap").to_string();
    assert!(e.contains("chunk 0") && e.contains("1999"), "{e}");
    assert!(chunks.next().is_none(), "the first error ends the iteration");
    // A body cut after its first chunk: that chunk, then the missing total.
    let first =
        16 + u64::from_le_bytes(body[header.data_offset + 8..header.data_offset + 16].try_into().expect("8"));
    let cut = &body[..header.data_offset + first as usize];
    let items: Vec<_> = voxtell_wire::decode_chunks(cut, 2000).expect("header").1.collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    let e = items[1].as_ref().expect_err("short").to_string();
    assert!(e.contains("6000") && e.contains("2000"), "{e}");
}
