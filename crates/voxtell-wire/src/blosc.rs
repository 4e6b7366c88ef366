//! The one door to C-Blosc2: compress and decompress a single blosc2 chunk.
//!
//! This module holds every `unsafe` block of the crate, and is why the crate allows
//! `unsafe_code` here alone. Raw FFI to `blosc2-sys` (C-Blosc2 2.15.2, built from the crate's
//! bundled source and linked statically) is used instead of the safe `blosc2-rs` wrapper
//! because, for bytes that come off the network, that wrapper is not safe to lean on:
//! `compress_ctx` reads `src.len() × typesize` bytes from a `&[u8]` (an over-read for every
//! dtype wider than one byte), `Context` derives `Clone` over its raw pointer (a double free),
//! `CompressedBufferInfo::try_from` reads a header from a slice of any length, and `decompress`
//! sizes its output from the chunk's own header before a caller can apply a limit. Here:
//!
//! - [`ChunkHeader::parse`] reads the header in safe Rust first and refuses what C-Blosc2 would
//!   read out of bounds or could not decode standalone: fewer than 16 bytes (32 for the
//!   extended blosc2 header), `cbytes` beyond the slice, a negative `nbytes`, a version newer
//!   than 5, a "lazy" chunk (one that points into a frame file, meaningless on the wire).
//! - The caller compares `nbytes` with its limit, then [`decompress_into`] lets C-Blosc2 write
//!   into a buffer of exactly `nbytes` bytes, and checks it wrote exactly that many.
//! - [`compress`] passes the byte length, never an element count.
//!
//! Contexts (`blosc2_create_cctx`/`dctx`) are made and freed per call, so no global state of
//! the library is used (the `blosc1_*`/`blosc2_compress` API shares one global context behind a
//! mutex). The library is built with `BUILD_PLUGINS=OFF` and nothing registers codecs or
//! filters, so a chunk naming a plugin codec or filter fails instead of making C-Blosc2 look for
//! one (its plugin loader runs `python -c` and `dlopen`s what it prints). Contexts honour
//! C-Blosc2's `BLOSC_*` environment variables (`BLOSC_NTHREADS`, `BLOSC_CLEVEL`, …), as every
//! program using the library does.

#![allow(unsafe_code)]

use std::ffi::c_void;

use blosc2_sys as ffi;

/// Bytes of the basic (blosc1-compatible) chunk header.
pub(crate) const MIN_HEADER: usize = 16;
/// Bytes of the extended blosc2 chunk header (what every blosc2 writer emits).
pub(crate) const EXTENDED_HEADER: usize = 32;
/// The chunk format version C-Blosc2 2.x and 3.x write and that [`compress`] produces.
pub(crate) const CHUNK_FORMAT_VERSION: u8 = 5;

/// A blosc2 codec the encoder can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// BloscLZ (python-blosc2 2.x's default).
    BloscLz,
    /// LZ4.
    Lz4,
    /// LZ4 high compression.
    Lz4Hc,
    /// zlib.
    Zlib,
    /// Zstandard (python-blosc2 3.x and 4.x's default).
    Zstd,
}

impl Codec {
    fn code(self) -> u8 {
        (match self {
            Codec::BloscLz => ffi::BLOSC_BLOSCLZ,
            Codec::Lz4 => ffi::BLOSC_LZ4,
            Codec::Lz4Hc => ffi::BLOSC_LZ4HC,
            Codec::Zlib => ffi::BLOSC_ZLIB,
            Codec::Zstd => ffi::BLOSC_ZSTD,
        }) as u8
    }
}

/// The blosc2 shuffle filter the encoder applies before the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// No filter.
    NoFilter,
    /// Byte shuffle by `typesize` (python-blosc2's default; a no-op for one-byte types).
    Shuffle,
    /// Bit shuffle.
    BitShuffle,
}

/// The fields of a blosc2 chunk header that the decoder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    /// Chunk format version (5 for blosc2).
    pub version: u8,
    /// Header flags (bit 0 + bit 2 = extended header, bit 1 = memcpy, bit 4 = not split,
    /// bits 5–7 = codec format).
    pub flags: u8,
    /// Element size used by the shuffle filters.
    pub typesize: u8,
    /// Decompressed length.
    pub nbytes: u64,
    /// Compressed length including this header.
    pub cbytes: usize,
}

