//! The VXA2 framing: header, then blosc2 chunks of at most 1 GiB of raw data each.

use crate::array::byte_len;
use crate::blosc::{self, ChunkHeader, Codec, Filter};
use crate::{ByteOrder, Dtype, WireArray, WireError};

/// The four bytes every VXA2 body starts with.
pub const MAGIC: &[u8; 4] = b"VXA2";

/// Raw bytes per chunk the official serializer uses (`_CHUNK_SIZE`, 2³⁰).
pub const CHUNK_BYTES: usize = 1 << 30;

/// Chunks at least this large are (de)compressed with several threads.
const THREADED_FROM: usize = 4 << 20;

/// Settings of [`encode_with`]. [`Default`] is what [`encode`] uses (see the crate doc for the
/// measurements behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// blosc2 codec.
    pub codec: Codec,
    /// Compression level 0–9 (0 writes memcpy chunks).
    pub clevel: u8,
    /// Shuffle filter, by the dtype's itemsize.
    pub filter: Filter,
    /// Threads per chunk of 4 MiB or more; 0 = the machine's available parallelism (at most 8).
    pub nthreads: usize,
    /// Raw bytes per chunk (rounded down to a multiple of the itemsize; at most 2³¹ − 33).
    pub chunk_bytes: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            codec: Codec::Zstd,
            clevel: 1,
            filter: Filter::Shuffle,
            nthreads: 0,
            chunk_bytes: CHUNK_BYTES,
        }
    }
}

fn threads_for(len: usize, requested: usize) -> usize {
    if len < THREADED_FROM {
        return 1;
    }
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Encodes `array` as a VXA2 body with the default settings (the official decoder of
/// voxtell-server 0.1.2 and napari-voxtell 0.2.0 reads it, with python-blosc2 2.x to 4.x).
pub fn encode(array: &WireArray) -> Result<Vec<u8>, WireError> {
    encode_with(array, &EncodeOptions::default())
}

/// Encodes `array` as a VXA2 body with the given blosc2 settings.
pub fn encode_with(array: &WireArray, options: &EncodeOptions) -> Result<Vec<u8>, WireError> {
    let dtype_str = array.numpy_str().as_bytes();
    let ndim = u8::try_from(array.shape().len()).map_err(|_| {
        WireError::Encode(format!("{} dimensions, VXA2 holds at most 255", array.shape().len()))
    })?;
    let itemsize = array.dtype().itemsize();
    let max_chunk = (i32::MAX as usize - 32) / itemsize * itemsize;
    let chunk_bytes = (options.chunk_bytes.min(max_chunk) / itemsize) * itemsize;
    if chunk_bytes == 0 {
        return Err(WireError::Encode(format!(
            "chunk size {} is smaller than one {} element",
            options.chunk_bytes,
            array.numpy_str()
        )));
    }
    let raw = array.bytes();
    let mut out = Vec::with_capacity(6 + dtype_str.len() + 8 * usize::from(ndim) + 8 + raw.len() / 8);
    out.extend_from_slice(MAGIC);
    out.push(dtype_str.len() as u8);
    out.extend_from_slice(dtype_str);
    out.push(ndim);
    for &dim in array.shape() {
        out.extend_from_slice(&(dim as u64).to_le_bytes());
    }
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    for (index, chunk) in raw.chunks(chunk_bytes).enumerate() {
        let params = blosc::Params {
            codec: options.codec,
            clevel: options.clevel,
            filter: options.filter,
            typesize: itemsize,
            nthreads: threads_for(chunk.len(), options.nthreads),
        };
        let compressed =
            blosc::compress(chunk, &params).map_err(|e| WireError::Encode(format!("chunk {index}: {e}")))?;
        out.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
        out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(out)
}

/// A parsed VXA2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Element type.
    pub dtype: Dtype,
    /// Byte order of the elements.
    pub byte_order: ByteOrder,
    /// Shape, C order.
    pub shape: Vec<usize>,
    /// Total raw byte length (= prod(shape) × itemsize, checked).
    pub total: u64,
    /// Offset of the first chunk frame in the body.
    pub data_offset: usize,
}

/// Reads fields off the front of a body, with bounds checks.
struct Cursor<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.body.len() - self.pos
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], WireError> {
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => {
                let field = &self.body[self.pos..self.pos + n];
                self.pos += n;
                Ok(field)
            }
            _ => Err(WireError::Truncated { what: what(), at: self.pos, needed: n, available: self.left() }),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, || what.to_string())?[0])
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

