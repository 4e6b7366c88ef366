//! [`DicomSegFile`]: a case's masks as one DICOM SEG over the slices of its source series
//! (`{case}_seg.dcm`, [`voxtell_io::dicom_seg`]), and the codes its segments carry.
//!
//! - Each prompt whose mask is not empty is one segment, numbered 1… in prompt order; the masks
//!   go back from the network's (S, A, R) layout to the source slices' own grid exactly as for
//!   NIfTI output, so every orientation the reader takes is written back as it came.
//! - When every mask is empty no SEG is written: `{case}_seg.json` says why (it counts as the
//!   case's DICOM output when finished cases are skipped).
//! - Category and type codes come from [`code_for`]: SNOMED CT codes of the demo's structures and
//!   of TotalSegmentator's structures (its SNOMED mapping, turned into the table `seg/codes.tsv`
//!   by `tools/gen_seg_codes.py` and read by [`codes`]; the codes are facts, the table is ours),
//!   "Lesion" for prompts that name a lesion, else SCT 85756007 Tissue / Tissue.

use std::path::{Path, PathBuf};

use ndarray::ArrayView3;
use voxtell_io::DicomSeries;
use voxtell_io::dicom_seg::{Code, SegBuilder, SegOptions, SegSegment, TISSUE};

use crate::error::{InferError, Result};
use crate::job::{Input, Job};
use crate::writers::{OutputWriter, PredictedCase};

mod codes;

/// SCT 52988006 "Lesion": the type of a prompt that names a lesion.
const LESION: Code = Code { value: "52988006", scheme: "SCT", meaning: "Lesion" };

/// `(constant, SCT value, meaning)` of the codes [`ORGANS`] and [`code_for`] name, each as
/// TotalSegmentator's table (`seg/codes.tsv`) gives it (a test checks that).
macro_rules! sct_codes {
    ($($name:ident $value:literal $meaning:literal),* $(,)?) => {
        $(const $name: Code = Code { value: $value, scheme: "SCT", meaning: $meaning };)*
    };
}

sct_codes! {
    ANATOMICAL_STRUCTURE "123037004" "Anatomical Structure",
    MORPHOLOGICALLY_ALTERED_STRUCTURE "49755003" "Morphologically Altered Structure",
    LEFT "7771000" "Left",
    RIGHT "24028007" "Right",
    LUNG "39607008" "Lung",
    URINARY_BLADDER "89837001" "Urinary bladder",
    SMALL_INTESTINE "30315005" "Small Intestine",
    VERTEBRA "51282000" "Vertebra",
}

/// The codes of one structure as a DICOM SEG segment gives them: segmented property category
/// and type, and where the table has them the type modifier (laterality: SCT 7771000 Left /
/// 24028007 Right; COVID-19 once) and the anatomic region with its modifier. The SEG writer
/// writes category and type only, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegCodes {
    /// SegmentedPropertyCategoryCodeSequence.
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence.
    pub property: Code,
    /// SegmentedPropertyTypeModifierCodeSequence.
    pub modifier: Option<Code>,
    /// AnatomicRegionSequence.
    pub region: Option<Code>,
    /// AnatomicRegionModifierSequence.
    pub region_modifier: Option<Code>,
}

impl SegCodes {
    const fn new(category: Code, property: Code) -> Self {
        SegCodes { category, property, modifier: None, region: None, region_modifier: None }
    }

    const fn modifier(self, modifier: Code) -> Self {
        SegCodes { modifier: Some(modifier), ..self }
    }

    /// The codes set: category, type, then modifier, region and region modifier where present.
    #[cfg(test)]
    fn present(self) -> impl Iterator<Item = Code> {
        [Some(self.category), Some(self.property), self.modifier, self.region, self.region_modifier]
            .into_iter()
            .flatten()
    }
}

