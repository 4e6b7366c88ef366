//! Reading NIfTI-1 files (`.nii`, `.nii.gz`) into a [`Volume`], as nibabel reads them.
//!
//! The header is parsed by the `nifti` crate. Its validation, the affine (nibabel's
//! `get_best_affine` after nibabel's header fixes) and the voxel decoding with nibabel's scaling
//! rules are done here: the crate's own affine helpers panic on some user files and its scaling
//! differs from nibabel's.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use nalgebra::Matrix3;
use ndarray::{Array3, ShapeBuilder};
use nifti::NiftiHeader;

use crate::error::{IoError, Result};
use crate::orientation::{self, Affine};
use crate::volume::{Source, SourceFormat, Volume};

/// Size of a NIfTI-1 header in bytes.
const HEADER_SIZE: usize = 348;
/// Size of a NIfTI-2 header in bytes (recognised only to reject it clearly).
const NIFTI2_HEADER_SIZE: i32 = 540;
/// Deflate cannot compress better than about 1032:1; used to reject impossible sizes early.
const MAX_DEFLATE_RATIO: u64 = 1100;
/// Bytes decoded per chunk while streaming voxel data.
const CHUNK: usize = 1 << 20;

/// A supported on-disk voxel datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Datatype {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Datatype {
    fn from_code(code: i16) -> std::result::Result<Self, &'static str> {
        Ok(match code {
            2 => Self::U8,
            256 => Self::I8,
            4 => Self::I16,
            512 => Self::U16,
            8 => Self::I32,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            16 => Self::F32,
            64 => Self::F64,
            1 => return Err("binary"),
            32 => return Err("complex64"),
            128 => return Err("rgb24"),
            1536 => return Err("float128"),
            1792 => return Err("complex128"),
            2048 => return Err("complex256"),
            2304 => return Err("rgba32"),
            _ => return Err("unknown"),
        })
    }

    fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }
}

/// How raw values become physical values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scaling {
    /// No scaling: the value is converted to f64, then rounded to f32.
    None,
    /// `f64(x)·slope + inter` (two f64 roundings, no fused multiply-add), then rounded to f32.
    /// nibabel's array proxy holds the factors as Python floats, so it scales in f64 whatever
    /// the stored datatype and whether or not the image is reoriented.
    F64 { slope: f64, inter: f64 },
}

/// What the header says about the voxel layout, after validation.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) shape: [usize; 3],
    pub(crate) datatype: Datatype,
    pub(crate) big_endian: bool,
    pub(crate) vox_offset: u64,
    pub(crate) affine: Affine,
}

/// Read a NIfTI-1 file (`.nii` or `.nii.gz`; gzip is recognised by its magic bytes).
///
/// The data keep the file's voxel order; values are scaled by `scl_slope`/`scl_inter` exactly as
/// nnU-Net's `NibabelIOWithReorient` reader obtains them through nibabel. The affine is nibabel's
/// `get_best_affine`: the sform if `sform_code ≠ 0`, else the qform if `qform_code ≠ 0`, else
/// nibabel's base affine (x flipped, origin at the centre).
pub fn read_nifti(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| IoError::os(path, e))?;
    let file_len = file.metadata().map_err(|e| IoError::os(path, e))?.len();
    read_nifti_from(BufReader::new(file), file_len, path)
}

/// Read a NIfTI-1 image held in memory (for example an uploaded `.nii.gz`), exactly as
/// [`read_nifti`] reads a file; `name` is used in error messages and as the volume's path.
pub fn read_nifti_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Volume> {
    read_nifti_from(bytes, bytes.len() as u64, name.as_ref())
}

/// What a NIfTI-1 image declares about its voxels, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NiftiExtent {
    /// The voxel grid.
    pub shape: [usize; 3],
    /// Bytes per stored voxel.
    pub bytes_per_voxel: usize,
    /// Bytes of the uncompressed file up to the end of the voxel data (`vox_offset` + data).
    pub decoded_bytes: u64,
}

