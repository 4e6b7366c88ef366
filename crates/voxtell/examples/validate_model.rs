//! Compare the Rust VoxTell network with the official one on a saved patch.
//!
//! ```text
//! cargo run --release -p voxtell --example validate_model -- MODEL_DIR FILE.safetensors
//! ```
//!
//! `MODEL_DIR` is a VoxTell model folder (`plans.json`, `fold_0/checkpoint_final.pth`, e.g. the
//! published `voxtell_v1.1`); `FILE.safetensors` is written by `tools/validate_published.py` from
//! the official network: `patch` (1, 1, D, H, W), `text` (1, N, text_dim) and the official
//! `logits` (1, N, D, H, W), all f32, with the prompts as a JSON list in the metadata key
//! `prompts`. The Rust model runs on the same patch and embeddings in f32 on the CPU, and for
//! each prompt the example prints max |Δlogit|, max |official logit|, the Dice between the
//! `logits > 0` masks and the voxel agreement. It exits non-zero when any prompt has
//! Dice < 0.999 or max |Δlogit| > 1e-3 · max |official logit|. See docs/validation.md.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use voxtell::candle::{DType, Device, Tensor};
use voxtell::fusion::VoxTellModel;

/// Lowest acceptable Dice between the Rust and the official `logits > 0` masks.
const MIN_DICE: f64 = 0.999;
/// Largest acceptable max |Δlogit|, relative to the prompt's max |official logit|.
const MAX_REL_DIFF: f64 = 1e-3;
/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Run the comparison; `Ok(false)` when a prompt fails the tolerances.
fn run() -> Res<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, file] = args.as_slice() else {
        return Err("usage: validate_model MODEL_DIR FILE.safetensors".into());
    };

    let t = Instant::now();
    let model = VoxTellModel::from_dir(model_dir, DType::F32, &Device::Cpu)
        .map_err(|e| format!("loading the model from {model_dir}: {e}"))?;
    println!("loaded {model_dir} in {:.1} s", t.elapsed().as_secs_f64());

    let mut tensors =
        voxtell::candle::safetensors::load(file, &Device::Cpu).map_err(|e| format!("reading {file}: {e}"))?;
    let mut take = |name: &str| -> Res<Tensor> {
        let t = tensors.remove(name).ok_or_else(|| format!("{file} has no tensor `{name}`"))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let patch = take("patch")?;
    let text = take("text")?;
    let official = take("logits")?;

    let (b, c, d, h, w) = patch
        .dims5()
        .map_err(|_| format!("`patch` has shape {:?}, expected (B, 1, D, H, W)", patch.dims()))?;
    let (tb, n, _) =
        text.dims3().map_err(|_| format!("`text` has shape {:?}, expected (B, N, text_dim)", text.dims()))?;
    if c != 1 || tb != b {
        return Err(format!("`patch` {:?} and `text` {:?} do not match", patch.dims(), text.dims()).into());
    }
    if official.dims() != [b, n, d, h, w] {
        return Err(format!(
            "`logits` has shape {:?}, expected {:?} from `patch` and `text`",
            official.dims(),
            [b, n, d, h, w]
        )
        .into());
    }
    let prompts = prompt_names(Path::new(file), n)?;
    println!("patch {:?}, text {:?}, {n} prompt(s)", patch.dims(), text.dims());

    let t = Instant::now();
    let out = model.forward(&patch, &text)?;
    println!("Rust forward in {:.1} s", t.elapsed().as_secs_f64());
    let ours = out.outputs.first().ok_or("the model returned no outputs")?.to_dtype(DType::F32)?;
    if ours.dims() != official.dims() {
        return Err(
            format!("Rust logits have shape {:?}, official {:?}", ours.dims(), official.dims()).into()
        );
    }

    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>10} {:>12} {:>12}  result",
        "prompt", "max|Δlogit|", "max|logit|", "rel", "Dice", "agreement %", "positive %"
    );
    let mut all_ok = true;
    for (i, name) in prompts.iter().enumerate() {
        let a: Vec<f32> = ours.narrow(1, i, 1)?.flatten_all()?.to_vec1()?;
        let o: Vec<f32> = official.narrow(1, i, 1)?.flatten_all()?.to_vec1()?;
        let s = compare(&a, &o);
        let rel = if s.max_abs > 0.0 { s.max_diff / s.max_abs } else { s.max_diff };
        let ok = s.dice >= MIN_DICE && s.max_diff <= MAX_REL_DIFF * s.max_abs && s.finite;
        all_ok &= ok;
        println!(
            "{:<28} {:>12.3e} {:>12.4} {:>10.2e} {:>10.6} {:>12.5} {:>12.4}  {}{}",
            truncate(name, 28),
            s.max_diff,
            s.max_abs,
            rel,
            s.dice,
            s.agreement * 100.0,
            s.official_positive * 100.0,
            if ok { "ok" } else { "FAIL" },
            if s.finite { "" } else { " (non-finite logits)" }
        );
    }
    println!(
        "tolerances: Dice ≥ {MIN_DICE}, max|Δlogit| ≤ {MAX_REL_DIFF:e} · max|official logit| — {}",
        if all_ok { "all prompts pass" } else { "FAILED" }
    );
    Ok(all_ok)
}

