//! `GET /jobs/{id}/seg.dcm`: a finished job's masks as one DICOM SEG over the DICOM series its
//! image was uploaded as — the SEG `voxtell predict --output-type dicom-seg` writes: one segment
//! per prompt whose mask is not empty, numbered in prompt order, with the codes and colours of
//! [`voxtell_infer::prompt_segment`] and the options of [`voxtell_infer::seg_options`].
//!
//! Memory: the worker cuts a result's VXA2 payload into blosc2 chunks at prompt boundaries
//! ([`chunk_bytes`]), and [`MaskReader`] decodes it one chunk at a time, so a SEG is built with
//! one decoded mask (`Z × Y × X` bytes) at a time, besides the SEG's own packed frames (one bit
//! per voxel of each frame) that [`voxtell_io::dicom_seg::SegBuilder`] holds. The file is written
//! into a folder of its own under the server's scratch folder, read back and removed with it,
//! also on error.

use std::path::Path;

use ndarray::ArrayView3;
use voxtell_infer::batch::error_text;
use voxtell_infer::{DicomSegFile, prompt_segment, seg_options};
use voxtell_io::DicomSeries;
use voxtell_io::dicom_seg::SegBuilder;
use voxtell_wire::{CHUNK_BYTES, Dtype};

use crate::error::ApiError;
use crate::state::StoredImage;

/// Raw bytes per blosc2 chunk of a result whose masks are `shape` (Z, Y, X): one mask when it
/// fits a chunk (at most [`CHUNK_BYTES`]), else the most whole slices that divide the mask's
/// slices and fit, so that no chunk holds parts of two prompts. A slice larger than a chunk
/// (not a real scan) gets the official 1 GiB chunks; [`MaskReader`] reads those too.
pub(crate) fn chunk_bytes(shape: [usize; 3]) -> usize {
    let [z, y, x] = shape;
    let plane = y.saturating_mul(x).max(1);
    let mask = plane.saturating_mul(z).max(1);
    if mask <= CHUNK_BYTES {
        return mask;
    }
    (1..=z)
        .rev()
        .filter(|s| z % s == 0)
        .map(|s| s.saturating_mul(plane))
        .find(|&b| b <= CHUNK_BYTES)
        .unwrap_or(CHUNK_BYTES)
}

/// Reads the masks of a uint8 `(N, Z, Y, X)` VXA2 payload one prompt at a time: chunks are
/// decoded one by one ([`voxtell_wire::decode_chunks`], each checked and capped at one mask or
/// one official chunk), and decoded bytes are kept only until their mask is handed out. With
/// chunks cut at prompt boundaries ([`chunk_bytes`]) that is one mask; with other cuts, one mask
/// and the parts of the chunks that straddle its ends.
#[derive(Debug)]
pub(crate) struct MaskReader<'a> {
    chunks: voxtell_wire::Chunks<'a>,
    /// Decoded bytes not yet handed out.
    pending: Vec<u8>,
    /// Bytes of one mask (Z × Y × X).
    mask_bytes: usize,
}

impl<'a> MaskReader<'a> {
    /// A reader of `body`, which must be the masks of `prompts` prompts over `shape` (Z, Y, X).
    pub(crate) fn new(body: &'a [u8], prompts: usize, shape: [usize; 3]) -> Result<Self, String> {
        let mask_bytes = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("masks of shape {shape:?} do not fit in memory"))?;
        let cap = mask_bytes.max(CHUNK_BYTES) as u64;
        let (header, chunks) = voxtell_wire::decode_chunks(body, cap).map_err(|e| e.to_string())?;
        let expected = [prompts, shape[0], shape[1], shape[2]];
        if header.dtype != Dtype::U8 || header.shape != expected {
            return Err(format!(
                "the payload holds {:?} {}, not uint8 masks of shape {expected:?}",
                header.shape,
                header.dtype.numpy_str(header.byte_order)
            ));
        }
        Ok(MaskReader { chunks, pending: Vec::new(), mask_bytes })
    }

    /// The next prompt's mask, (Z, Y, X) in C order.
    pub(crate) fn next_mask(&mut self) -> Result<Vec<u8>, String> {
        while self.pending.len() < self.mask_bytes {
            let chunk = match self.chunks.next() {
                Some(chunk) => chunk.map_err(|e| e.to_string())?,
                None => return Err("the payload ends before all masks were read".to_string()),
            };
            if self.pending.is_empty() {
                self.pending = chunk;
            } else {
                self.pending.extend_from_slice(&chunk);
            }
        }
        let rest = self.pending.split_off(self.mask_bytes);
        Ok(std::mem::replace(&mut self.pending, rest))
    }
}

/// A SEG built for a request.
#[derive(Debug)]
pub(crate) struct SegFile {
    /// The file's bytes.
    pub(crate) bytes: Vec<u8>,
    /// Segments (prompts with a non-empty mask).
    pub(crate) segments: usize,
    /// Frames.
    pub(crate) frames: usize,
}