impl NiftiExtent {
    /// Number of voxels.
    pub fn voxels(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Read only the header of a NIfTI-1 image held in memory (gzip-compressed or not) and say how
/// large it is, so a caller can refuse it before [`read_nifti_bytes`] allocates anything.
/// Errors are those of [`read_nifti_bytes`] for a bad header (not NIfTI-1, not 3-D, bad
/// datatype or geometry).
pub fn nifti_extent(bytes: &[u8], name: impl AsRef<Path>) -> Result<NiftiExtent> {
    let path = name.as_ref();
    let compressed = bytes.len() >= 2 && bytes[..2] == [0x1f, 0x8b];
    let mut reader: Box<dyn Read + '_> =
        if compressed { Box::new(MultiGzDecoder::new(bytes)) } else { Box::new(bytes) };
    let mut raw_header = [0u8; HEADER_SIZE];
    read_exact(&mut reader, &mut raw_header, path, "header")?;
    let layout = validate(&parse_header(&raw_header, path)?, path)?;
    let voxels: u64 = layout.shape.iter().map(|&d| d as u64).product();
    Ok(NiftiExtent {
        shape: layout.shape,
        bytes_per_voxel: layout.datatype.size(),
        decoded_bytes: layout.vox_offset.saturating_add(voxels.saturating_mul(layout.datatype.size() as u64)),
    })
}

/// `file_len` is the stored (possibly compressed) size, used to reject impossible headers early.
fn read_nifti_from(mut buffered: impl BufRead, file_len: u64, path: &Path) -> Result<Volume> {
    let compressed = {
        let peek = buffered.fill_buf().map_err(|e| IoError::os(path, e))?;
        peek.len() >= 2 && peek[..2] == [0x1f, 0x8b]
    };
    let mut reader: Box<dyn Read + '_> =
        if compressed { Box::new(MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };

    let mut raw_header = [0u8; HEADER_SIZE];
    read_exact(&mut reader, &mut raw_header, path, "header")?;
    let header = parse_header(&raw_header, path)?;
    let layout = validate(&header, path)?;

    // Bound the claimed size by what the file can hold before allocating anything.
    let n_vox = layout.shape.iter().product::<usize>();
    let data_bytes = (n_vox as u64).saturating_mul(layout.datatype.size() as u64);
    let needed = layout.vox_offset.saturating_add(data_bytes);
    let available = if compressed { file_len.saturating_mul(MAX_DEFLATE_RATIO) } else { file_len };
    if needed > available {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            what: format!(
                "header promises {needed} bytes ({:?} voxels of {}) but the file {} only {available}",
                layout.shape,
                layout.datatype.name(),
                if compressed { "can hold at most" } else { "holds" }
            ),
        });
    }

    // Skip extensions up to the voxel data.
    let skip = layout.vox_offset - HEADER_SIZE as u64;
    let skipped = std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
        .map_err(|e| data_error(path, e))?;
    if skipped != skip {
        return Err(IoError::Truncated { path: path.to_path_buf(), what: "header extensions".into() });
    }

    let scaling = scaling(&header, path)?;
    let values = decode(&mut reader, n_vox, layout.datatype, layout.big_endian, scaling, path)?;
    let data = Array3::from_shape_vec(layout.shape.f(), values).map_err(|e| IoError::BadHeader {
        path: path.to_path_buf(),
        reason: format!("shape {:?}: {e}", layout.shape),
    })?;
    Ok(Volume {
        data,
        affine: layout.affine,
        source: Source {
            path: path.to_path_buf(),
            format: SourceFormat::Nifti { datatype: layout.datatype.name(), compressed },
        },
    })
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            IoError::Truncated { path: path.to_path_buf(), what: what.into() }
        }
        _ => data_error(path, e),
    })
}

fn data_error(path: &Path, e: std::io::Error) -> IoError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            IoError::Truncated { path: path.to_path_buf(), what: "voxel data".into() }
        }
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
            IoError::NotNifti { path: path.to_path_buf(), reason: format!("corrupt gzip stream: {e}") }
        }
        _ => IoError::os(path, e),
    }
}

pub(crate) fn parse_header(raw: &[u8; HEADER_SIZE], path: &Path) -> Result<NiftiHeader> {
    let size_le = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let size_be = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if size_le == NIFTI2_HEADER_SIZE || size_be == NIFTI2_HEADER_SIZE {
        return Err(IoError::NotNifti {
            path: path.to_path_buf(),
            reason: "NIfTI-2 files are not supported; convert to NIfTI-1".into(),
        });
    }
    if size_le != HEADER_SIZE as i32 && size_be != HEADER_SIZE as i32 {
        return Err(IoError::NotNifti {
            path: path.to_path_buf(),
            reason: format!("sizeof_hdr is {size_le}, expected 348 (wrong magic)"),
        });
    }
    let header = NiftiHeader::from_reader(&raw[..]).map_err(|e| IoError::NotNifti {
        path: path.to_path_buf(),
        reason: format!("header could not be parsed: {e}"),
    })?;
    if &header.magic != b"n+1\0" {
        let reason = if &header.magic == b"ni1\0" {
            "magic is \"ni1\" (a .hdr/.img pair header); only single-file .nii is read".to_string()
        } else {
            format!("bad magic {:?}, expected \"n+1\"", String::from_utf8_lossy(&header.magic))
        };
        return Err(IoError::NotNifti { path: path.to_path_buf(), reason });
    }
    Ok(header)
}