impl ChunkHeader {
    /// Reads and checks the header at the start of `chunk` (see the module doc).
    pub(crate) fn parse(chunk: &[u8]) -> Result<ChunkHeader, String> {
        if chunk.len() < MIN_HEADER {
            return Err(format!(
                "{} bytes cannot hold a blosc2 chunk header ({MIN_HEADER} bytes at least)",
                chunk.len()
            ));
        }
        let i32_at = |at: usize| i32::from_le_bytes([chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]]);
        let (version, flags, typesize) = (chunk[0], chunk[2], chunk[3]);
        let (nbytes, cbytes) = (i32_at(4), i32_at(12));
        if version > CHUNK_FORMAT_VERSION {
            return Err(format!(
                "blosc2 chunk format version {version} is newer than {CHUNK_FORMAT_VERSION}"
            ));
        }
        let nbytes =
            u64::try_from(nbytes).map_err(|_| format!("blosc2 header has a negative nbytes {nbytes}"))?;
        let cbytes = usize::try_from(cbytes).unwrap_or(0);
        if cbytes < MIN_HEADER || cbytes > chunk.len() {
            return Err(format!(
                "blosc2 header says the chunk is {} bytes long, the frame holds {}",
                i32_at(12),
                chunk.len()
            ));
        }
        let extended = flags & 0x05 == 0x05;
        if extended {
            if cbytes < EXTENDED_HEADER {
                return Err(format!(
                    "blosc2 chunk of {cbytes} bytes cannot hold its extended header ({EXTENDED_HEADER} bytes)"
                ));
            }
            let blosc2_flags = chunk[31];
            if blosc2_flags & 0x08 != 0 {
                return Err("blosc2 chunk is a lazy chunk (it points into a frame file)".to_string());
            }
        }
        Ok(ChunkHeader { version, flags, typesize, nbytes, cbytes })
    }
}

/// C-Blosc2's name for one of its negative return codes.
fn error_name(code: i32) -> String {
    let text = match code {
        -1 => "generic failure",
        -2 => "bad stream",
        -3 => "invalid data",
        -4 => "memory allocation",
        -5 => "not enough space to read",
        -6 => "not enough space to write",
        -7 => "codec not supported",
        -8 => "invalid parameter",
        -9 => "codec parameter",
        -10 => "filter pipeline",
        -11 => "chunk offset",
        -12 => "chunk size",
        -13 => "header corrupt",
        -14 => "header format version not supported",
        -15 => "null pointer",
        -16 => "filter error",
        -17 => "codec error",
        -18 => "frame error",
        -19 => "thread creation",
        _ => "error",
    };
    format!("blosc2 error {code} ({text})")
}

/// Decompresses the chunk at the start of `chunk` (already checked by [`ChunkHeader::parse`])
/// into `dest`, whose length must be the header's `nbytes`.
pub(crate) fn decompress_into(
    chunk: &[u8],
    header: &ChunkHeader,
    dest: &mut [u8],
    nthreads: usize,
) -> Result<(), String> {
    let chunk = &chunk[..header.cbytes];
    let srcsize = i32::try_from(chunk.len()).map_err(|_| "chunk longer than 2^31 bytes".to_string())?;
    let destsize = i32::try_from(dest.len()).map_err(|_| "chunk decompresses past 2^31 bytes".to_string())?;
    if dest.len() as u64 != header.nbytes {
        return Err(format!("internal: destination of {} bytes for nbytes {}", dest.len(), header.nbytes));
    }
    if dest.is_empty() {
        return Ok(());
    }
    // SAFETY: the defaults struct is plain data returned by value.
    let mut dparams = unsafe { ffi::blosc2_get_blosc2_dparams_defaults() };
    dparams.nthreads = i16::try_from(nthreads.max(1)).unwrap_or(i16::MAX);
    // SAFETY: `dparams` is a valid struct (no schunk, no postfilter); the result is checked for
    // null and freed by `Ctx::drop`.
    let ctx = Ctx(unsafe { ffi::blosc2_create_dctx(dparams) });
    if ctx.0.is_null() {
        return Err("blosc2 could not create a decompression context".to_string());
    }
    // SAFETY: `chunk` is valid for `srcsize` bytes and `dest` for `destsize` writable bytes; the
    // header was validated (length ≥ header size, cbytes ≤ srcsize, not lazy), and C-Blosc2
    // checks the rest of the chunk against `srcsize` and never writes past `destsize`.
    let written = unsafe {
        ffi::blosc2_decompress_ctx(
            ctx.0,
            chunk.as_ptr().cast::<c_void>(),
            srcsize,
            dest.as_mut_ptr().cast::<c_void>(),
            destsize,
        )
    };
    if written < 0 {
        return Err(error_name(written));
    }
    if written != destsize {
        return Err(format!("blosc2 wrote {written} bytes, its header declares {destsize}"));
    }
    Ok(())
}