/// Parses and checks the header of a VXA2 body (magic, dtype, shape, total = prod(shape) ×
/// itemsize). Allocates nothing beyond the shape (at most 255 dimensions).
pub fn parse_header(body: &[u8]) -> Result<Header, WireError> {
    let head = &body[..body.len().min(4)];
    if head != &MAGIC[..head.len()] {
        return Err(WireError::BadMagic { found: head.to_vec() });
    }
    let mut cur = Cursor { body, pos: 0 };
    cur.take(4, || "magic".to_string())?;
    let dtype_len = cur.u8("dtype string length")?;
    let dtype_bytes = cur.take(u64::from(dtype_len), || "dtype string".to_string())?;
    let dtype_str = std::str::from_utf8(dtype_bytes)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| WireError::UnknownDtype(String::from_utf8_lossy(dtype_bytes).into_owned()))?;
    let (dtype, byte_order) = Dtype::parse_numpy(dtype_str)?;
    let ndim = cur.u8("ndim")?;
    let dims_bytes = cur.take(8 * u64::from(ndim), || format!("{ndim} dimensions"))?;
    let dims: Vec<u64> = dims_bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    let total = cur.u64(|| "total raw length".to_string())?;
    let overflow =
        |what| WireError::ShapeOverflow { shape: dims.clone(), dtype: dtype_str.to_string(), what };
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| overflow("a dimension"))?;
    let expected = byte_len(&shape, dtype.itemsize()).ok_or_else(|| overflow("the byte length"))?;
    if expected as u64 != total {
        return Err(WireError::ShapeMismatch {
            shape,
            dtype: dtype_str.to_string(),
            expected: expected as u64,
            declared: total,
        });
    }
    Ok(Header { dtype, byte_order, shape, total, data_offset: cur.pos })
}

/// The total raw size a body declares (from its header alone), for a 413 check before
/// [`decode`].
pub fn declared_size(body: &[u8]) -> Result<u64, WireError> {
    Ok(parse_header(body)?.total)
}

/// Decodes a VXA2 body.
///
/// `max_bytes` caps the decoded size: the header's total and each chunk's blosc2 `nbytes` are
/// checked against it before anything is allocated ([`WireError::TooLarge`]). Every length is
/// checked against the rest of the body; a chunk frame that runs past the end, bytes after the
/// last chunk that do not form one, a chunk whose frame raw length differs from its blosc2
/// header, or chunks that do not add up to the header's total are errors. The official decoder
/// is laxer on the last three (it ignores the frame's raw length); its own encoder never writes
/// them.
pub fn decode(body: &[u8], max_bytes: u64) -> Result<WireArray, WireError> {
    let header = parse_header(body)?;
    if header.total > max_bytes {
        return Err(WireError::TooLarge {
            what: "the VXA2 header's total".to_string(),
            declared: header.total,
            limit: max_bytes,
        });
    }
    // Fits: parse_header computed it as a usize.
    let total = header.total as usize;
    // calloc'd: bounded by max_bytes, and pages no chunk fills are never touched.
    let mut out = vec![0u8; total];
    let mut cur = Cursor { body, pos: header.data_offset };
    let mut filled = 0u64;
    let mut index = 0usize;
    while cur.left() > 0 {
        let frame = next_frame(&mut cur, index, filled, header.total, max_bytes)?;
        let end = filled + frame.header.nbytes;
        frame.decompress_into(&mut out[filled as usize..end as usize])?;
        filled = end;
        index += 1;
    }
    if filled != header.total {
        return Err(WireError::TotalMismatch { declared: header.total, got: filled });
    }
    WireArray::with_order(header.dtype, header.byte_order, header.shape, out)
}

