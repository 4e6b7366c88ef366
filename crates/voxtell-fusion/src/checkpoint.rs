//! Reading model weights: nnU-Net's `checkpoint_final.pth` (a pickled dict whose
//! `network_weights` entry is the state dict) or a `model.safetensors`, with the canonical keys
//! only (the `decoder.encoder.*` and `*.all_modules.*` aliases of the official state dict are
//! skipped, and never read).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::pickle::PthTensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};

use crate::error::{FusionError, Result};

/// Whether a state-dict key is an alias of another key in VoxTell's state dict.
pub fn is_alias(key: &str) -> bool {
    key.starts_with("decoder.encoder.") || key.contains(".all_modules.")
}

enum Store {
    Pth(PthTensors),
    Tensors(HashMap<String, Tensor>),
}

struct Inner {
    path: PathBuf,
    store: Store,
    shapes: HashMap<String, Vec<usize>>,
}

/// The weights of a model file, by canonical key.
#[derive(Clone)]
pub struct Checkpoint(Arc<Inner>);

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.0.path)
            .field("tensors", &self.0.shapes.len())
            .finish()
    }
}

impl Checkpoint {
    /// Open a `.pth` nnU-Net checkpoint (weights under `network_weights`) or a `.safetensors`
    /// file. Tensors of a `.pth` are read one at a time when the model asks for them.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file_err = |reason: String| FusionError::File { path: path.to_path_buf(), reason };
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| file_err(e.to_string()))?;
            f.read_exact(&mut magic).map_err(|e| file_err(format!("too short to be a model file: {e}")))?;
        }
        let store = if magic == *b"PK\x03\x04" {
            // A PyTorch zip archive. Models come from the internet: check the pickle's opcode
            // stream first, and do not let the reader take the process down on what slips past.
            crate::pickle_guard::check_archive(path)
                .map_err(|e| file_err(format!("refused checkpoint: {e}")))?;
            let p = path.to_path_buf();
            let pth = std::panic::catch_unwind(move || PthTensors::new(&p, Some("network_weights")))
                .map_err(|_| file_err("malformed PyTorch checkpoint (the pickle reader failed)".into()))?
                .map_err(|e| file_err(format!("not an nnU-Net checkpoint with `network_weights`: {e}")))?;
            Store::Pth(pth)
        } else {
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| file_err(format!("neither a PyTorch checkpoint nor safetensors: {e}")))?;
            Store::Tensors(tensors.into_iter().filter(|(k, _)| !is_alias(k)).collect())
        };
        let shapes: HashMap<String, Vec<usize>> = match &store {
            Store::Pth(p) => p
                .tensor_infos()
                .iter()
                .filter(|(k, _)| !is_alias(k))
                .map(|(k, info)| (k.clone(), info.layout.dims().to_vec()))
                .collect(),
            Store::Tensors(t) => t.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect(),
        };
        if shapes.is_empty() {
            return Err(file_err("holds no weights".into()));
        }
        Ok(Checkpoint(Arc::new(Inner { path: path.to_path_buf(), store, shapes })))
    }

    /// Build from tensors in memory (for models created in code), keyed canonically.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        let tensors: HashMap<String, Tensor> = tensors.into_iter().filter(|(k, _)| !is_alias(k)).collect();
        let shapes = tensors.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        Checkpoint(Arc::new(Inner {
            path: PathBuf::from("<memory>"),
            store: Store::Tensors(tensors),
            shapes,
        }))
    }

    /// The file the weights come from.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Shape of a canonical key, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.0.shapes.get(key).map(|v| v.as_slice())
    }

    /// Shape of a key that must be present, as an error naming the file and key otherwise.
    pub fn require(&self, key: &str) -> Result<&[usize]> {
        self.shape(key)
            .ok_or_else(|| FusionError::MissingKey { path: self.0.path.clone(), key: key.to_string() })
    }

    /// Canonical keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.0.shapes.keys().map(|s| s.as_str()).collect();
        k.sort_unstable();
        k
    }

    /// Load one tensor by canonical key.
    pub fn tensor(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.require(key)?;
        let t = match &self.0.store {
            Store::Pth(p) => p
                .get(key)?
                .ok_or_else(|| FusionError::MissingKey { path: self.0.path.clone(), key: key.to_string() })?,
            Store::Tensors(t) => t[key].clone(),
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// Write every canonical tensor (no aliases) to a safetensors file, atomically (through
    /// [`voxtell_io::atomic`]), replacing an existing file.
    pub fn save_safetensors(&self, out: impl AsRef<Path>) -> Result<()> {
        self.write_safetensors(out.as_ref(), true)
    }

    /// [`Checkpoint::save_safetensors`], replacing an existing file only with `overwrite`.
    pub(crate) fn write_safetensors(&self, out: &Path, overwrite: bool) -> Result<()> {
        let mut tensors = HashMap::new();
        for key in self.keys() {
            let dtype = match &self.0.store {
                Store::Pth(p) => p.tensor_infos()[key].dtype,
                Store::Tensors(t) => t[key].dtype(),
            };
            tensors.insert(key.to_string(), self.tensor(key, dtype, &Device::Cpu)?);
        }
        write_tensors(&tensors, out, overwrite)
    }

    /// A `VarBuilder` over these weights: every request is checked against the file's shape,
    /// and errors name the file, the key and both shapes.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

/// Write `tensors` to a safetensors file through the atomic writer ([`voxtell_io::atomic`]),
/// replacing an existing file only with `overwrite`: for model weights and any other tensor
/// state (e.g. an optimiser's) saved whole.
pub fn write_tensors(tensors: &HashMap<String, Tensor>, out: &Path, overwrite: bool) -> Result<()> {
    voxtell_io::atomic::write_atomic(out, overwrite, |tmp| {
        // The safetensors writer replaces `tmp` by a file of its own, private to the user;
        // give the result the permissions an ordinary new file gets.
        let permissions = std::fs::metadata(tmp)?.permissions();
        candle_core::safetensors::save(tensors, tmp).map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::set_permissions(tmp, permissions)
    })?;
    Ok(())
}

impl SimpleBackend for Checkpoint {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let path = self.0.path.display();
        let Some(found) = self.shape(name) else {
            candle_core::bail!("{path}: missing weight {name} (expected shape {:?})", s.dims())
        };
        if found != s.dims() {
            candle_core::bail!("{path}: weight {name} has shape {found:?}, expected {:?}", s.dims())
        }
        self.tensor(name, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
}
