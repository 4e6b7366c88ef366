//! The prompt vocabulary of the phantoms: default names and synonyms of every label (and of the
//! liver with its lesions), prompts for concepts no phantom holds, and held-out paraphrases for
//! evaluation.

use serde_json::{Value, json};

use crate::options::LABELS;

/// The reserved vocabulary key whose prompts name concepts absent from every case of a dataset
/// (negative-only prompts). `voxtell-train`'s vocabulary reader uses the same constant.
pub const NEGATIVES_KEY: &str = "_negatives";

/// The vocabulary entries: key (a label or a `+` union), then the default name and synonyms.
const VOCABULARY: [(&str, &[&str]); 10] = [
    (
        "liver+liver_lesion",
        &[
            "liver",
            "hepatic organ",
            "the liver including lesions",
            "whole liver",
            "liver with its lesions",
            "hepar",
            "liver parenchyma",
        ],
    ),
    (
        "liver_lesion",
        &[
            "liver lesion",
            "lesion in the liver",
            "hepatic lesion",
            "liver tumor",
            "focal liver lesion",
            "liver mass",
            "hepatic metastasis",
        ],
    ),
    ("spleen", &["spleen", "splenic organ", "the spleen", "lien", "splenic parenchyma"]),
    (
        "kidney_left",
        &[
            "left kidney",
            "kidney on the left side",
            "left renal organ",
            "the left kidney",
            "left renal parenchyma",
        ],
    ),
    (
        "kidney_right",
        &[
            "right kidney",
            "kidney on the right side",
            "right renal organ",
            "the right kidney",
            "right renal parenchyma",
        ],
    ),
    (
        "vertebrae",
        &[
            "vertebrae",
            "spine",
            "vertebral bodies",
            "vertebral column",
            "spinal vertebrae",
            "vertebra",
            "bony spine",
            "lumbar and thoracic spine",
        ],
    ),
    (
        "aorta",
        &[
            "aorta",
            "aortic vessel",
            "the aorta",
            "main artery",
            "descending aorta",
            "abdominal aorta",
            "thoracic aorta",
            "aortic artery",
        ],
    ),
    (
        "urinary_bladder",
        &["urinary bladder", "bladder", "the urinary bladder", "vesica urinaria", "bladder organ"],
    ),
    (
        "lung_left",
        &["left lung", "lung on the left side", "left pulmonary organ", "the left lung", "left lung lobes"],
    ),
    (
        "lung_right",
        &[
            "right lung",
            "lung on the right side",
            "right pulmonary organ",
            "the right lung",
            "right lung lobes",
        ],
    ),
];

/// Concepts absent from every phantom.
const NEGATIVES: [&str; 5] = ["brain", "femur", "eyeball", "thyroid gland", "humerus"];

/// The prompt vocabulary of a phantom dataset named `dataset_name`, in the format of
/// `voxtell_train::data::Vocabulary`. The liver's default prompt names the union of the liver and its
/// lesions (organ masks include their lesions).
pub fn vocabulary_json(dataset_name: &str) -> Value {
    let mut body = serde_json::Map::new();
    for (key, prompts) in VOCABULARY {
        body.insert(key.to_string(), json!(prompts));
    }
    body.insert(NEGATIVES_KEY.to_string(), json!(NEGATIVES));
    json!({ dataset_name: body })
}

/// The vocabulary entries as `(key, names)`: the key is a label name or a `+` union of label
/// names ([`label_values`]); the first name is the default prompt, the others are synonyms.
pub fn vocabulary_entries() -> Vec<(String, Vec<String>)> {
    VOCABULARY
        .iter()
        .map(|(k, names)| (k.to_string(), names.iter().map(|n| n.to_string()).collect()))
        .collect()
}

/// The label values of a vocabulary key (`"liver+liver_lesion"` → `[1, 10]`); `None` when a
/// part names no label of [`LABELS`].
pub fn label_values(key: &str) -> Option<Vec<u8>> {
    key.split('+').map(|name| LABELS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)).collect()
}

/// Held-out prompts for evaluation, none of them in [`vocabulary_json`]: `(vocabulary key,
/// paraphrase)`.
pub fn paraphrases() -> Vec<(String, String)> {
    const P: [(&str, &str); 25] = [
        ("liver+liver_lesion", "hepatic tissue"),
        ("liver+liver_lesion", "the patient's liver"),
        ("liver+liver_lesion", "liver organ"),
        ("liver_lesion", "tumor in the liver"),
        ("liver_lesion", "hypodense liver lesion"),
        ("spleen", "splenic tissue"),
        ("spleen", "the patient's spleen"),
        ("kidney_left", "the patient's left kidney"),
        ("kidney_left", "renal organ, left"),
        ("kidney_left", "kidney, left side"),
        ("kidney_right", "the patient's right kidney"),
        ("kidney_right", "renal organ, right"),
        ("kidney_right", "kidney, right side"),
        ("vertebrae", "spinal column bones"),
        ("vertebrae", "backbone"),
        ("aorta", "aortic lumen"),
        ("aorta", "the patient's aorta"),
        ("urinary_bladder", "the patient's bladder"),
        ("urinary_bladder", "urine bladder"),
        ("lung_left", "the patient's left lung"),
        ("lung_left", "pulmonary organ, left"),
        ("lung_left", "lung, left side"),
        ("lung_right", "the patient's right lung"),
        ("lung_right", "pulmonary organ, right"),
        ("lung_right", "lung, right side"),
    ];
    P.iter().map(|&(k, p)| (k.to_string(), p.to_string())).collect()
}
