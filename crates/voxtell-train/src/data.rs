//! Training datasets in the nnU-Net raw layout, the prompt vocabulary, and the preprocessing the
//! training data shares with inference.
//!
//! A dataset folder holds
//! - `dataset.json` with `labels: {name: value}` (integer values; nnU-Net's region lists are
//!   refused) and optionally `file_ending` (`.nii.gz` or `.nii`) and `channel_names` (one channel);
//! - `imagesTr/{case}_0000.nii.gz` (or `.nii`) — one image channel per case;
//! - `labelsTr/{case}.nii.gz` (or `.nii`) — the label map, same grid as the image.
//!
//! Images and labels are read through `voxtell-io` and reoriented to the (S, A, R) array layout
//! exactly as inference reads them (voxtell-spec §7.1).
//!
//! The vocabulary (a JSON file) maps each dataset's labels to prompts:
//!
//! ```json
//! {
//!   "Dataset003_Liver": {
//!     "liver": ["liver", "hepatic organ"],
//!     "liver+liver tumor": ["liver including tumors", "whole liver"],
//!     "_negatives": ["brain", "left lung"]
//!   }
//! }
//! ```
//!
//! Each key names one label of the dataset, or several joined with `+` (their union). The first
//! prompt of the list is the default name, the rest are synonyms. `_negatives` lists concepts
//! known to be absent from every image of the dataset (negative-only prompts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ndarray::{Array3, ArrayView3, s};
use serde_json::Value;
use voxtell_io::{Affine, RasVolume};

use crate::error::{Result, TrainError};

/// A half-open box `[start, end)` per axis of an (S, A, R) array.
pub use voxtell_infer::preprocess::Bbox;

/// Largest difference allowed between an image's and its label map's affine entries, relative
/// to `max(1, |a|, |b|)` (NIfTI stores affines as f32, and converters round differently).
pub const AFFINE_TOLERANCE: f64 = 1e-3;

/// The reserved vocabulary key holding negative-only prompts (defined with the phantom
/// vocabulary, which writes it).
pub use voxtell_phantom::NEGATIVES_KEY;

/// One training case: its identifier and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFiles {
    /// The case identifier (`{case}` in `imagesTr/{case}_0000.nii.gz`).
    pub id: String,
    /// The image (channel 0000).
    pub image: PathBuf,
    /// The label map.
    pub label: PathBuf,
}

/// A dataset in the nnU-Net raw layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The name the vocabulary uses for this dataset (by default the folder name, e.g.
    /// `Dataset003_Liver`).
    pub name: String,
    /// The dataset folder.
    pub root: PathBuf,
    /// Label name → value, from `dataset.json` (background included).
    pub labels: BTreeMap<String, u16>,
    /// The cases, sorted by identifier.
    pub cases: Vec<CaseFiles>,
}

/// An image and its label map as read for training, both in the (S, A, R) layout.
#[derive(Debug, Clone)]
pub struct CaseVolumes {
    /// The image, reoriented as inference reads it.
    pub image: RasVolume,
    /// The label map on the same grid.
    pub labels: Array3<u16>,
}

fn dataset_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Dataset { path: path.to_path_buf(), reason: reason.into() }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::file(path, format!("invalid JSON: {e}")))
}

/// Strip a NIfTI ending (`.nii.gz` or `.nii`, case-insensitive) from a file name.
fn strip_nifti_ending(name: &str) -> Option<(&str, &'static str)> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".nii.gz") {
        Some((&name[..name.len() - 7], ".nii.gz"))
    } else if lower.ends_with(".nii") {
        Some((&name[..name.len() - 4], ".nii"))
    } else {
        None
    }
}

