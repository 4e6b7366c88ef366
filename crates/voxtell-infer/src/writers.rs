//! Output writers of a batch ([`crate::batch`]): each turns a finished case into files in the
//! output folder, named as the official tool names them ([`crate::naming`]). A batch runs the
//! writers its caller chose, in order; a front end adds its own format by implementing
//! [`OutputWriter`].

use std::path::{Path, PathBuf};

use voxtell_io::{DicomSeries, RasVolume, WriteOptions};

use crate::error::Result;
use crate::job::Input;
use crate::masks::Masks;
use crate::naming::{self, OutputMode};
use crate::{preview, stats};

/// A finished case, as the writers see it.
#[derive(Debug, Clone, Copy)]
pub struct PredictedCase<'a> {
    /// The case name (outputs are named after it).
    pub name: &'a str,
    /// Where the image came from.
    pub input: &'a Input,
    /// The prompts, in order (prompt `i` is mask `i`).
    pub prompts: &'a [String],
    /// The masks (after any post-processing the batch applies).
    pub masks: &'a Masks,
    /// The image in the network's (S, A, R) layout, with the geometry of the source.
    pub image: &'a RasVolume,
    /// For a DICOM series input, the series read (its slices' instances and positions, its
    /// Patient, Study and Frame of Reference); `None` for other inputs.
    pub source: Option<&'a DicomSeries>,
}

/// One kind of output of a case.
pub trait OutputWriter: Send + Sync + std::fmt::Debug {
    /// The files this writer writes for case `case` with `prompts`: names relative to the
    /// output folder. A batch checks them before any work (two cases or two prompts that would
    /// write one file are an error) and, when it skips finished cases, looks for them.
    fn files(&self, case: &str, prompts: &[String]) -> Result<Vec<String>>;

    /// Refuse a job this writer cannot write for (e.g. a DICOM SEG of a NIfTI input), before
    /// any work: the error names the input.
    fn check(&self, _job: &crate::job::Job) -> Result<()> {
        Ok(())
    }

    /// Refuse a case once its image is read, before it is predicted: `source` is the DICOM
    /// series it was read from (`None` for other inputs). The error names the file at fault.
    fn check_source(&self, _job: &crate::job::Job, _source: Option<&DicomSeries>) -> Result<()> {
        Ok(())
    }

    /// Whether a case's outputs of this writer are all there (a batch skipping finished cases
    /// asks): by default every file of [`OutputWriter::files`] exists; a writer that writes one
    /// of several files says so itself.
    fn finished(&self, dir: &Path, case: &str, prompts: &[String]) -> bool {
        self.files(case, prompts).is_ok_and(|files| files.iter().all(|f| dir.join(f).exists()))
    }

    /// Whether the writer needs the blended logits ([`Masks::probabilities`]); a batch then
    /// keeps them.
    fn needs_logits(&self) -> bool {
        false
    }

    /// Write this writer's files for `case` into `dir` (each atomically, replacing an older
    /// file of the same name); returns the paths written, in the order of
    /// [`OutputWriter::files`].
    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>>;
}

/// Finished files replace older ones: a batch decides beforehand which cases to skip.
const REPLACE: WriteOptions = WriteOptions { overwrite: true };

/// Write file `i` of `files` (one per prompt) into `dir` with `write(i, path)`.
fn per_prompt(
    files: Vec<String>,
    dir: &Path,
    mut write: impl FnMut(usize, &Path) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let path = dir.join(f);
        write(i, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// One u8 NIfTI mask per prompt, `{case}_{prompt}.nii.gz` (the official default).
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskFiles;

impl OutputWriter for MaskFiles {
    fn files(&self, case: &str, prompts: &[String]) -> Result<Vec<String>> {
        naming::output_files(case, prompts, OutputMode::PerPrompt)
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>> {
        per_prompt(self.files(case.name, case.prompts)?, dir, |i, path| {
            case.masks.write_mask(i, path, REPLACE)
        })
    }
}

/// One label map per case, `{case}.nii.gz`: label `i + 1` for prompt `i`, later prompts
/// overwriting earlier ones (the official `--save-combined`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CombinedMap;

impl OutputWriter for CombinedMap {
    fn files(&self, case: &str, prompts: &[String]) -> Result<Vec<String>> {
        naming::output_files(case, prompts, OutputMode::Combined)
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for f in self.files(case.name, case.prompts)? {
            let path = dir.join(f);
            case.masks.write_combined(&path, REPLACE)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// f32 sigmoid maps, `{case}_{prompt}_prob.nii.gz`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbabilityMaps;

impl OutputWriter for ProbabilityMaps {
    fn files(&self, case: &str, prompts: &[String]) -> Result<Vec<String>> {
        Ok(prompts.iter().map(|p| naming::probability_file(case, p)).collect())
    }

    fn needs_logits(&self) -> bool {
        true
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>> {
        per_prompt(self.files(case.name, case.prompts)?, dir, |i, path| {
            case.masks.write_probabilities(i, path, REPLACE)
        })
    }
}

/// `{case}_statistics.json`: voxels, volume, bounding box, centroid and intensity of each mask
/// ([`stats::of_masks`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatisticsFile;

impl OutputWriter for StatisticsFile {
    fn files(&self, case: &str, _prompts: &[String]) -> Result<Vec<String>> {
        Ok(vec![naming::statistics_file(case)])
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>> {
        let path = dir.join(naming::statistics_file(case.name));
        let s = stats::of_masks(case.name, &case.input.describe(), case.image, case.masks)?;
        stats::write_statistics(&path, &s, true)?;
        Ok(vec![path])
    }
}

/// `{case}_preview.png`: axial, coronal and sagittal slices with the masks ([`preview`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PreviewImage;

impl OutputWriter for PreviewImage {
    fn files(&self, case: &str, _prompts: &[String]) -> Result<Vec<String>> {
        Ok(vec![naming::preview_file(case)])
    }

    fn write(&self, case: &PredictedCase<'_>, dir: &Path) -> Result<Vec<PathBuf>> {
        let path = dir.join(naming::preview_file(case.name));
        preview::of_masks(case.image, case.masks)?.write_png(&path, true)?;
        Ok(vec![path])
    }
}