/// The SEG of a job's result `payload` (uint8 `(N, Z, Y, X)`, prompt order) over `series`, the
/// DICOM series `image` was read from. Written under `scratch` in a folder of its own, read back,
/// and removed (also on error). Every mask empty: 409, since a SEG has at least one segment.
pub(crate) fn build(
    payload: &[u8],
    prompts: &[String],
    image: &StoredImage,
    series: &DicomSeries,
    scratch: &Path,
) -> Result<SegFile, ApiError> {
    let dir = tempfile::Builder::new()
        .prefix("seg-")
        .tempdir_in(scratch)
        .map_err(|e| ApiError::internal(format!("Cannot make a folder for the DICOM SEG: {e}")))?;
    let path = dir.path().join("seg.dcm");
    // Errors name the file without the server's folders.
    let folder = dir.path().display().to_string();
    let fail = |what: &str, e: &(dyn std::error::Error + 'static)| {
        ApiError::internal(format!("{what}: {}", error_text(e).replace(&folder, "(scratch)")))
    };
    let mut seg = SegBuilder::new(&path, series, seg_options(DicomSegFile::default().series_number))
        .map_err(|e| fail("Cannot start the DICOM SEG", &e))?;
    let mut masks = MaskReader::new(payload, prompts.len(), image.shape)
        .map_err(|e| ApiError::internal(format!("The cached result cannot be read: {e}")))?;
    let mut empty = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let mask = masks
            .next_mask()
            .map_err(|e| ApiError::internal(format!("The cached result cannot be read: {e}")))?;
        if !mask.iter().any(|&v| v != 0) {
            empty.push(prompt.as_str());
            continue;
        }
        let sar = ArrayView3::from_shape(image.shape, &mask)
            .map_err(|e| ApiError::internal(format!("The mask of {prompt:?}: {e}")))?;
        let source_grid =
            image.geometry.restore_view(sar).map_err(|e| fail(&format!("The mask of {prompt:?}"), &e))?;
        seg.add(&prompt_segment(i, prompt, source_grid))
            .map_err(|e| fail(&format!("The mask of {prompt:?}"), &e))?;
    }
    drop(masks);
    if seg.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!(
                "Every mask of this job is empty ({empty:?}): a DICOM SEG needs at least one segment, so there is none to send."
            ),
        ));
    }
    let written = seg.finish().map_err(|e| fail("Cannot write the DICOM SEG", &e))?;
    let bytes = std::fs::read(&path).map_err(|e| fail("Cannot read the DICOM SEG back", &e))?;
    dir.close().map_err(|e| fail("Cannot remove the DICOM SEG's folder", &e))?;
    Ok(SegFile { bytes, segments: written.segments, frames: written.frames })
}

#[cfg(test)]
mod tests {
    use voxtell_wire::{EncodeOptions, WireArray};

    use super::*;

    /// Three 2×3×4 masks with distinct contents.
    fn masks() -> Vec<u8> {
        (0..3 * 24).map(|i| ((i * 7) % 5 == 0) as u8).collect()
    }

    fn payload(chunk_bytes: usize) -> Vec<u8> {
        let array = WireArray::from_u8(vec![3, 2, 3, 4], masks()).unwrap();
        voxtell_wire::encode_with(&array, &EncodeOptions { chunk_bytes, ..Default::default() }).unwrap()
    }

    #[test]
    fn masks_come_one_at_a_time_whatever_the_chunks() {
        // Per prompt (the server's), one chunk for all (the official serializer's), and cuts
        // that straddle the prompts.
        for chunk in [24, CHUNK_BYTES, 5, 48, 1] {
            let body = payload(chunk);
            let mut reader = MaskReader::new(&body, 3, [2, 3, 4]).unwrap();
            for (i, want) in masks().chunks(24).enumerate() {
                assert_eq!(reader.next_mask().unwrap(), want, "chunks of {chunk}: prompt {i}");
            }
            assert!(reader.next_mask().is_err(), "chunks of {chunk}: a fourth mask");
        }
    }

    #[test]
    fn bad_payloads_are_errors() {
        let body = payload(24);
        assert!(MaskReader::new(&body, 2, [2, 3, 4]).unwrap_err().contains("[3, 2, 3, 4]"));
        assert!(MaskReader::new(&body, 3, [4, 3, 2]).is_err());
        assert!(MaskReader::new(b"VXA2", 3, [2, 3, 4]).is_err());
        let floats =
            voxtell_wire::encode(&WireArray::from_f32(vec![3, 2, 3, 4], &[0.0; 72]).unwrap()).unwrap();
        assert!(MaskReader::new(&floats, 3, [2, 3, 4]).unwrap_err().contains("<f4"));
        // Cut anywhere: an error, never a panic.
        for cut in 0..body.len() {
            let Ok(mut reader) = MaskReader::new(&body[..cut], 3, [2, 3, 4]) else { continue };
            assert!((0..3).map(|_| reader.next_mask()).any(|m| m.is_err()), "cut at {cut}");
        }
        // A chunk that claims more raw bytes than the header has left.
        let mut lying = body.clone();
        let first = voxtell_wire::parse_header(&body).unwrap().data_offset;
        lying[first..first + 8].copy_from_slice(&1000u64.to_le_bytes());
        let mut reader = MaskReader::new(&lying, 3, [2, 3, 4]).unwrap();
        assert!(reader.next_mask().unwrap_err().contains("chunk 0"));
    }

    #[test]
    fn chunks_hold_whole_masks() {
        assert_eq!(chunk_bytes([300, 512, 512]), 300 * 512 * 512);
        assert_eq!(chunk_bytes([0, 0, 0]), 1);
        // 2 GiB masks of 2048 slices of 1 MiB: 1024 slices a chunk.
        assert_eq!(chunk_bytes([2048, 1024, 1024]), 1 << 30);
        // A prime number of slices: one slice a chunk.
        assert_eq!(chunk_bytes([2053, 1024, 1024]), 1 << 20);
        for shape in [[2048, 1024, 1024], [2053, 1024, 1024], [1500, 1000, 1000]] {
            let mask = shape.iter().product::<usize>();
            assert_eq!(mask % chunk_bytes(shape), 0, "{shape:?}");
        }
    }
}