impl Dataset {
    /// Open a dataset folder, named after the folder.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| dataset_err(root, "the dataset folder has no usable name"))?
            .to_string();
        Self::open_named(name, root)
    }

    /// Open a dataset folder under an explicit name (the key used in the vocabulary).
    pub fn open_named(name: impl Into<String>, root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let json_path = root.join("dataset.json");
        let json = read_json(&json_path)?;
        let labels = parse_labels(&json, &json_path)?;
        check_channels(&json, &json_path)?;
        let file_ending = match json.get("file_ending") {
            None => None,
            Some(Value::String(e)) if e == ".nii.gz" || e == ".nii" => Some(e.clone()),
            Some(other) => {
                return Err(dataset_err(
                    &json_path,
                    format!("file_ending {other} is not supported (NIfTI only: \".nii.gz\" or \".nii\")"),
                ));
            }
        };
        let cases = list_cases(&root, file_ending.as_deref())?;
        Ok(Dataset { name: name.into(), root, labels, cases })
    }

    /// The path of `dataset.json`.
    pub fn dataset_json(&self) -> PathBuf {
        self.root.join("dataset.json")
    }

    /// The value of a label, by name.
    pub fn label_value(&self, name: &str) -> Option<u16> {
        self.labels.get(name).copied()
    }

    /// The set of declared label values (background included).
    pub fn label_values(&self) -> BTreeSet<u16> {
        self.labels.values().copied().collect()
    }

    /// Read one case: image and label map in the (S, A, R) layout, checked to share the grid
    /// and to use only declared label values.
    pub fn read_case(&self, case: &CaseFiles) -> Result<CaseVolumes> {
        read_case(case, &self.label_values())
    }
}