/// Per-prompt comparison of Rust logits `a` with official logits `o`.
struct Stats {
    /// max |a − o|.
    max_diff: f64,
    /// max |o|.
    max_abs: f64,
    /// Dice of the masks `a > 0` and `o > 0` (1 when both are empty).
    dice: f64,
    /// Fraction of voxels where the two masks agree.
    agreement: f64,
    /// Fraction of voxels with `o > 0`.
    official_positive: f64,
    /// Whether every logit of both is finite.
    finite: bool,
}

/// Compare two equally long logit vectors.
fn compare(a: &[f32], o: &[f32]) -> Stats {
    let (mut max_diff, mut max_abs) = (0f64, 0f64);
    let (mut both, mut pa, mut po, mut agree) = (0u64, 0u64, 0u64, 0u64);
    let mut finite = true;
    for (&x, &y) in a.iter().zip(o) {
        let (x, y) = (f64::from(x), f64::from(y));
        finite &= x.is_finite() && y.is_finite();
        max_diff = max_diff.max((x - y).abs());
        max_abs = max_abs.max(y.abs());
        let (mx, my) = (x > 0.0, y > 0.0);
        both += u64::from(mx && my);
        pa += u64::from(mx);
        po += u64::from(my);
        agree += u64::from(mx == my);
    }
    let len = a.len().max(1) as f64;
    let dice = if pa + po == 0 { 1.0 } else { 2.0 * both as f64 / (pa + po) as f64 };
    Stats {
        max_diff,
        max_abs,
        dice,
        agreement: agree as f64 / len,
        official_positive: po as f64 / len,
        finite,
    }
}

/// `s` cut to at most `n` characters.
fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).chain(['…']).collect() }
}

/// The prompt names stored by `validate_published.py` in the safetensors metadata (`prompts`, a
/// JSON list of strings); `prompt 0`, `prompt 1`, … when the file has none.
fn prompt_names(path: &Path, n: usize) -> Res<Vec<String>> {
    let header = read_header(path)?;
    let header: serde_json::Value = serde_json::from_str(&header)
        .map_err(|e| format!("{}: invalid safetensors header: {e}", path.display()))?;
    let Some(stored) = header.get("__metadata__").and_then(|m| m.get("prompts")) else {
        println!("note: {} has no `prompts` metadata; numbering the prompts", path.display());
        return Ok((0..n).map(|i| format!("prompt {i}")).collect());
    };
    let list =
        stored.as_str().ok_or_else(|| format!("{}: metadata `prompts` is not a string", path.display()))?;
    let names: Vec<String> = serde_json::from_str(list)
        .map_err(|e| format!("{}: metadata `prompts` is not a JSON list of strings: {e}", path.display()))?;
    if names.len() != n {
        return Err(format!(
            "{}: metadata names {} prompt(s) but `text` has {n}",
            path.display(),
            names.len()
        )
        .into());
    }
    Ok(names)
}

/// The JSON header of a safetensors file: an 8-byte little-endian length, then that many bytes.
fn read_header(path: &Path) -> Res<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| format!("{}: no safetensors header: {e}", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(format!("{}: safetensors header of {len} bytes is too large", path.display()).into());
    }
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(format!("{}: truncated safetensors header", path.display()).into());
    }
    Ok(String::from_utf8(buf).map_err(|e| format!("{}: header is not UTF-8: {e}", path.display()))?)
}
