//! The embedded demo: a small VoxTell trained by `voxtell-train` on synthetic torso phantoms ([`crate::phantom`]),
//! with its prompt bank, so that the whole system runs offline on a fresh clone.
//!
//! The folder [`demo_dir`] (`assets/demo/` in the repository) holds `model/` (a model folder
//! that `voxtell predict -m` loads), `bank.npz` (all-MiniLM-L6-v2 vectors of every training
//! prompt and of held-out paraphrases) and `phantom.json` (the generator settings of the
//! training data). Held-out phantoms are regenerated from those settings with case indices the
//! training set never used ([`HELD_OUT_START`] on), so nothing but the model and the bank is
//! stored. The generator's defaults ([`PhantomOptions::default`]) are the training settings
//! apart from `cases` and `seed`, so any phantom `voxtell phantom` makes with its default settings
//! is in the model's range; [`held_out`] regenerates held-out cases of any settings, for
//! measuring the model outside it too. The demo knows phantoms only: real scans need the
//! published VoxTell weights.
//!
//! ```no_run
//! # fn main() -> Result<(), voxtell::demo::DemoError> {
//! use voxtell::demo::{Demo, demo_dir};
//! let mut demo = Demo::load(demo_dir())?;
//! let case = demo.held_out_case(0);
//! let scores = demo.score(&case, &[("left kidney", "kidney_left"), ("spinal column bones", "vertebrae")])?;
//! for s in &scores {
//!     println!("{:<20} Dice {:.3}", s.prompt, s.dice);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ndarray::{Array3, ArrayView3, Zip};
use voxtell_infer::{Masks, PredictOptions, Predictor};
use voxtell_io::Volume;
use voxtell_phantom::{self as phantom, PhantomCase, PhantomOptions};
use voxtell_text::{EmbeddingBank, PromptVectors};

/// First case index of the held-out phantoms (training data uses `0..cases`).
pub const HELD_OUT_START: usize = 1000;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A demo file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A prompt's vocabulary key names no phantom label.
    #[error("vocabulary key {0:?} names no phantom label")]
    UnknownKey(String),
    /// Prediction failed.
    #[error(transparent)]
    Infer(#[from] voxtell_infer::InferError),
    /// Reading or reorienting failed.
    #[error(transparent)]
    Io(#[from] voxtell_io::IoError),
}

/// The root of this checkout (two levels above this crate's folder).
pub fn repository_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.ancestors().nth(2).unwrap_or(crate_dir).to_path_buf()
}

/// The demo folder of this checkout (`assets/demo/`).
pub fn demo_dir() -> PathBuf {
    repository_root().join("assets/demo")
}

/// Held-out phantom number `i` of the generator settings `options`: case index
/// [`HELD_OUT_START`]` + i`, which no training set of `0..cases` (up to 1000 cases) holds.
pub fn held_out(options: &PhantomOptions, i: usize) -> PhantomCase {
    phantom::generate_case(options, HELD_OUT_START + i)
}

/// How a prompt relates to the training vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptOrigin {
    /// The entry's default name.
    Default,
    /// A synonym used in training.
    Synonym,
    /// A paraphrase no training sample used.
    Paraphrase,
}

/// A prompt and the vocabulary key whose labels are its truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPrompt {
    /// The prompt text.
    pub text: String,
    /// The vocabulary key (`"kidney_left"`, `"liver+liver_lesion"`).
    pub key: String,
    /// Default name, synonym or held-out paraphrase.
    pub origin: PromptOrigin,
}

/// Every prompt the demo bank holds: each entry's default name and synonyms, then the held-out
/// paraphrases ([`phantom::paraphrases`]).
pub fn prompts() -> Vec<DemoPrompt> {
    let mut out = Vec::new();
    for (key, names) in phantom::vocabulary_entries() {
        for (i, text) in names.into_iter().enumerate() {
            let origin = if i == 0 { PromptOrigin::Default } else { PromptOrigin::Synonym };
            out.push(DemoPrompt { text, key: key.clone(), origin });
        }
    }
    for (key, text) in phantom::paraphrases() {
        out.push(DemoPrompt { text, key, origin: PromptOrigin::Paraphrase });
    }
    out
}

/// The truth of vocabulary `key` for `case`, in the (S, A, R) layout the predictor's masks use:
/// 1 where the case's label is one of the key's labels.
pub fn truth(case: &PhantomCase, key: &str) -> Result<Array3<u8>, DemoError> {
    truth_of(&ras_labels(case)?, key)
}

