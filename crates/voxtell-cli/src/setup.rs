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

/// The device asked for; a GPU that is not there falls back to the CPU with a warning, as the
/// official tool does.
pub(crate) fn pick_device(choice: Option<&str>, gpu: usize, log: &Log) -> anyhow::Result<Device> {
    let cuda = || Device::new_cuda(gpu);
    let metal = || Device::new_metal(gpu);
    Ok(match choice {
        Some("cpu") => Device::Cpu,
        Some("cuda") => cuda().unwrap_or_else(|e| {
            log.info(format!("warning: CUDA device {gpu} unavailable ({e}); using the CPU"));
            Device::Cpu
        }),
        Some("metal") => metal().unwrap_or_else(|e| {
            log.info(format!("warning: Metal device {gpu} unavailable ({e}); using the CPU"));
            Device::Cpu
        }),
        Some(other) => anyhow::bail!("unknown device {other:?}"),
        None if voxtell::candle::utils::cuda_is_available() => cuda().unwrap_or(Device::Cpu),
        None if voxtell::candle::utils::metal_is_available() => metal().unwrap_or(Device::Cpu),
        None => Device::Cpu,
    })
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
}