/// Check the fields that decide how the data are laid out, apply nibabel's header fixes, and
/// compute the affine.
pub(crate) fn validate(h: &NiftiHeader, path: &Path) -> Result<Layout> {
    let bad = |reason: String| IoError::BadHeader { path: path.to_path_buf(), reason };
    let ndim = h.dim[0];
    if ndim == 0 || ndim > 7 {
        return Err(bad(format!("dim[0] = {ndim} is not a dimensionality in 1..=7")));
    }
    // NIfTI stores dims as signed 16-bit integers.
    let dims: Vec<i64> = h.dim[1..=ndim as usize].iter().map(|&d| i64::from(d as i16)).collect();
    if let Some(d) = dims.iter().find(|&&d| d <= 0) {
        return Err(bad(format!("dimension {d} in dim = {dims:?} is not positive")));
    }
    if dims.len() < 3 || dims[3..].iter().any(|&d| d != 1) {
        return Err(IoError::NotThreeD { path: path.to_path_buf(), dims });
    }
    let shape = [dims[0] as usize, dims[1] as usize, dims[2] as usize];

    let datatype = Datatype::from_code(h.datatype).map_err(|name| IoError::UnsupportedDatatype {
        path: path.to_path_buf(),
        code: h.datatype,
        name,
    })?;

    if !h.vox_offset.is_finite() || h.vox_offset < (HEADER_SIZE + 4) as f32 {
        return Err(bad(format!("vox_offset = {} is below 352 for a single-file .nii", h.vox_offset)));
    }
    if h.vox_offset > (1u64 << 31) as f32 {
        return Err(bad(format!("vox_offset = {} is implausibly large", h.vox_offset)));
    }
    let vox_offset = h.vox_offset as u64;

    let affine = best_affine(h, shape, path)?;
    Ok(Layout { shape, datatype, big_endian: h.endianness == nifti::Endianness::Big, vox_offset, affine })
}

/// nibabel's header fixes on load: spatial pixdims as absolute values with zeros set to 1, and
/// qfac (pixdim\[0\]) forced to 1 unless it is −1.
fn fixed_pixdims(h: &NiftiHeader) -> (f64, [f64; 3]) {
    let qfac = if h.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
    let mut zooms = [0.0; 3];
    for (z, &p) in zooms.iter_mut().zip(&h.pixdim[1..4]) {
        let p = f64::from(p).abs();
        *z = if p == 0.0 { 1.0 } else { p };
    }
    (qfac, zooms)
}

/// nibabel resets xform codes outside 0..=4 to 0 on load.
fn xform_code(code: i16) -> i16 {
    if (0..=4).contains(&code) { code } else { 0 }
}

/// nibabel's `get_best_affine`.
fn best_affine(h: &NiftiHeader, shape: [usize; 3], path: &Path) -> Result<Affine> {
    let (qfac, zooms) = fixed_pixdims(h);
    let affine = if xform_code(h.sform_code) != 0 {
        let mut a = orientation::IDENTITY;
        for (row, srow) in a.iter_mut().zip([h.srow_x, h.srow_y, h.srow_z]) {
            for (v, s) in row.iter_mut().zip(srow) {
                *v = f64::from(s);
            }
        }
        a
    } else if xform_code(h.qform_code) != 0 {
        let bcd = [f64::from(h.quatern_b), f64::from(h.quatern_c), f64::from(h.quatern_d)];
        let w2 = 1.0 - bcd.iter().map(|v| v * v).sum::<f64>();
        let w = if w2.abs() < 3.0 * f64::from(f32::EPSILON) {
            0.0
        } else if w2 < 0.0 {
            return Err(IoError::BadGeometry {
                path: path.to_path_buf(),
                reason: format!("qform quaternion (b, c, d) = {bcd:?} has norm above 1"),
            });
        } else {
            w2.sqrt()
        };
        let r = orientation::quat2mat([w, bcd[0], bcd[1], bcd[2]]);
        let scale = Matrix3::from_diagonal(&nalgebra::Vector3::new(zooms[0], zooms[1], zooms[2] * qfac));
        let m = r * scale;
        let mut a = orientation::IDENTITY;
        for (rr, row) in a.iter_mut().take(3).enumerate() {
            for (c, v) in row.iter_mut().take(3).enumerate() {
                *v = m[(rr, c)];
            }
        }
        a[0][3] = f64::from(h.quatern_x);
        a[1][3] = f64::from(h.quatern_y);
        a[2][3] = f64::from(h.quatern_z);
        a
    } else {
        let mut a = orientation::IDENTITY;
        let signed = [-zooms[0], zooms[1], zooms[2]];
        for i in 0..3 {
            a[i][i] = signed[i];
            a[i][3] = -((shape[i] as f64 - 1.0) / 2.0) * signed[i];
        }
        a
    };
    if !orientation::is_finite(&affine) {
        return Err(IoError::BadGeometry {
            path: path.to_path_buf(),
            reason: format!("affine has non-finite entries: {affine:?}"),
        });
    }
    Ok(affine)
}