/// Open several datasets (each named after its folder); two datasets with the same name are an
/// error.
pub fn open_datasets<P: AsRef<Path>>(roots: &[P]) -> Result<Vec<Dataset>> {
    let mut out: Vec<Dataset> = Vec::with_capacity(roots.len());
    for root in roots {
        let d = Dataset::open(root)?;
        if let Some(prev) = out.iter().find(|p| p.name == d.name) {
            return Err(dataset_err(
                &d.root,
                format!("a dataset named {:?} was already opened from {}", d.name, prev.root.display()),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

fn parse_labels(json: &Value, path: &Path) -> Result<BTreeMap<String, u16>> {
    let obj = json
        .get("labels")
        .and_then(Value::as_object)
        .ok_or_else(|| dataset_err(path, "missing \"labels\" object"))?;
    let mut labels = BTreeMap::new();
    let mut by_value: BTreeMap<u16, String> = BTreeMap::new();
    for (name, v) in obj {
        let value = match v {
            Value::Number(n) => n.as_u64().and_then(|x| u16::try_from(x).ok()).ok_or_else(|| {
                dataset_err(path, format!("label {name:?}: value {n} is not an integer in 0..=65535"))
            })?,
            Value::Array(_) => {
                return Err(dataset_err(
                    path,
                    format!(
                        "label {name:?}: region-based labels (a list of values) are not supported; \
                         list the regions in the vocabulary as \"a+b\" unions instead"
                    ),
                ));
            }
            other => {
                return Err(dataset_err(path, format!("label {name:?}: value {other} is not an integer")));
            }
        };
        if let Some(prev) = by_value.insert(value, name.clone()) {
            return Err(dataset_err(path, format!("labels {prev:?} and {name:?} share the value {value}")));
        }
        labels.insert(name.clone(), value);
    }
    Ok(labels)
}

fn check_channels(json: &Value, path: &Path) -> Result<()> {
    for key in ["channel_names", "modality"] {
        if let Some(obj) = json.get(key).and_then(Value::as_object)
            && obj.len() > 1
        {
            return Err(dataset_err(
                path,
                format!("{key} lists {} channels; only single-channel datasets are supported", obj.len()),
            ));
        }
    }
    Ok(())
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| TrainError::file(dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| TrainError::file(dir, e))?;
        if let Some(n) = entry.file_name().to_str()
            && !n.starts_with('.')
        {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn list_cases(root: &Path, file_ending: Option<&str>) -> Result<Vec<CaseFiles>> {
    let images_dir = root.join("imagesTr");
    let labels_dir = root.join("labelsTr");
    let mut cases: BTreeMap<String, CaseFiles> = BTreeMap::new();
    for name in list_dir(&images_dir)? {
        let Some((stem, ending)) = strip_nifti_ending(&name) else { continue };
        if file_ending.is_some_and(|e| e != ending) {
            continue;
        }
        let Some((id, channel)) = stem.rsplit_once('_') else { continue };
        if channel.len() != 4 || !channel.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if channel != "0000" {
            return Err(dataset_err(
                &images_dir.join(&name),
                "only single-channel datasets are supported (found a channel other than 0000)",
            ));
        }
        let label = [".nii.gz", ".nii"]
            .iter()
            .filter(|e| file_ending.is_none_or(|f| f == **e))
            .map(|e| labels_dir.join(format!("{id}{e}")))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                dataset_err(
                    &images_dir.join(&name),
                    format!("no label map {}/{id}{}", labels_dir.display(), file_ending.unwrap_or(".nii.gz")),
                )
            })?;
        let case = CaseFiles { id: id.to_string(), image: images_dir.join(&name), label };
        if let Some(prev) = cases.insert(id.to_string(), case) {
            return Err(dataset_err(
                &images_dir.join(&name),
                format!("case {id:?} has two images ({})", prev.image.display()),
            ));
        }
    }
    if cases.is_empty() {
        return Err(dataset_err(&images_dir, "no images named {case}_0000.nii.gz / .nii"));
    }
    Ok(cases.into_values().collect())
}

fn affines_match(a: &Affine, b: &Affine) -> bool {
    a.iter().flatten().zip(b.iter().flatten()).all(|(&x, &y)| {
        let scale = 1f64.max(x.abs()).max(y.abs());
        (x - y).abs() <= AFFINE_TOLERANCE * scale
    })
}

/// Read a case's image and label map (through `voxtell_io::read(path)?.to_ras()`), check that
/// they share shape and geometry, and convert the labels to integers, which must all be in
/// `declared` (the values of `dataset.json`).
pub fn read_case(case: &CaseFiles, declared: &BTreeSet<u16>) -> Result<CaseVolumes> {
    let image_vol = voxtell_io::read(&case.image)?;
    let label_vol = voxtell_io::read(&case.label)?;
    if image_vol.shape() != label_vol.shape() {
        return Err(dataset_err(
            &case.label,
            format!(
                "label map shape {:?} differs from the image's {:?} ({})",
                label_vol.shape(),
                image_vol.shape(),
                case.image.display()
            ),
        ));
    }
    if !affines_match(&image_vol.affine, &label_vol.affine) {
        return Err(dataset_err(
            &case.label,
            format!(
                "label map affine {:?} differs from the image's {:?} ({})",
                label_vol.affine,
                image_vol.affine,
                case.image.display()
            ),
        ));
    }
    let image = image_vol.to_ras()?;
    drop(image_vol);
    let labels_ras = label_vol.to_ras()?;
    let mut bad: Option<f32> = None;
    let labels = labels_ras.data.mapv(|v| {
        if (0.0..=65535.0).contains(&v) && v.fract() == 0.0 {
            v as u16
        } else {
            bad.get_or_insert(v);
            0
        }
    });
    if let Some(v) = bad {
        return Err(dataset_err(&case.label, format!("label value {v} is not an integer in 0..=65535")));
    }
    let mut seen = vec![false; 65536];
    for &v in &labels {
        seen[usize::from(v)] = true;
    }
    if let Some(v) = (0..=u16::MAX).find(|&v| seen[usize::from(v)] && !declared.contains(&v)) {
        return Err(dataset_err(
            &case.label,
            format!("label value {v} is not declared in dataset.json (declared: {declared:?})"),
        ));
    }
    Ok(CaseVolumes { image, labels })
}

// ---------------------------------------------------------------------------------------------
// Preprocessing: inference's own functions, so that training sees exactly what prediction sees.
// ---------------------------------------------------------------------------------------------

pub use voxtell_infer::preprocess::{crop_and_normalize, nonzero_bbox};

/// Copy the `bbox` part of an array.
pub fn crop<T: Clone>(data: ArrayView3<'_, T>, bbox: &Bbox) -> Array3<T> {
    data.slice(s![bbox[0][0]..bbox[0][1], bbox[1][0]..bbox[1][1], bbox[2][0]..bbox[2][1]]).to_owned()
}

// ---------------------------------------------------------------------------------------------
// Vocabulary.
// ---------------------------------------------------------------------------------------------

/// One vocabulary entry: a label (or a union of labels) and its prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabEntry {
    /// The key as written (`"liver"` or `"liver+liver tumor"`).
    pub key: String,
    /// The dataset label names the key stands for (one, or several for a union).
    pub label_names: Vec<String>,
    /// The prompts: the default name first, then synonyms. Never empty.
    pub prompts: Vec<String>,
}

impl VocabEntry {
    /// The default name (the first prompt).
    pub fn default_prompt(&self) -> &str {
        &self.prompts[0]
    }

    /// The synonyms (every prompt after the first).
    pub fn synonyms(&self) -> &[String] {
        &self.prompts[1..]
    }
}

/// The vocabulary of one dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetVocabulary {
    /// The entries, in key order.
    pub entries: Vec<VocabEntry>,
    /// Negative-only prompts: concepts absent from every image of the dataset.
    pub negatives: Vec<String>,
}

/// Prompt vocabularies for several datasets, read from one JSON file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    /// Where it was read from (used in error messages).
    pub path: PathBuf,
    /// Dataset name → its vocabulary.
    pub datasets: BTreeMap<String, DatasetVocabulary>,
}

/// A vocabulary entry resolved against a dataset's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEntry {
    /// The key as written in the vocabulary.
    pub key: String,
    /// The label values whose union the entry denotes (sorted, distinct, never 0).
    pub values: Vec<u16>,
    /// The prompts: default name first, then synonyms.
    pub prompts: Vec<String>,
}

/// A dataset's vocabulary with every key resolved to label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVocabulary {
    /// The dataset's name.
    pub dataset: String,
    /// The entries.
    pub entries: Vec<ResolvedEntry>,
    /// Negative-only prompts.
    pub negatives: Vec<String>,
}