/// (name, lowercased spellings, codes): spellings that TotalSegmentator's table
/// ([`codes::structures`]) lacks — the demo's lungs and vertebrae, a few common names — with
/// codes that table uses.
const ORGANS: &[(&str, &[&str], SegCodes)] = &[
    ("lung", &["lung", "lungs"], SegCodes::new(ANATOMICAL_STRUCTURE, LUNG)),
    ("lung_left", &["left lung", "lung left"], SegCodes::new(ANATOMICAL_STRUCTURE, LUNG).modifier(LEFT)),
    ("lung_right", &["right lung", "lung right"], SegCodes::new(ANATOMICAL_STRUCTURE, LUNG).modifier(RIGHT)),
    ("urinary_bladder", &["bladder"], SegCodes::new(ANATOMICAL_STRUCTURE, URINARY_BLADDER)),
    ("small_bowel", &["small intestine"], SegCodes::new(ANATOMICAL_STRUCTURE, SMALL_INTESTINE)),
    ("vertebrae", &["vertebrae", "vertebra"], SegCodes::new(ANATOMICAL_STRUCTURE, VERTEBRA)),
];

/// Every (name, spellings, codes) row: ours, then TotalSegmentator's.
fn structures() -> impl Iterator<Item = &'static (&'static str, &'static [&'static str], SegCodes)> {
    ORGANS.iter().chain(codes::structures())
}

/// The codes of a structure prompt: the prompt lowercased, trimmed, `_` read as a space and runs
/// of white space as one, matched exactly against the spellings of the demo's and
/// TotalSegmentator's structures ("left kidney", "kidney_left", "L1 vertebra", "urinary
/// bladder"); `None` for any other prompt.
pub fn segment_codes(prompt: &str) -> Option<SegCodes> {
    let p = prompt.to_lowercase();
    let key = p.split(|c: char| c.is_whitespace() || c == '_').filter(|w| !w.is_empty()).collect::<Vec<_>>();
    let key = key.join(" ");
    structures().find(|(_, spellings, _)| spellings.contains(&key.as_str())).map(|&(.., codes)| codes)
}

/// The category and type codes of a prompt: those of [`segment_codes`] for a structure it
/// names, "Lesion" under "Morphologically Altered Structure" for prompts that name a lesion,
/// else Tissue / Tissue.
pub fn code_for(prompt: &str) -> (Code, Code) {
    if let Some(codes) = segment_codes(prompt) {
        return (codes.category, codes.property);
    }
    let p = prompt.to_lowercase();
    if p.split(|c: char| !c.is_alphanumeric()).any(|w| w == "lesion" || w == "lesions") {
        return (MORPHOLOGICALLY_ALTERED_STRUCTURE, LESION);
    }
    (TISSUE, TISSUE)
}

/// How VoxTell's SEGs name their maker: algorithm "VoxTell" with this crate's version,
/// manufacturer "voxtell-rs", series `series_number`; an existing file is replaced.
pub fn seg_options(series_number: i32) -> SegOptions {
    SegOptions {
        algorithm_name: "VoxTell".to_string(),
        algorithm_version: env!("CARGO_PKG_VERSION").to_string(),
        manufacturer: "voxtell-rs".to_string(),
        series_number,
        series_description: "VoxTell text-prompted segmentation".to_string(),
        overwrite: true,
    }
}

/// The segment of prompt `i` (`prompt`) with `mask` in the source grid: its codes
/// ([`code_for`]) and the preview's colour of prompt `i`.
pub fn prompt_segment<'a>(i: usize, prompt: &'a str, mask: ArrayView3<'a, u8>) -> SegSegment<'a> {
    let (category, property) = code_for(prompt);
    SegSegment { text: prompt, mask, category, property, color: crate::preview::mask_colour(i) }
}

/// `{case}_seg.dcm`: the case's masks as a DICOM SEG over its source series — the series the
/// batch read ([`crate::BatchOptions::dicom`] chooses it in a folder of several). A DICOM folder
/// input only: a batch refuses other inputs before any work, and a series that lacks what a SEG
/// refers to once it is read, before it is predicted.
#[derive(Debug, Clone, Copy)]
pub struct DicomSegFile {
    /// SeriesNumber of the SEG series.
    pub series_number: i32,
}

impl Default for DicomSegFile {
    fn default() -> Self {
        DicomSegFile { series_number: 100 }
    }
}

/// The SEG file of a case.
pub fn seg_file(case: &str) -> String {
    format!("{case}_seg.dcm")
}