/// nibabel's `get_slope_inter` and the arithmetic its array proxy then uses.
fn scaling(h: &NiftiHeader, path: &Path) -> Result<Scaling> {
    let (slope, inter) = (h.scl_slope, h.scl_inter);
    if slope == 0.0 || !slope.is_finite() {
        return Ok(Scaling::None);
    }
    if !inter.is_finite() {
        return Err(IoError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("valid scl_slope {slope} but invalid scl_inter {inter}"),
        });
    }
    if slope == 1.0 && inter == 0.0 {
        return Ok(Scaling::None);
    }
    Ok(Scaling::F64 { slope: f64::from(slope), inter: f64::from(inter) })
}

fn decode(
    reader: &mut impl Read,
    n_vox: usize,
    dt: Datatype,
    big_endian: bool,
    scaling: Scaling,
    path: &Path,
) -> Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::new();
    out.try_reserve_exact(n_vox).map_err(|_| IoError::BadHeader {
        path: path.to_path_buf(),
        reason: format!("cannot allocate {n_vox} voxels"),
    })?;
    let size = dt.size();
    let mut buf = vec![0u8; CHUNK - CHUNK % size];
    let mut remaining = n_vox * size;
    while remaining > 0 {
        let take = remaining.min(buf.len());
        read_exact(reader, &mut buf[..take], path, "voxel data")?;
        convert_chunk(&buf[..take], dt, big_endian, scaling, &mut out);
        remaining -= take;
    }
    Ok(out)
}

macro_rules! element_reader {
    ($t:ty, $bytes:expr, $big:expr) => {{
        let mut a = [0u8; std::mem::size_of::<$t>()];
        a.copy_from_slice($bytes);
        if $big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }
    }};
}

fn convert_chunk(bytes: &[u8], dt: Datatype, big: bool, scaling: Scaling, out: &mut Vec<f32>) {
    // Each raw value is brought to f64: exact for all types but 64-bit integers, which round to
    // nearest like numpy.
    let to_f64: fn(&[u8], bool) -> f64 = match dt {
        Datatype::U8 => |b, _| f64::from(b[0]),
        Datatype::I8 => |b, _| f64::from(b[0] as i8),
        Datatype::I16 => |b, big| f64::from(element_reader!(i16, b, big)),
        Datatype::U16 => |b, big| f64::from(element_reader!(u16, b, big)),
        Datatype::I32 => |b, big| f64::from(element_reader!(i32, b, big)),
        Datatype::U32 => |b, big| f64::from(element_reader!(u32, b, big)),
        Datatype::I64 => |b, big| element_reader!(i64, b, big) as f64,
        Datatype::U64 => |b, big| element_reader!(u64, b, big) as f64,
        Datatype::F32 => |b, big| f64::from(element_reader!(f32, b, big)),
        Datatype::F64 => |b, big| element_reader!(f64, b, big),
    };
    let chunks = bytes.chunks_exact(dt.size());
    match scaling {
        Scaling::None => out.extend(chunks.map(|b| to_f64(b, big) as f32)),
        Scaling::F64 { slope, inter } => out.extend(chunks.map(|b| {
            let mut v = to_f64(b, big);
            if slope != 1.0 {
                v *= slope;
            }
            if inter != 0.0 {
                v += inter;
            }
            v as f32
        })),
    }
}