/// One chunk frame of a body, its lengths checked.
struct Frame<'a> {
    index: usize,
    offset: usize,
    data: &'a [u8],
    header: ChunkHeader,
}

impl Frame<'_> {
    fn decompress_into(&self, dest: &mut [u8]) -> Result<(), WireError> {
        blosc::decompress_into(self.data, &self.header, dest, threads_for(dest.len(), 0))
            .map_err(|reason| WireError::ChunkCorrupt { index: self.index, offset: self.offset, reason })
    }
}

/// Read chunk frame `index` at the cursor, `filled` raw bytes of the header's `total` already
/// decoded: its raw length must equal its blosc2 header's, stay within `max_bytes` and within
/// what the total leaves.
fn next_frame<'a>(
    cur: &mut Cursor<'a>,
    index: usize,
    filled: u64,
    total: u64,
    max_bytes: u64,
) -> Result<Frame<'a>, WireError> {
    let offset = cur.pos;
    let raw_len = cur.u64(|| format!("raw length of chunk {index}"))?;
    let comp_len = cur.u64(|| format!("compressed length of chunk {index}"))?;
    let data = cur.take(comp_len, || format!("blosc2 data of chunk {index}"))?;
    let corrupt = |reason: String| WireError::ChunkCorrupt { index, offset, reason };
    let header = ChunkHeader::parse(data).map_err(corrupt)?;
    let nbytes = header.nbytes;
    if nbytes > max_bytes {
        return Err(WireError::TooLarge {
            what: format!("chunk {index}'s blosc2 header"),
            declared: nbytes,
            limit: max_bytes,
        });
    }
    if nbytes != raw_len {
        return Err(corrupt(format!("its frame declares {raw_len} raw bytes, its blosc2 header {nbytes}")));
    }
    if filled + nbytes > total {
        return Err(corrupt(format!(
            "it decompresses to {nbytes} bytes, past the header's total of {total} ({filled} already decoded)"
        )));
    }
    Ok(Frame { index, offset, data, header })
}

/// The chunks of a VXA2 body decoded one at a time ([`decode_chunks`]): each item is one
/// chunk's raw bytes, in order; after the last, an error if the chunks do not add up to the
/// header's total. The first error ends the iteration.
pub struct Chunks<'a> {
    cur: Cursor<'a>,
    total: u64,
    filled: u64,
    index: usize,
    max_chunk_bytes: u64,
    done: bool,
}

impl std::fmt::Debug for Chunks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks").field("index", &self.index).field("filled", &self.filled).finish()
    }
}

impl Iterator for Chunks<'_> {
    type Item = Result<Vec<u8>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.cur.left() == 0 {
            self.done = true;
            return (self.filled != self.total)
                .then_some(Err(WireError::TotalMismatch { declared: self.total, got: self.filled }));
        }
        let chunk = next_frame(&mut self.cur, self.index, self.filled, self.total, self.max_chunk_bytes)
            .and_then(|frame| {
                let mut raw = vec![0u8; frame.header.nbytes as usize];
                frame.decompress_into(&mut raw)?;
                Ok(raw)
            });
        match &chunk {
            Ok(raw) => {
                self.filled += raw.len() as u64;
                self.index += 1;
            }
            Err(_) => self.done = true,
        }
        Some(chunk)
    }
}

/// Decode a VXA2 body one chunk at a time, for a reader that holds less than the whole array:
/// the header, and the chunks' raw bytes in order ([`Chunks`]). Each chunk is checked as
/// [`decode`] checks it, and is refused ([`WireError::TooLarge`]) above `max_chunk_bytes` before
/// anything is allocated.
pub fn decode_chunks(body: &[u8], max_chunk_bytes: u64) -> Result<(Header, Chunks<'_>), WireError> {
    let header = parse_header(body)?;
    let chunks = Chunks {
        cur: Cursor { body, pos: header.data_offset },
        total: header.total,
        filled: 0,
        index: 0,
        max_chunk_bytes,
        done: false,
    };
    Ok((header, chunks))
}