/// The note written instead of a SEG when every mask is empty.
pub fn seg_note_file(case: &str) -> String {
    format!("{case}_seg.json")
}

impl OutputWriter for DicomSegFile {
    fn files(&self, case: &str, _prompts: &[String]) -> Result<Vec<String>> {
        Ok(vec![seg_file(case), seg_note_file(case)])
    }

    fn check(&self, job: &Job) -> Result<()> {
        match &job.input {
            Input::Path(p) if p.is_dir() => Ok(()),
            other => Err(not_dicom(other)),
        }
    }

    fn finished(&self, dir: &Path, case: &str, _prompts: &[String]) -> bool {
        dir.join(seg_file(case)).exists() || dir.join(seg_note_file(case)).exists()
    }

    fn check_source(&self, job: &Job, source: Option<&DicomSeries>) -> Result<()> {
        let Some(source) = source else {
            return Err(not_dicom(&job.input));
        };
        voxtell_io::dicom_seg::check_source(source).map_err(|reason| {
            InferError::Io(voxtell_io::IoError::Dicom { path: PathBuf::from(job.input.describe()), reason })
        })
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>> {
        let source = case.source.ok_or_else(|| not_dicom(case.input))?;
        let seg_path = dir.join(seg_file(case.name));
        let note_path = dir.join(seg_note_file(case.name));
        let mut seg = SegBuilder::new(&seg_path, source, seg_options(self.series_number))?;
        let geometry = case.masks.geometry();
        let mut empty = Vec::new();
        // Each mask inside the crop box, seen in the source grid (no copy), packed in turn.
        let start = case.masks.bbox().map(|[lo, _]| lo);
        for (i, prompt) in case.prompts.iter().enumerate() {
            let Some(part) = case.masks.cropped_mask(i).filter(|m| m.iter().any(|&v| v != 0)) else {
                empty.push(prompt.as_str());
                continue;
            };
            let (mask, offset) = geometry.restore_part(part.view(), start)?;
            seg.add_part(&prompt_segment(i, prompt, mask), offset)?;
        }
        if seg.is_empty() {
            let note = serde_json::json!({
                "case": case.name,
                "seg": null,
                "reason": "every mask is empty: a DICOM SEG needs at least one segment",
                "empty_prompts": empty,
            });
            let text = serde_json::to_string_pretty(&note).map_err(|e| InferError::Invalid(e.to_string()))?;
            voxtell_io::atomic::write_atomic(&note_path, true, |tmp| std::fs::write(tmp, text.as_bytes()))?;
            remove_stale(&seg_path)?;
            return Ok(vec![note_path]);
        }
        seg.finish()?;
        remove_stale(&note_path)?;
        Ok(vec![seg_path])
    }
}

/// The refusal of an input that is not a DICOM series.
fn not_dicom(input: &Input) -> InferError {
    InferError::Option {
        option: "output_type",
        reason: format!(
            "{}: a DICOM SEG needs a DICOM source series (a folder of slices); this input is not one",
            input.describe()
        ),
    }
}

/// Remove the other outcome's file of an earlier run (a SEG now written replaces a note, and the
/// reverse).
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(InferError::Output { path: path.to_path_buf(), reason: format!("cannot remove it: {e}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_for_organs_lesions_and_the_rest() {
        assert_eq!(code_for(" Liver ").1.value, "10200004");
        assert_eq!(code_for("left kidney").1.meaning, "Kidney");
        assert_eq!(code_for("hypodense liver lesion").1.value, "52988006");
        assert_eq!(code_for("hypodense liver lesion").0.value, "49755003");
        assert_eq!(code_for("the patient's right kidney"), (TISSUE, TISSUE));
        assert_eq!(code_for("spiculated nodule"), (TISSUE, TISSUE));
    }

    /// (category, type) values of a prompt.
    fn values(prompt: &str) -> (&'static str, &'static str) {
        let (category, property) = code_for(prompt);
        (category.value, property.value)
    }

    #[test]
    fn totalsegmentator_structures_by_both_spellings() {
        const ANATOMY: &str = "123037004";
        for (prompts, value) in [
            (&["left kidney", "kidney left", "Kidney_Left", "  LEFT   kidney "][..], "64033007"),
            (&["urinary bladder", "bladder", "Urinary_Bladder"], "89837001"),
            (&["l1 vertebra", "vertebra l1", "vertebrae l1", "vertebrae_L1"], "66794005"),
            (&["liver"], "10200004"),
            (&["left rib 3", "rib left 3", "rib_right_3"], "25888004"),
            (&["right lung upper lobe", "lung upper lobe right"], "45653009"),
            (&["left gluteus minimus", "gluteus minimus"], "75297007"),
            (&["small bowel", "small intestine"], "30315005"),
            (&["vertebrae", "vertebra"], "51282000"),
            (&["left lung", "lungs"], "39607008"),
        ] {
            for p in prompts {
                assert_eq!(values(p), (ANATOMY, value), "{p}");
            }
        }
        assert_eq!(code_for("gluteus minimus").1.meaning, "Gluteus minimus muscle");
        // Category and laterality as the table gives them.
        assert_eq!(values("subcutaneous fat"), ("85756007", "67769002"));
        assert_eq!(values("liver tumor"), ("49755003", "108369006"));
        assert_eq!(segment_codes("kidney left").unwrap().modifier, Some(LEFT));
        assert_eq!(segment_codes("right lung").unwrap().modifier, Some(RIGHT));
        assert_eq!(segment_codes("kidney").unwrap().modifier, None);
        let cyst = segment_codes("left kidney cyst").unwrap();
        assert_eq!((cyst.property.meaning, cyst.modifier), ("Cyst", None));
        assert_eq!((cyst.region.unwrap().value, cyst.region_modifier), ("64033007", Some(LEFT)));
    }

    #[test]
    fn the_codes_named_here_are_the_tables() {
        let named = [
            ANATOMICAL_STRUCTURE,
            MORPHOLOGICALLY_ALTERED_STRUCTURE,
            LEFT,
            RIGHT,
            LUNG,
            URINARY_BLADDER,
            SMALL_INTESTINE,
            VERTEBRA,
        ];
        for code in named {
            let in_table = codes::structures().iter().any(|&(.., c)| c.present().any(|p| p == code));
            assert!(in_table, "{code:?}");
        }
    }

    #[test]
    fn lesions_and_unknown_prompts() {
        for p in ["liver lesion", "Lesions of the spleen", "lesion (liver)/segment 4", "kidney_lesion"] {
            assert_eq!(code_for(p), (MORPHOLOGICALLY_ALTERED_STRUCTURE, LESION), "{p}");
        }
        for p in ["", "left", "kidneys left", "the liver", "l1", "rib 3", "läsion der leber", "lesional"] {
            assert_eq!(code_for(p), (TISSUE, TISSUE), "{p}");
            assert_eq!(segment_codes(p), None, "{p}");
        }
    }

    #[test]
    fn one_code_per_spelling_and_one_meaning_per_code() {
        let mut by_spelling = std::collections::HashMap::new();
        let mut by_value = std::collections::HashMap::new();
        let mut spellings = 0;
        for &(name, names, codes) in structures() {
            assert!(!names.is_empty(), "{name}");
            for &s in names {
                // Lookup keys are lowercased, trimmed and single-spaced, so other spellings never match.
                let key = s.split_whitespace().collect::<Vec<_>>().join(" ");
                assert!(s == key && s == s.to_lowercase() && !s.contains('_'), "{name}: {s:?}");
                let seen = *by_spelling.entry(s).or_insert((name, codes));
                assert_eq!(seen.1, codes, "{s:?}: {} and {name}", seen.0);
                assert_eq!(segment_codes(s), Some(codes), "{s:?}");
                spellings += 1;
            }
            let all = [
                Some(codes.category),
                Some(codes.property),
                codes.modifier,
                codes.region,
                codes.region_modifier,
            ];
            for code in all.into_iter().flatten() {
                let meaning = *by_value.entry((code.scheme, code.value)).or_insert(code.meaning);
                assert_eq!(meaning, code.meaning, "{name}: {} {}", code.scheme, code.value);
            }
        }
        // No spelling twice, even with the same codes.
        assert_eq!(by_spelling.len(), spellings);
    }
}
