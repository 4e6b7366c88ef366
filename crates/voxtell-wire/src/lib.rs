//! VXA2: the array payload of voxtell-server, byte-compatible with the official serializer
//! (`voxtell/server/serialization.py` of voxtell 0.1.2, copied into napari-voxtell 0.2.0).
//!
//! A body is `"VXA2"`, the numpy `dtype.str` (length byte + ASCII), ndim (one byte), each
//! dimension as u64, the total raw length as u64, then chunks until the end of the body:
//! u64 raw length, u64 compressed length, one blosc2 chunk (`blosc2.compress(raw,
//! typesize=itemsize)`) holding at most 1 GiB of the array's C-order bytes. All integers are
//! little-endian. An empty array has no chunks.
//!
//! ```
//! use voxtell_wire::{decode, encode, WireArray};
//! let mask = WireArray::from_u8(vec![1, 2, 3, 4], vec![0; 24])?;
//! let body = encode(&mask)?;
//! assert_eq!(&body[..4], b"VXA2");
//! assert_eq!(decode(&body, 1 << 30)?, mask);
//! # Ok::<(), voxtell_wire::WireError>(())
//! ```
//!
//! # Why this is written by hand
//!
//! - The framing is VoxTell's own (no crate knows it) and small; a hand-written reader checks
//!   every length against the rest of the body and the caller's limit before it allocates, so a
//!   hostile body cannot make the server allocate, panic or loop ([`decode`]; fuzzed by
//!   `fuzz/fuzz_targets/vxa2_decode.rs`).
//! - The dtype string is numpy's `dtype.str`; the dozen kinds a client sends are a table
//!   ([`Dtype`]), not worth a numpy-format dependency.
//! - blosc2 itself is not written by hand: chunks go through C-Blosc2 2.15.2 (`blosc2-sys`,
//!   built from its bundled source with cmake and linked statically), the library
//!   python-blosc2 2.7 wraps and whose chunk format 5 python-blosc2 3.x/4.x (C-Blosc2 3.x)
//!   still write and read. Only the FFI calls are ours, in one module (`blosc`) with the
//!   crate's only `unsafe`; that module's doc says why the safe `blosc2-rs` wrapper is not
//!   used. The pure-Rust port `blosc2-pure-rs` was not taken: an LLM translation of ~57k lines
//!   with its own `unsafe`, against the C library that OSS-Fuzz has fuzzed for years.
//!
//! # Compatibility (checked by `tools/wire_fixtures.sh`)
//!
//! [`decode`] reads what python-blosc2 2.7.1 and 4.15.0 write with their defaults (2.x:
//! BloscLZ level 9 + shuffle; 4.x: Zstd level 1 + shuffle) and with any codec (BloscLZ, LZ4,
//! LZ4HC, zlib, Zstd), filter (shuffle, bitshuffle, delta, none), split mode, special chunk
//! (zeros, NaN, repeated value, uninitialized — read as zeros) or memcpy chunk; the fixtures in
//! `fixtures/wire/` pin this. [`encode`] writes chunk format version 5, which both decode.
//!
//! # Encoder settings (measured)
//!
//! [`encode`] uses Zstd level 1 with byte shuffle (python-blosc2 3.x/4.x's own default) and, for
//! chunks of 4 MiB or more, the machine's available parallelism (at most 8 threads). Measured
//! by `examples/vxa2_bench.rs` (release build, 2-core shared VM; encode / decode seconds with
//! 1 → 2 threads, decode always 2; sizes exact):
//!
//! | settings | uint8 mask 3×300×512×512 (236 MB): bytes, ratio, enc, dec | CT-like float32 300×512×512 (315 MB): bytes, ratio, enc, dec |
//! |---|---|---|
//! | **Zstd 1 shuffle** | **291 608, 809×, 0.14 → 0.06, 0.11** | **45.2 MB, 7.0×, 0.40 → 0.23, 0.14** |
//! | Zstd 3 shuffle | 287 398, 821×, 0.14 → 0.07, 0.12 | 44.8 MB, 7.0×, 1.15 → 0.58, 0.14 |
//! | Zstd 5 shuffle | 244 227, 966×, 0.21 → 0.12, 0.12 | 43.9 MB, 7.2×, 2.33 → 1.14, 0.13 |
//! | Zstd 1 bitshuffle | 334 428, 706×, 0.07 → 0.03, 0.10 | 48.5 MB, 6.5×, 0.45 → 0.49, 0.29 |
//! | BloscLZ 9 shuffle (python-blosc2 2.x default) | 943 706, 250×, 0.16 → 0.08, 0.12 | 71.1 MB, 4.4×, 0.39 → 0.23, 0.11 |
//! | BloscLZ 5 shuffle | 706 644, 334×, 0.11 → 0.06, 0.12 | 74.6 MB, 4.2×, 0.36 → 0.21, 0.10 |
//! | LZ4 1 shuffle | 1 022 737, 231×, 0.13 → 0.07, 0.11 | 74.1 MB, 4.2×, 0.23 → 0.14, 0.09 |
//! | LZ4 5 bitshuffle | 924 466, 255×, 0.06 → 0.03, 0.10 | 54.0 MB, 5.8×, 0.28 → 0.16, 0.10 |
//! | zlib 1 shuffle | 911 017, 259×, 0.17 → 0.08, 0.13 | 70.8 MB, 4.4×, 0.81 → 0.79, 0.53 |
//! | memcpy (level 0) | 236 MB, 1×, 0.27 → 0.20, 0.06 | 315 MB, 1×, 0.34, 0.13 |
//!
//! Zstd 1 encodes as fast as BloscLZ and LZ4 and is 3.2× smaller on masks and 1.6× on CT;
//! higher Zstd levels save 1–3 % (16 % on masks at level 5) for 2.5–5× the encode time.
//! Decoding is bounded by writing the output (a memcpy chunk decodes in about the same time).
pub mod array;
mod blosc;
pub mod dtype;
mod error;
pub mod frame;

pub use array::WireArray;
pub use blosc::{Codec, Filter};
pub use dtype::{ByteOrder, Dtype};
pub use error::WireError;
pub use frame::{
    CHUNK_BYTES, Chunks, EncodeOptions, Header, MAGIC, declared_size, decode, decode_chunks, encode,
    encode_with, parse_header,
};
