//! Embedding banks: `.npz` files with `labels` (numpy unicode strings) and `embeddings`
//! (float16, N × dim), as the official VoxTell bank. Keys are lowercased on load; lookups are
//! by exact lowercased prompt; vectors come back as f32.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use half::f16;

use crate::error::{Result, TextError};

/// Upper bound on an `.npy` header, to refuse absurd files early.
const MAX_NPY_HEADER: usize = 1 << 20;

/// A bank of prompt vectors, in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingBank {
    labels: Vec<String>,
    vectors: Vec<Vec<f16>>,
    index: HashMap<String, usize>,
    dim: usize,
}

impl EmbeddingBank {
    /// An empty bank of vectors of width `dim`.
    pub fn new(dim: usize) -> Self {
        EmbeddingBank { dim, ..Default::default() }
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the bank is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Labels in insertion order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The vector of a prompt (looked up lowercased), as f32.
    pub fn get(&self, prompt: &str) -> Option<Vec<f32>> {
        self.index.get(&prompt.to_lowercase()).map(|&i| self.vectors[i].iter().map(|v| v.to_f32()).collect())
    }

    /// Add or replace a prompt's vector (stored as f16, like the official cache).
    pub fn insert(&mut self, prompt: &str, vector: &[f32]) -> Result<()> {
        if self.dim == 0 && self.labels.is_empty() {
            self.dim = vector.len();
        }
        if vector.len() != self.dim {
            return Err(TextError::Bank {
                path: PathBuf::new(),
                reason: format!(
                    "vector for {prompt:?} has width {}, the bank holds {}-wide vectors",
                    vector.len(),
                    self.dim
                ),
            });
        }
        self.put(prompt, vector.iter().map(|&x| f16::from_f32(x)).collect());
        Ok(())
    }

    /// Store `v` under the lowercased `prompt`, replacing an earlier vector of the same key.
    fn put(&mut self, prompt: &str, v: Vec<f16>) {
        let key = prompt.to_lowercase();
        match self.index.get(&key) {
            Some(&i) => self.vectors[i] = v,
            None => {
                self.index.insert(key.clone(), self.labels.len());
                self.labels.push(key);
                self.vectors.push(v);
            }
        }
    }

    /// Read a bank `.npz` (members stored or deflated).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let err = |reason: String| TextError::Bank { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| err(format!("not an .npz (zip) archive: {e}")))?;
        let mut member = |name: &str| -> Result<Npy> {
            let mut f = zip.by_name(name).map_err(|_| err(format!("no `{name}` array")))?;
            if f.size() > 1 << 34 {
                return Err(err(format!("`{name}` is implausibly large ({} bytes)", f.size())));
            }
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map_err(|e| err(format!("`{name}`: {e}")))?;
            Npy::parse(&bytes).map_err(|e| err(format!("`{name}`: {e}")))
        };
        let labels = member("labels.npy")?;
        let embeddings = member("embeddings.npy")?;
        let labels = labels.strings().map_err(|e| err(format!("`labels`: {e}")))?;
        let (rows, dim, values) = embeddings.matrix_f16().map_err(|e| err(format!("`embeddings`: {e}")))?;
        if rows != labels.len() {
            return Err(err(format!("{} labels but {rows} embedding rows", labels.len())));
        }
        let mut bank = EmbeddingBank::new(dim);
        for (i, label) in labels.iter().enumerate() {
            bank.put(label, values[i * dim..(i + 1) * dim].to_vec());
        }
        Ok(bank)
    }

    /// Write the bank as an `.npz` the official loader reads (`labels` as `<U…`, `embeddings`
    /// as `<f2`), atomically through [`voxtell_io::atomic`] (an existing file is replaced).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let err = |reason: String| TextError::Bank { path: path.to_path_buf(), reason };
        let width = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(1);
        let mut labels = npy_header(&format!("<U{width}"), &[self.labels.len()]);
        for l in &self.labels {
            let mut n = 0;
            for ch in l.chars() {
                labels.extend_from_slice(&(ch as u32).to_le_bytes());
                n += 1;
            }
            labels.extend(std::iter::repeat_n(0u8, 4 * (width - n)));
        }
        let mut emb = npy_header("<f2", &[self.labels.len(), self.dim]);
        for v in &self.vectors {
            for x in v {
                emb.extend_from_slice(&x.to_le_bytes());
            }
        }
        let written = voxtell_io::atomic::write_atomic(path, true, |tmp| {
            let file = std::fs::OpenOptions::new().write(true).truncate(true).open(tmp)?;
            let mut zip = zip::ZipWriter::new(file);
            let opts =
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("labels.npy", opts).map_err(std::io::Error::other)?;
            zip.write_all(&labels)?;
            zip.start_file("embeddings.npy", opts).map_err(std::io::Error::other)?;
            zip.write_all(&emb)?;
            zip.finish().map_err(std::io::Error::other)?;
            Ok(())
        });
        written.map_err(|e| err(io_reason(e)))
    }
}

