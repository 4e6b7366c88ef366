//! Writes VXA2 bodies made by this crate's encoder into a folder, with an `index.json` telling
//! how each array was made, so `tools/wire_fixtures.py` can decode them with the official
//! deserializer under python-blosc2 2.x and 4.x and compare with numpy arrays made the same way.
//!
//! ```sh
//! cargo run -p voxtell-wire --example vxa2_encode -- OUT_DIR
//! ```
//!
//! Recipes (flat C-order index `i`; the Python side implements the same formulas):
//! - `iota`: integers `(7 i + 3) mod 2^bits` as the dtype's two's complement; bool `i % 3 == 0`;
//!   floats `((i % 1000) − 500) / 4` (exact in float16).
//! - `zeros`, `const` (integers 5, floats 1.5, bool true), `nan` (floats only).
//! - `blobs`: uint8 (N, Z, Y, X), 1 inside the ball of mask `n` (centre `(Z/2 + n, Y/3 + 2n,
//!   X/2 − n)`, radius `min(Z, Y, X)/3`), else 0.
//! - `ct`: `((3 z + 5 y + 7 x) % 2000) − 1000` over (Z, Y, X) in the dtype.

use std::fmt::Write as _;
use std::path::PathBuf;

use voxtell_wire::{ByteOrder, Codec, Dtype, EncodeOptions, Filter, WireArray, encode_with};

fn element_bytes(dtype: Dtype, order: ByteOrder, int: u64, float: f64, flag: bool) -> Vec<u8> {
    let mut b: Vec<u8> = match dtype {
        Dtype::Bool => vec![u8::from(flag)],
        Dtype::U8 | Dtype::I8 => vec![int as u8],
        Dtype::U16 | Dtype::I16 => (int as u16).to_le_bytes().to_vec(),
        Dtype::U32 | Dtype::I32 => (int as u32).to_le_bytes().to_vec(),
        Dtype::U64 | Dtype::I64 => int.to_le_bytes().to_vec(),
        Dtype::F16 => f32_to_f16_exact(float as f32).to_le_bytes().to_vec(),
        Dtype::F32 => (float as f32).to_le_bytes().to_vec(),
        Dtype::F64 => float.to_le_bytes().to_vec(),
    };
    if order == ByteOrder::Big {
        b.reverse();
    }
    b
}

/// f32 → f16 for values exactly representable in f16 (all the recipes make), plus NaN.
fn f32_to_f16_exact(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7e00;
    }
    if v == 0.0 {
        return if v.is_sign_negative() { 0x8000 } else { 0 };
    }
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = ((bits >> 13) & 0x3ff) as u16;
    assert!((1..31).contains(&exp), "{v} is not a normal float16");
    sign | ((exp as u16) << 10) | mant
}

fn make(recipe: &str, dtype: Dtype, order: ByteOrder, shape: &[usize]) -> WireArray {
    let n: usize = shape.iter().product();
    let mut bytes = Vec::with_capacity(n * dtype.itemsize());
    for i in 0..n {
        let (int, float, flag) = match recipe {
            "iota" => ((7 * i as u64).wrapping_add(3), ((i % 1000) as f64 - 500.0) / 4.0, i % 3 == 0),
            "zeros" => (0, 0.0, false),
            "const" => (5, 1.5, true),
            "nan" => (0, f64::NAN, false),
            "ct" => {
                let (y_len, x_len) = (shape[1], shape[2]);
                let (z, y, x) = (i / (y_len * x_len), (i / x_len) % y_len, i % x_len);
                let v = ((3 * z + 5 * y + 7 * x) % 2000) as i64 - 1000;
                (v as u64, v as f64, v != 0)
            }
            "blobs" => {
                let (zl, yl, xl) = (shape[1] as i64, shape[2] as i64, shape[3] as i64);
                let per = (zl * yl * xl) as usize;
                let m = (i / per) as i64;
                let r = i % per;
                let (z, y, x) = ((r as i64) / (yl * xl), (r as i64 / xl) % yl, r as i64 % xl);
                let (cz, cy, cx) = (zl / 2 + m, yl / 3 + 2 * m, xl / 2 - m);
                let rad = zl.min(yl).min(xl) / 3;
                let inside = (z - cz).pow(2) + (y - cy).pow(2) + (x - cx).pow(2) <= rad * rad;
                (u64::from(inside), f64::from(u8::from(inside)), inside)
            }
            other => panic!("unknown recipe {other}"),
        };
        bytes.extend(element_bytes(dtype, order, int, float, flag));
    }
    WireArray::with_order(dtype, order, shape.to_vec(), bytes).expect("recipe length")
}

