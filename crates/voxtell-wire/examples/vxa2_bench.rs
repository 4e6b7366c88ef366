//! Measures encoder settings on realistic payloads: a uint8 mask (3, 300, 512, 512) with a few
//! blobs per prompt and a CT-like float32 volume (300, 512, 512): size, encode and decode time.
//! The figures in the crate doc come from this.
//!
//! ```sh
//! cargo run --release -p voxtell-wire --example vxa2_bench [-- --quick]
//! ```

use std::time::Instant;

use voxtell_wire::{Codec, EncodeOptions, Filter, WireArray, decode, encode_with};

fn mask(n: usize, z: usize, y: usize, x: usize) -> WireArray {
    let mut raw = vec![0u8; n * z * y * x];
    // Per prompt: one large organ-like ellipsoid and two small lesion-like balls.
    for m in 0..n {
        let blobs = [
            (0.5 + 0.05 * m as f64, 0.45, 0.4, 0.25, 0.18, 0.2),
            (0.3, 0.6 - 0.05 * m as f64, 0.65, 0.03, 0.03, 0.03),
            (0.7, 0.3, 0.3 + 0.1 * m as f64, 0.05, 0.04, 0.05),
        ];
        for k in 0..z {
            for j in 0..y {
                let row = ((m * z + k) * y + j) * x;
                for i in 0..x {
                    let p = (k as f64 / z as f64, j as f64 / y as f64, i as f64 / x as f64);
                    let inside = blobs.iter().any(|&(cz, cy, cx, rz, ry, rx)| {
                        ((p.0 - cz) / rz).powi(2) + ((p.1 - cy) / ry).powi(2) + ((p.2 - cx) / rx).powi(2)
                            <= 1.0
                    });
                    raw[row + i] = u8::from(inside);
                }
            }
        }
    }
    WireArray::from_u8(vec![n, z, y, x], raw).expect("mask")
}

fn ct(z: usize, y: usize, x: usize) -> WireArray {
    let mut data = vec![0f32; z * y * x];
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                let noise = (h >> 59) as f32 - 16.0; // ±16 HU
                let (dy, dx) = (
                    (j as f32 - y as f32 / 2.0) / (0.42 * y as f32),
                    (i as f32 - x as f32 / 2.0) / (0.47 * x as f32),
                );
                let r = dy * dy + dx * dx;
                let hu = if r > 1.0 {
                    -1000.0
                } else if r > 0.8 {
                    -80.0 + noise // fat
                } else if r > 0.7 && (k / 8) % 3 == 0 {
                    700.0 + noise // ribs
                } else if (dy + 0.2).powi(2) + (dx - 0.25).powi(2) < 0.06 {
                    60.0 + noise // liver
                } else {
                    35.0 + noise
                };
                data[(k * y + j) * x + i] = hu;
            }
        }
    }
    WireArray::from_f32(vec![z, y, x], &data).expect("ct")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (z, y, x) = if quick { (60, 256, 256) } else { (300, 512, 512) };
    let t = Instant::now();
    let arrays = [("mask u1 3x300x512x512", mask(3, z, y, x)), ("ct f4 300x512x512", ct(z, y, x))];
    println!("arrays made in {:.1} s", t.elapsed().as_secs_f64());
    let configs = [
        (Codec::BloscLz, 9, Filter::Shuffle), // python-blosc2 2.x default
        (Codec::BloscLz, 5, Filter::Shuffle),
        (Codec::Lz4, 1, Filter::Shuffle),
        (Codec::Lz4, 5, Filter::Shuffle),
        (Codec::Lz4, 5, Filter::BitShuffle),
        (Codec::Zstd, 1, Filter::Shuffle), // python-blosc2 3.x/4.x default
        (Codec::Zstd, 3, Filter::Shuffle),
        (Codec::Zstd, 5, Filter::Shuffle),
        (Codec::Zstd, 1, Filter::BitShuffle),
        (Codec::Zlib, 1, Filter::Shuffle),
        (Codec::Lz4, 0, Filter::NoFilter), // memcpy
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{cores} cores available");
    println!(
        "{:24} {:8} {:>3} {:10} {:>3} {:>12} {:>9} {:>9} {:>9}",
        "array", "codec", "lvl", "filter", "thr", "bytes", "ratio", "enc s", "dec s"
    );
    for (name, array) in &arrays {
        for &(codec, clevel, filter) in &configs {
            for nthreads in [1, cores] {
                let opts = EncodeOptions { codec, clevel, filter, nthreads, ..EncodeOptions::default() };
                let t = Instant::now();
                let body = encode_with(array, &opts)?;
                let enc = t.elapsed().as_secs_f64();
                // decode uses available_parallelism for chunks of 4 MiB or more
                let t = Instant::now();
                let back = decode(&body, u64::MAX)?;
                let dec = t.elapsed().as_secs_f64();
                assert!(back == *array);
                println!(
                    "{name:24} {:8} {clevel:>3} {:10} {nthreads:>3} {:>12} {:>9.1} {enc:>9.3} {dec:>9.3}",
                    format!("{codec:?}"),
                    format!("{filter:?}"),
                    body.len(),
                    array.bytes().len() as f64 / body.len() as f64
                );
                if nthreads == cores || cores == 1 {
                    break;
                }
            }
        }
    }
    Ok(())
}