/// The message of an error of the atomic writer without the path it starts with (the bank
/// error names the path itself).
fn io_reason(e: voxtell_io::IoError) -> String {
    match e {
        voxtell_io::IoError::Os { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// An `.npy` header (version 1.0) for a C-ordered array, padded to a multiple of 64 bytes.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// A parsed `.npy` array: its dtype string, shape and raw little-endian data.
struct Npy {
    descr: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Npy {
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err("not an .npy array".into());
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => {
                (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
            }
            v => return Err(format!("unsupported .npy version {v}")),
        };
        if header_len > MAX_NPY_HEADER || start + header_len > bytes.len() {
            return Err("truncated or oversized header".into());
        }
        let header =
            std::str::from_utf8(&bytes[start..start + header_len]).map_err(|_| "header is not text")?;
        let field = |key: &str| -> std::result::Result<&str, String> {
            let at = header.find(&format!("'{key}'")).ok_or(format!("header has no '{key}'"))?;
            let rest =
                header[at + key.len() + 2..].trim_start().strip_prefix(':').ok_or("malformed header")?;
            Ok(rest.trim_start())
        };
        let descr_field = field("descr")?;
        let descr =
            descr_field.strip_prefix('\'').and_then(|r| r.split('\'').next()).ok_or("malformed descr")?;
        if field("fortran_order")?.starts_with("True") {
            return Err("Fortran-ordered arrays are not supported".into());
        }
        let shape_field = field("shape")?;
        let inner =
            shape_field.strip_prefix('(').and_then(|r| r.split(')').next()).ok_or("malformed shape")?;
        let shape = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension {s:?}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Npy { descr: descr.to_string(), shape, data: bytes[start + header_len..].to_vec() })
    }

    fn count(&self) -> std::result::Result<usize, String> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| "shape overflows".to_string())
    }

    /// A 1-D array of numpy unicode strings (`<U{n}`, UTF-32 LE, NUL-padded).
    fn strings(&self) -> std::result::Result<Vec<String>, String> {
        let width: usize = self
            .descr
            .strip_prefix("<U")
            .or_else(|| self.descr.strip_prefix("|U"))
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("dtype {} is not little-endian unicode (<U…)", self.descr))?;
        if self.shape.len() != 1 {
            return Err(format!("expected a 1-D array, shape {:?}", self.shape));
        }
        let n = self.count()?;
        if self.data.len() < n * width * 4 {
            return Err("data shorter than its shape".into());
        }
        (0..n)
            .map(|i| {
                self.data[i * width * 4..(i + 1) * width * 4]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .take_while(|&c| c != 0)
                    .map(|c| char::from_u32(c).ok_or_else(|| format!("invalid code point {c:#x}")))
                    .collect()
            })
            .collect()
    }

    /// A 2-D float matrix (`<f2` or `<f4`) as f16 values: (rows, cols, values).
    fn matrix_f16(&self) -> std::result::Result<(usize, usize, Vec<f16>), String> {
        let (rows, cols) = match self.shape[..] {
            [r, c] => (r, c),
            _ => return Err(format!("expected a 2-D array, shape {:?}", self.shape)),
        };
        let n = self.count()?;
        let values = match self.descr.as_str() {
            "<f2" => {
                if self.data.len() < n * 2 {
                    return Err("data shorter than its shape".into());
                }
                self.data[..n * 2].chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()
            }
            "<f4" => {
                if self.data.len() < n * 4 {
                    return Err("data shorter than its shape".into());
                }
                self.data[..n * 4]
                    .chunks_exact(4)
                    .map(|c| f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect()
            }
            other => return Err(format!("dtype {other} is not float16/float32")),
        };
        Ok((rows, cols, values))
    }
}