/// The case's label map reoriented to (S, A, R), as the predictor reads a scan.
fn ras_labels(case: &PhantomCase) -> Result<Array3<f32>, DemoError> {
    Ok(Volume::new(case.labels.mapv(f32::from), case.affine).to_ras()?.data)
}

/// [`truth`] from labels already in (S, A, R).
fn truth_of(labels: &Array3<f32>, key: &str) -> Result<Array3<u8>, DemoError> {
    let values = phantom::label_values(key).ok_or_else(|| DemoError::UnknownKey(key.to_string()))?;
    Ok(labels.mapv(|v| u8::from(values.iter().any(|&l| f32::from(l) == v))))
}

/// Dice of two binary masks of equal shape (1 when both are empty).
pub fn dice(a: ArrayView3<u8>, b: ArrayView3<u8>) -> f64 {
    let (mut inter, mut sum) = (0u64, 0u64);
    Zip::from(a).and(b).for_each(|&x, &y| {
        let (x, y) = (x != 0, y != 0);
        inter += u64::from(x && y);
        sum += u64::from(x) + u64::from(y);
    });
    if sum == 0 { 1.0 } else { 2.0 * inter as f64 / sum as f64 }
}

/// One prompt's result on one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The prompt.
    pub prompt: String,
    /// Its vocabulary key.
    pub key: String,
    /// Dice against the truth.
    pub dice: f64,
    /// Predicted voxels.
    pub predicted: u64,
    /// Truth voxels.
    pub truth: u64,
}

/// The demo model, its bank and the phantom settings.
pub struct Demo {
    /// Settings of the training phantoms (held-out cases use them with other indices).
    pub phantom: PhantomOptions,
    /// The predictor over the demo model and bank.
    pub predictor: Predictor,
}

impl Demo {
    /// Load `dir` (normally [`demo_dir`]): `model/`, `bank.npz`, `phantom.json`. The model runs
    /// on the CPU in f32.
    pub fn load(dir: impl AsRef<Path>) -> Result<Demo, DemoError> {
        let dir = dir.as_ref();
        let file_err =
            |path: PathBuf, e: &dyn std::fmt::Display| DemoError::File { path, reason: e.to_string() };
        let path = dir.join("phantom.json");
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(path.clone(), &e))?;
        let phantom: PhantomOptions = serde_json::from_str(&text).map_err(|e| file_err(path.clone(), &e))?;
        let path = dir.join("bank.npz");
        let bank = EmbeddingBank::read(&path).map_err(|e| file_err(path.clone(), &e))?;
        let vectors = PromptVectors::new(bank, None, DType::F32, &Device::Cpu);
        let predictor =
            Predictor::from_dir(dir.join("model"), vectors, PredictOptions::default(), &Device::Cpu)?;
        Ok(Demo { phantom, predictor })
    }

    /// Held-out phantom number `i` (case index [`HELD_OUT_START`]` + i` of the training
    /// settings).
    pub fn held_out_case(&self, i: usize) -> PhantomCase {
        held_out(&self.phantom, i)
    }

    /// Segment `case` with `prompts`.
    pub fn segment(&mut self, case: &PhantomCase, prompts: &[&str]) -> Result<Masks, DemoError> {
        let volume = Volume::new(case.image.clone(), case.affine);
        Ok(self.predictor.predict(&volume, prompts)?)
    }

    /// Segment `case` with each `(prompt, key)` and score the masks against the key's truth.
    pub fn score(&mut self, case: &PhantomCase, prompts: &[(&str, &str)]) -> Result<Vec<Score>, DemoError> {
        let texts: Vec<&str> = prompts.iter().map(|(p, _)| *p).collect();
        let masks = self.segment(case, &texts)?;
        self.score_masks(case, &masks, prompts)
    }

    /// Score masks already predicted for `case` (prompt `i` of `masks` is `prompts[i]`).
    pub fn score_masks(
        &self,
        case: &PhantomCase,
        masks: &Masks,
        prompts: &[(&str, &str)],
    ) -> Result<Vec<Score>, DemoError> {
        let labels = ras_labels(case)?;
        let mut out = Vec::with_capacity(prompts.len());
        for (i, (prompt, key)) in prompts.iter().enumerate() {
            let mask = masks.mask(i)?;
            let truth = truth_of(&labels, key)?;
            let count = |a: &Array3<u8>| a.iter().filter(|&&v| v != 0).count() as u64;
            out.push(Score {
                prompt: prompt.to_string(),
                key: key.to_string(),
                dice: dice(mask.view(), truth.view()),
                predicted: count(&mask),
                truth: count(&truth),
            });
        }
        Ok(out)
    }
}
