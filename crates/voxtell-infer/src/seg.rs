//! [`DicomSegFile`]: a case's masks as one DICOM SEG over the slices of its source series
//! (`{case}_seg.dcm`, [`voxtell_io::dicom_seg`]), and the codes its segments carry.
//!
//! - Each prompt whose mask is not empty is one segment, numbered 1… in prompt order; the masks
//!   go back from the network's (S, A, R) layout to the source slices' own grid exactly as for
//!   NIfTI output, so every orientation the reader takes is written back as it came.
//! - When every mask is empty no SEG is written: `{case}_seg.json` says why (it counts as the
//!   case's DICOM output when finished cases are skipped).
//! - Category and type codes come from [`code_for`]: SNOMED CT codes of the demo's structures and
//!   common organs (the codes are facts; TotalSegmentator's SNOMED mapping lists the same), else
//!   SCT 85756007 Tissue / Tissue.

use std::path::{Path, PathBuf};

use ndarray::ArrayView3;
use voxtell_io::DicomSeries;
use voxtell_io::dicom_seg::{Code, SegBuilder, SegOptions, SegSegment, TISSUE};

use crate::batch::{Input, Job};
use crate::error::{InferError, Result};
use crate::writers::{OutputWriter, PredictedCase};

const ANATOMY: Code = Code { value: "123037004", scheme: "SCT", meaning: "Anatomical Structure" };
const ALTERED: Code = Code { value: "49755003", scheme: "SCT", meaning: "Morphologically Altered Structure" };

/// (lowercased prompt, type code meaning, SNOMED CT code): structures under "Anatomical
/// Structure".
const ORGANS: &[(&str, &str, &str)] = &[
    ("liver", "Liver", "10200004"),
    ("spleen", "Spleen", "78961009"),
    ("kidney", "Kidney", "64033007"),
    ("left kidney", "Kidney", "64033007"),
    ("right kidney", "Kidney", "64033007"),
    ("aorta", "Aorta", "15825003"),
    ("pancreas", "Pancreas", "15776009"),
    ("lung", "Lung", "39607008"),
    ("lungs", "Lung", "39607008"),
    ("left lung", "Lung", "39607008"),
    ("right lung", "Lung", "39607008"),
    ("heart", "Heart", "80891009"),
    ("stomach", "Stomach", "69695003"),
    ("gallbladder", "Gallbladder", "28231008"),
    ("urinary bladder", "Urinary bladder", "89837001"),
    ("bladder", "Urinary bladder", "89837001"),
    ("brain", "Brain", "12738006"),
    ("prostate", "Prostate", "41216001"),
    ("esophagus", "Esophagus", "32849002"),
    ("trachea", "Trachea", "44567001"),
    ("colon", "Colon", "71854001"),
    ("small intestine", "Small intestine", "30315005"),
    ("duodenum", "Duodenum", "38848004"),
    ("adrenal gland", "Adrenal gland", "23451007"),
    ("thyroid gland", "Thyroid", "69748006"),
    ("spinal cord", "Spinal cord", "2748008"),
];

/// The category and type codes of a prompt: an exact match of the lowercased, trimmed prompt in
/// the organ table, "Lesion" under "Morphologically Altered Structure" for prompts that name a
/// lesion, else Tissue / Tissue.
pub fn code_for(prompt: &str) -> (Code, Code) {
    let p = prompt.trim().to_lowercase();
    if let Some(&(_, meaning, value)) = ORGANS.iter().find(|(name, ..)| *name == p) {
        return (ANATOMY, Code { value, scheme: "SCT", meaning });
    }
    if p.split(|c: char| !c.is_alphanumeric()).any(|w| w == "lesion" || w == "lesions") {
        return (ALTERED, Code { value: "52988006", scheme: "SCT", meaning: "Lesion" });
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
}
