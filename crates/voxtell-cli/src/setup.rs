//! What `voxtell predict` and `voxtell serve` set up the same way: the device, the embedding
//! bank, the prompt vectors and the model folder, and the flag values they parse (sizes, the
//! text model's dtype).

use std::path::PathBuf;

use anyhow::Context;
use voxtell::candle::{DType, Device};
use voxtell::fusion::{ModelDir, resolve_bank, resolve_model_dir};
use voxtell::text::{EmbeddingBank, PromptVectors};

use crate::report::Log;

/// The text model's dtype from `--text-dtype` (clap admits only f32, bf16 and f16).
pub fn text_dtype(name: &str) -> DType {
    match name {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    }
}

/// Parse a size like `8G`, `512M`, `1.5GiB` or a plain number of bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 8G, 512M)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

/// The prompt source (the bank, and the text model `--text-model` or the environment names)
/// and the model folder (`-m`, `$VOXTELL_MODEL` or the Hugging Face cache), opened.
pub(crate) fn locate(
    bank: EmbeddingBank,
    text_model: Option<&std::path::Path>,
    dtype: &str,
    device: &Device,
    model: Option<&std::path::Path>,
) -> anyhow::Result<(PromptVectors, PathBuf, ModelDir)> {
    let vectors = PromptVectors::located(bank, text_model, text_dtype(dtype), device);
    let model_dir = resolve_model_dir(model)?;
    let folder = ModelDir::open(&model_dir)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    Ok((vectors, model_dir, folder))
}

/// The bank: --embeddings, $VOXTELL_EMBEDDINGS, the Hugging Face cache; empty with
/// --no-precomputed or when none is found.
pub(crate) fn load_bank(
    no_precomputed: bool,
    embeddings: Option<&std::path::Path>,
    log: &Log,
) -> anyhow::Result<EmbeddingBank> {
    if no_precomputed {
        return Ok(EmbeddingBank::default());
    }
    match resolve_bank(embeddings) {
        Some(p) => {
            let bank = EmbeddingBank::read(&p)?;
            log.verbose(format!("embedding bank: {} ({} prompts)", p.display(), bank.len()));
            Ok(bank)
        }
        None => {
            log.verbose("no embedding bank found; prompts need a text model".to_string());
            Ok(EmbeddingBank::default())
        }
    }
}

/// A device as `--device` names it: `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N` (`N` the GPU
/// index, which `--gpu N` can give instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceArg {
    /// The CPU.
    Cpu,
    /// A CUDA GPU, with the index given in the name, if any.
    Cuda(Option<usize>),
    /// A Metal GPU, with the index given in the name, if any.
    Metal(Option<usize>),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((kind, index)) => (kind, Some(index)),
            None => (s, None),
        };
        let index = index
            .map(|i| {
                i.parse::<usize>().map_err(|_| {
                    format!("{s:?}: the GPU index after ':' must be a whole number, as in cuda:1")
                })
            })
            .transpose()?;
        match (kind, index) {
            ("cpu", None) => Ok(DeviceArg::Cpu),
            ("cpu", Some(_)) => Err(format!("{s:?}: the CPU takes no index")),
            ("cuda", i) => Ok(DeviceArg::Cuda(i)),
            ("metal", i) => Ok(DeviceArg::Metal(i)),
            _ => Err(format!("unknown device {s:?}: cpu, cuda, cuda:N, metal or metal:N")),
        }
    }
}

/// The GPU index of `--device` and `--gpu`: either may give it (0 when neither does); both
/// giving different ones, or `--gpu` with the CPU, is an error.
pub(crate) fn gpu_index(choice: Option<DeviceArg>, gpu: Option<usize>) -> anyhow::Result<usize> {
    let named = match choice {
        Some(DeviceArg::Cpu) => {
            if let Some(g) = gpu {
                anyhow::bail!("--gpu {g} conflicts with --device cpu: give one of them");
            }
            None
        }
        Some(DeviceArg::Cuda(i) | DeviceArg::Metal(i)) => i,
        None => None,
    };
    match (named, gpu) {
        (Some(n), Some(g)) if n != g => {
            anyhow::bail!("--device names GPU {n} and --gpu names GPU {g}: give the index once")
        }
        (n, g) => Ok(n.or(g).unwrap_or(0)),
    }
}

/// The device asked for, with the GPU `index` that [`gpu_index`] settled; a GPU that is not
/// there falls back to the CPU with a warning, as the official tool does. Without `--device`, a
/// GPU when the binary was built with one and one is present, else the CPU.
pub(crate) fn pick_device(choice: Option<DeviceArg>, index: usize, log: &Log) -> Device {
    let cuda = || Device::new_cuda(index);
    let metal = || Device::new_metal(index);
    match choice {
        Some(DeviceArg::Cpu) => Device::Cpu,
        Some(DeviceArg::Cuda(_)) => cuda().unwrap_or_else(|e| {
            log.info(format!("warning: CUDA device {index} unavailable ({e}); using the CPU"));
            Device::Cpu
        }),
        Some(DeviceArg::Metal(_)) => metal().unwrap_or_else(|e| {
            log.info(format!("warning: Metal device {index} unavailable ({e}); using the CPU"));
            Device::Cpu
        }),
        None if voxtell::candle::utils::cuda_is_available() => cuda().unwrap_or(Device::Cpu),
        None if voxtell::candle::utils::metal_is_available() => metal().unwrap_or(Device::Cpu),
        None => Device::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("3X").is_err());
    }

    #[test]
    fn devices_parse_with_an_optional_index() {
        let parse = |s: &str| s.parse::<DeviceArg>();
        assert_eq!(parse("cpu"), Ok(DeviceArg::Cpu));
        assert_eq!(parse("cuda"), Ok(DeviceArg::Cuda(None)));
        assert_eq!(parse("cuda:1"), Ok(DeviceArg::Cuda(Some(1))));
        assert_eq!(parse("metal:0"), Ok(DeviceArg::Metal(Some(0))));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "CUDA", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("cuda:x").unwrap_err().contains("cuda:1"));
    }

    #[test]
    fn the_gpu_index_is_given_once() {
        let cuda = |i| Some(DeviceArg::Cuda(i));
        assert_eq!(gpu_index(None, None).unwrap(), 0);
        assert_eq!(gpu_index(cuda(None), Some(2)).unwrap(), 2);
        assert_eq!(gpu_index(cuda(Some(1)), None).unwrap(), 1);
        assert_eq!(gpu_index(cuda(Some(1)), Some(1)).unwrap(), 1);
        let err = gpu_index(cuda(Some(1)), Some(2)).unwrap_err().to_string();
        assert!(err.contains("GPU 1") && err.contains("GPU 2"), "{err}");
        assert!(gpu_index(Some(DeviceArg::Cpu), Some(1)).is_err());
        assert_eq!(gpu_index(Some(DeviceArg::Cpu), None).unwrap(), 0);
    }
}