fn vocab_err(path: &Path, key: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Vocabulary { path: path.to_path_buf(), key: key.to_string(), reason: reason.into() }
}

fn prompt_list(v: &Value, path: &Path, key: &str) -> Result<Vec<String>> {
    let items: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(a) => a.iter().collect(),
        other => {
            return Err(vocab_err(path, key, format!("expected a list of prompt strings, found {other}")));
        }
    };
    if items.is_empty() {
        return Err(vocab_err(path, key, "the prompt list is empty"));
    }
    items
        .into_iter()
        .map(|p| match p {
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            other => Err(vocab_err(path, key, format!("prompt {other} is not a non-empty string"))),
        })
        .collect()
}

impl Vocabulary {
    /// Read a vocabulary file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parse a vocabulary from JSON text; `path` names it in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json: Value =
            serde_json::from_str(text).map_err(|e| TrainError::file(path, format!("invalid JSON: {e}")))?;
        let top = json
            .as_object()
            .ok_or_else(|| vocab_err(path, "", "the vocabulary must be a JSON object {dataset: {...}}"))?;
        let mut datasets = BTreeMap::new();
        for (dataset, body) in top {
            let body = body.as_object().ok_or_else(|| {
                vocab_err(path, dataset, "a dataset's vocabulary must be an object {label: [prompts]}")
            })?;
            let mut voc = DatasetVocabulary::default();
            for (key, v) in body {
                let full_key = format!("{dataset}/{key}");
                if key == NEGATIVES_KEY {
                    voc.negatives = match v {
                        Value::Array(a) if a.is_empty() => Vec::new(),
                        _ => prompt_list(v, path, &full_key)?,
                    };
                    continue;
                }
                if key.starts_with('_') {
                    return Err(vocab_err(
                        path,
                        &full_key,
                        format!("unknown reserved key (only {NEGATIVES_KEY:?} is defined)"),
                    ));
                }
                let label_names: Vec<String> = key.split('+').map(|p| p.trim().to_string()).collect();
                if label_names.iter().any(String::is_empty) {
                    return Err(vocab_err(path, &full_key, "empty label name in the key"));
                }
                voc.entries.push(VocabEntry {
                    key: key.clone(),
                    label_names,
                    prompts: prompt_list(v, path, &full_key)?,
                });
            }
            datasets.insert(dataset.clone(), voc);
        }
        Ok(Vocabulary { path: path.to_path_buf(), datasets })
    }

    /// Resolve the vocabulary of dataset `name` against its labels (`dataset.json`'s
    /// `{name: value}`). Every key must name labels of the dataset (not the background, value
    /// 0); a key that is itself a label name is taken whole even if it contains `+`.
    pub fn resolve(&self, name: &str, labels: &BTreeMap<String, u16>) -> Result<ResolvedVocabulary> {
        let voc = self
            .datasets
            .get(name)
            .ok_or_else(|| vocab_err(&self.path, name, "the dataset has no vocabulary"))?;
        if voc.entries.is_empty() && voc.negatives.is_empty() {
            return Err(vocab_err(&self.path, name, "the dataset's vocabulary is empty"));
        }
        let mut entries = Vec::with_capacity(voc.entries.len());
        for e in &voc.entries {
            let full_key = format!("{name}/{}", e.key);
            let names: Vec<&str> = if labels.contains_key(&e.key) {
                vec![e.key.as_str()]
            } else {
                e.label_names.iter().map(String::as_str).collect()
            };
            let mut values = Vec::with_capacity(names.len());
            for n in names {
                let v = *labels.get(n).ok_or_else(|| {
                    vocab_err(
                        &self.path,
                        &full_key,
                        format!(
                            "{n:?} is not a label of the dataset (labels: {:?})",
                            labels.keys().collect::<Vec<_>>()
                        ),
                    )
                })?;
                if v == 0 {
                    return Err(vocab_err(
                        &self.path,
                        &full_key,
                        format!("{n:?} is the background (value 0)"),
                    ));
                }
                values.push(v);
            }
            values.sort_unstable();
            values.dedup();
            entries.push(ResolvedEntry { key: e.key.clone(), values, prompts: e.prompts.clone() });
        }
        // A prompt names one thing: the same text (as the bank keys it, lowercased) for
        // different structures, or for a structure and a negative-only concept, would be
        // trained as present and absent at once.
        let mut meaning: BTreeMap<String, (&str, &[u16])> = BTreeMap::new();
        for e in &entries {
            for p in &e.prompts {
                if let Some((other, values)) = meaning.insert(p.to_lowercase(), (&e.key, &e.values))
                    && values != e.values.as_slice()
                {
                    return Err(vocab_err(
                        &self.path,
                        &format!("{name}/{}", e.key),
                        format!("prompt {p:?} also names {other:?}, a different structure"),
                    ));
                }
            }
        }
        if let Some(n) = voc.negatives.iter().find(|n| meaning.contains_key(&n.to_lowercase())) {
            return Err(vocab_err(
                &self.path,
                &format!("{name}/{NEGATIVES_KEY}"),
                format!("negative-only prompt {n:?} is also a prompt of a structure"),
            ));
        }
        Ok(ResolvedVocabulary { dataset: name.to_string(), entries, negatives: voc.negatives.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_and_zscore_match_inference() {
        let mut a = Array3::<f32>::zeros((5, 6, 7));
        assert_eq!(nonzero_bbox(a.view()), [[0, 5], [0, 6], [0, 7]]);
        a[[1, 2, 3]] = 2.0;
        a[[3, 4, 3]] = f32::NAN;
        assert_eq!(nonzero_bbox(a.view()), [[1, 4], [2, 5], [3, 4]]);

        let mut b = Array3::<f32>::zeros((4, 4, 4));
        b[[1, 1, 1]] = 2.0;
        b[[2, 2, 2]] = 4.0;
        let bbox = nonzero_bbox(b.view());
        assert_eq!(bbox, [[1, 3], [1, 3], [1, 3]]);
        let z = crop_and_normalize(b.view(), &bbox);
        assert_eq!(z.shape(), &[2, 2, 2]);
        // mean 0.75, population std sqrt((2² + 4²)/8 − 0.75²) = sqrt(1.9375)
        let std = 1.9375f64.sqrt() as f32;
        assert!((z[[0, 0, 0]] - (2.0 - 0.75) / std).abs() < 1e-6);
        assert!((z[[0, 0, 1]] - (0.0 - 0.75) / std).abs() < 1e-6);
        let c = Array3::<f32>::from_elem((2, 2, 2), 3.0);
        assert!(crop_and_normalize(c.view(), &[[0, 2], [0, 2], [0, 2]]).iter().all(|&v| v == 0.0));
        let l = Array3::<u16>::from_shape_fn((4, 4, 4), |(i, j, k)| (i * 16 + j * 4 + k) as u16);
        let cl = crop(l.view(), &bbox);
        assert_eq!(cl[[0, 0, 0]], 16 + 4 + 1);
        assert_eq!(cl.shape(), &[2, 2, 2]);
    }

    #[test]
    fn affine_tolerance() {
        let a: Affine =
            [[1.0, 0.0, 0.0, -100.0], [0.0, 1.0, 0.0, 20.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]];
        let mut b = a;
        b[0][3] += 0.05;
        assert!(affines_match(&a, &b));
        b[0][3] += 0.2;
        assert!(!affines_match(&a, &b));
    }

    #[test]
    fn nifti_endings() {
        assert_eq!(strip_nifti_ending("a_0000.nii.gz"), Some(("a_0000", ".nii.gz")));
        assert_eq!(strip_nifti_ending("a_0000.NII"), Some(("a_0000", ".nii")));
        assert_eq!(strip_nifti_ending("a.mha"), None);
    }

    #[test]
    fn a_prompt_may_not_name_two_structures() {
        let labels: BTreeMap<String, u16> =
            [("background", 0), ("kl", 1), ("kr", 2)].map(|(k, v)| (k.to_string(), v)).into();
        let shared = Vocabulary::from_json_str(
            r#"{"D": {"kl": ["left kidney", "Kidney"], "kr": ["right kidney", "kidney"]}}"#,
            "v.json",
        )
        .unwrap();
        let e = shared.resolve("D", &labels).unwrap_err().to_string();
        assert!(e.contains("kidney") && e.contains("kl"), "{e}");
        let negative = Vocabulary::from_json_str(
            r#"{"D": {"kl": ["left kidney"], "kr": ["right kidney"], "_negatives": ["Left Kidney"]}}"#,
            "v.json",
        )
        .unwrap();
        assert!(negative.resolve("D", &labels).is_err());
        // The same prompt for the same structure (e.g. a union listed twice) is fine.
        let ok = Vocabulary::from_json_str(
            r#"{"D": {"kl": ["left kidney", "LEFT KIDNEY"], "kr": ["right kidney"]}}"#,
            "v.json",
        )
        .unwrap();
        assert!(ok.resolve("D", &labels).is_ok());
    }

    #[test]
    fn vocabulary_union_and_exact_plus_names() {
        let labels: BTreeMap<String, u16> =
            [("background", 0), ("a", 1), ("b", 2), ("c+d", 3)].map(|(k, v)| (k.to_string(), v)).into();
        let v = Vocabulary::from_json_str(
            r#"{"D": {"a+b": ["ab", "both"], "c+d": "cd", "_negatives": []}}"#,
            "v.json",
        )
        .unwrap();
        let r = v.resolve("D", &labels).unwrap();
        assert_eq!(r.entries[0].values, vec![1, 2]);
        assert_eq!(r.entries[1].values, vec![3]);
        assert_eq!(r.entries[1].prompts, vec!["cd".to_string()]);
        assert!(r.negatives.is_empty());
        let bg = Vocabulary::from_json_str(r#"{"D": {"background": ["nothing"]}}"#, "v.json").unwrap();
        assert!(bg.resolve("D", &labels).unwrap_err().to_string().contains("background"));
    }
}