/// name, recipe, dtype, byte order, shape, encoder settings.
type Case = (String, &'static str, Dtype, ByteOrder, Vec<usize>, EncodeOptions);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: vxa2_encode OUT_DIR")?);
    std::fs::create_dir_all(&out)?;
    let default = EncodeOptions::default();
    let little = ByteOrder::Little;
    let mut cases: Vec<Case> = Vec::new();
    for dtype in Dtype::ALL {
        let tag = dtype.numpy_str(little).trim_start_matches(['<', '|']).to_string();
        cases.push((format!("iota_{tag}"), "iota", dtype, little, vec![3, 50, 70], default));
        if dtype.itemsize() > 1 {
            cases.push((format!("iota_{tag}_big"), "iota", dtype, ByteOrder::Big, vec![4, 33, 17], default));
        }
        cases.push((format!("zeros_{tag}"), "zeros", dtype, little, vec![2, 64, 64], default));
        cases.push((format!("const_{tag}"), "const", dtype, little, vec![5, 40, 40], default));
    }
    for dtype in [Dtype::F16, Dtype::F32, Dtype::F64] {
        let tag = dtype.numpy_str(little).trim_start_matches('<');
        cases.push((format!("nan_{tag}"), "nan", dtype, little, vec![10, 100], default));
    }
    cases.push(("ct_i2".into(), "ct", Dtype::I16, little, vec![40, 96, 80], default));
    cases.push(("ct_f4".into(), "ct", Dtype::F32, little, vec![40, 96, 80], default));
    cases.push(("blobs_u1".into(), "blobs", Dtype::U8, little, vec![3, 30, 64, 48], default));
    cases.push(("empty_u1".into(), "iota", Dtype::U8, little, vec![0, 5], default));
    cases.push(("empty_f4".into(), "iota", Dtype::F32, little, vec![3, 0, 2], default));
    cases.push(("scalar_f8".into(), "iota", Dtype::F64, little, vec![], default));
    cases.push(("one_u2".into(), "iota", Dtype::U16, little, vec![1], default));
    let codecs = [
        ("blosclz", Codec::BloscLz),
        ("lz4", Codec::Lz4),
        ("lz4hc", Codec::Lz4Hc),
        ("zlib", Codec::Zlib),
        ("zstd", Codec::Zstd),
    ];
    let filters =
        [("shuffle", Filter::Shuffle), ("bitshuffle", Filter::BitShuffle), ("nofilter", Filter::NoFilter)];
    for (cname, codec) in codecs {
        for (fname, filter) in filters {
            for clevel in [1u8, 9] {
                let opts = EncodeOptions { codec, clevel, filter, ..default };
                cases.push((
                    format!("ct_f4_{cname}_{fname}_{clevel}"),
                    "ct",
                    Dtype::F32,
                    little,
                    vec![20, 48, 40],
                    opts,
                ));
            }
        }
        let opts = EncodeOptions { codec, chunk_bytes: 5000, ..default };
        cases.push((format!("ct_i2_{cname}_chunked"), "ct", Dtype::I16, little, vec![20, 48, 40], opts));
    }
    let memcpy = EncodeOptions { clevel: 0, ..default };
    cases.push(("ct_i2_memcpy".into(), "ct", Dtype::I16, little, vec![20, 48, 40], memcpy));
    cases.push(("blobs_u1_memcpy".into(), "blobs", Dtype::U8, little, vec![2, 10, 30, 30], memcpy));
    let chunked = EncodeOptions { chunk_bytes: 3000, ..default };
    cases.push(("blobs_u1_chunked".into(), "blobs", Dtype::U8, little, vec![2, 10, 30, 30], chunked));
    cases.push(("iota_u8_chunked_odd".into(), "iota", Dtype::U64, ByteOrder::Big, vec![999], chunked));

    let mut index = String::from("[\n");
    for (k, (name, recipe, dtype, order, shape, opts)) in cases.iter().enumerate() {
        let array = make(recipe, *dtype, *order, shape);
        let body = encode_with(&array, opts)?;
        std::fs::write(out.join(format!("{name}.vxa2")), &body)?;
        let sep = if k + 1 == cases.len() { "" } else { "," };
        writeln!(
            index,
            "  {{\"name\": \"{name}\", \"recipe\": \"{recipe}\", \"dtype\": \"{}\", \"shape\": {shape:?}, \"codec\": \"{:?}\", \"clevel\": {}, \"filter\": \"{:?}\", \"chunk_bytes\": {}, \"body_bytes\": {}}}{sep}",
            array.numpy_str(),
            opts.codec,
            opts.clevel,
            opts.filter,
            opts.chunk_bytes,
            body.len()
        )?;
    }
    index.push_str("]\n");
    std::fs::write(out.join("index.json"), index)?;
    println!("wrote {} VXA2 bodies and index.json to {}", cases.len(), out.display());
    Ok(())
}