/// Compression settings of one chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub codec: Codec,
    pub clevel: u8,
    pub filter: Filter,
    pub typesize: usize,
    pub nthreads: usize,
}

/// Compresses `src` into one blosc2 chunk (format version 5).
pub(crate) fn compress(src: &[u8], params: &Params) -> Result<Vec<u8>, String> {
    let srcsize =
        i32::try_from(src.len()).map_err(|_| format!("chunk of {} bytes is over 2^31", src.len()))?;
    let bound = src.len() + ffi::BLOSC2_MAX_OVERHEAD as usize;
    let destsize =
        i32::try_from(bound).map_err(|_| format!("chunk of {} bytes is too large for blosc2", src.len()))?;
    let typesize = i32::try_from(params.typesize).ok().filter(|t| (1..=255).contains(t));
    let Some(typesize) = typesize else {
        return Err(format!("typesize {} is outside 1..=255", params.typesize));
    };
    // SAFETY: the defaults struct is plain data returned by value.
    let mut cparams = unsafe { ffi::blosc2_get_blosc2_cparams_defaults() };
    cparams.compcode = params.codec.code();
    cparams.clevel = params.clevel.min(9);
    cparams.typesize = typesize;
    cparams.nthreads = i16::try_from(params.nthreads.max(1)).unwrap_or(i16::MAX);
    cparams.filters = [0; 6];
    cparams.filters[5] = match params.filter {
        Filter::NoFilter => ffi::BLOSC_NOFILTER,
        Filter::Shuffle => ffi::BLOSC_SHUFFLE,
        Filter::BitShuffle => ffi::BLOSC_BITSHUFFLE,
    } as u8;
    // SAFETY: `cparams` holds the library defaults (no schunk, prefilter or tuner params) with
    // plain fields changed; the result is checked for null and freed by `Ctx::drop`.
    let ctx = Ctx(unsafe { ffi::blosc2_create_cctx(cparams) });
    if ctx.0.is_null() {
        return Err("blosc2 could not create a compression context".to_string());
    }
    // calloc'd: pages the codec never writes are never touched.
    let mut dest = vec![0u8; bound];
    // SAFETY: `src` is valid for `srcsize` bytes, `dest` for `destsize` writable bytes, and
    // C-Blosc2 never writes past `destsize` (documented memory-safe for any sizes).
    let written = unsafe {
        ffi::blosc2_compress_ctx(
            ctx.0,
            src.as_ptr().cast::<c_void>(),
            srcsize,
            dest.as_mut_ptr().cast::<c_void>(),
            destsize,
        )
    };
    let written = usize::try_from(written).map_err(|_| error_name(written))?;
    if written == 0 || written > bound {
        return Err(format!("blosc2 compressed {} bytes into {written} bytes (room {bound})", src.len()));
    }
    dest.truncate(written);
    Ok(dest)
}

/// An owned C-Blosc2 context, freed on drop (never cloned).
struct Ctx(*mut ffi::blosc2_context);

impl Drop for Ctx {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from blosc2_create_[cd]ctx and is freed exactly once.
            unsafe { ffi::blosc2_free_ctx(self.0) };
        }
    }
}
