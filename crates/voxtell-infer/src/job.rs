//! The cases of a batch: where each image comes from ([`Input`]), its prompts and name
//! ([`Job`]), the flag that cancels it ([`CancelToken`]), and the two ways `voxtell predict`
//! builds a list of them ([`jobs_from_inputs`], [`jobs_from_json`]).
//!
//! A leaf under [`crate::batch`] (which runs the jobs) and [`crate::writers`] (which writes what a
//! job produced): both name a job, neither is named here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use voxtell_io::{DicomOptions, DicomSeries, RasVolume, Volume};

use crate::error::{InferError, Result};
use crate::naming;

/// Where a case's image comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A NIfTI file (`.nii`, `.nii.gz`) or a folder holding one DICOM series.
    Path(PathBuf),
    /// A volume already in memory.
    Volume(Arc<Volume>),
    /// A volume already reoriented to the network's (S, A, R) layout (e.g. an image a server
    /// holds for several jobs); shared, not copied.
    Ras(Arc<RasVolume>),
}

impl Input {
    /// The path, or `(in memory)`: how records, statistics and messages name the source.
    pub fn describe(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Volume(_) | Input::Ras(_) => "(in memory)".to_string(),
        }
    }

    /// Read the image and reorient it to the network's (S, A, R) layout; `dicom` chooses the
    /// series of a DICOM folder.
    pub fn read_ras(&self, dicom: &DicomOptions) -> Result<Arc<RasVolume>> {
        Ok(self.read_ras_with_source(dicom)?.0)
    }

    /// [`Input::read_ras`], and for a DICOM folder the description of the series read (its
    /// slices' instances and positions, its Patient, Study and Frame of Reference), which a
    /// DICOM SEG refers to.
    pub fn read_ras_with_source(
        &self,
        dicom: &DicomOptions,
    ) -> Result<(Arc<RasVolume>, Option<Arc<DicomSeries>>)> {
        let (volume, source) = match self {
            Input::Path(p) if p.is_dir() => {
                let (volume, source) = voxtell_io::read_dicom_series_with_source(p, dicom)?;
                (volume, Some(Arc::new(source)))
            }
            Input::Path(p) => (voxtell_io::read(p)?, None),
            Input::Volume(v) => return Ok((Arc::new(v.to_ras()?), None)),
            Input::Ras(r) => return Ok((Arc::clone(r), None)),
        };
        Ok((Arc::new(volume.to_ras()?), source))
    }
}

impl Input {
    /// Bytes a reading thread holds at most while reading this input and preparing it for a
    /// network of `patch` ([`crate::preprocess::prepare`]): the decoded volume, its (S, A, R)
    /// copy and the prepared copy, padded to the patch. From the header for a NIfTI file; for a
    /// DICOM folder from its files' sizes (2 bytes a voxel, uncompressed; compressed series
    /// are underestimated); 0 when the input cannot be looked at (reading it will say why).
    pub fn estimated_bytes(&self, patch: [usize; 3]) -> u64 {
        let voxels = match self {
            Input::Volume(v) => v.data.len() as u64,
            Input::Ras(r) => r.data.len() as u64,
            Input::Path(p) if p.is_dir() => folder_bytes(p) / 2,
            Input::Path(p) => nifti_voxels(p).unwrap_or(0),
        };
        if voxels == 0 {
            return 0;
        }
        let padded = voxels.max(patch.iter().map(|&d| d as u64).product());
        (2 * voxels + padded).saturating_mul(4)
    }
}

/// The voxels a NIfTI file's header claims (only the start of the file is read).
fn nifti_voxels(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path).ok()?.take(64 * 1024).read_to_end(&mut head).ok()?;
    Some(voxtell_io::nifti_extent(&head, path).ok()?.voxels())
}

/// The bytes of the files directly in `folder`.
fn folder_bytes(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else { return 0 };
    entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

/// A flag that stops one job, or a whole batch, from another thread. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel: a job not started yet is not started, a running prediction stops after its
    /// current tile; nothing is written for it.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One case: an image, its prompts and its name.
#[derive(Debug, Clone)]
pub struct Job {
    /// The case name; outputs are named after it.
    pub name: String,
    /// The image.
    pub input: Input,
    /// The prompts, in order.
    pub prompts: Vec<String>,
    /// Cancels this job alone.
    pub cancel: CancelToken,
}

impl Job {
    /// A job for a NIfTI file or DICOM series folder, named as the official tool names it
    /// ([`naming::case_name`]).
    pub fn from_path(path: impl Into<PathBuf>, prompts: Vec<String>) -> Job {
        let path = path.into();
        Job { name: naming::case_name(&path), input: Input::Path(path), prompts, cancel: CancelToken::new() }
    }

    /// A job for a volume in memory.
    pub fn from_volume(name: impl Into<String>, volume: Arc<Volume>, prompts: Vec<String>) -> Job {
        Job { name: name.into(), input: Input::Volume(volume), prompts, cancel: CancelToken::new() }
    }
}

/// Jobs for `inputs` with the same `prompts` each, as `voxtell predict -i` takes them: one
/// folder of NIfTI files (every `*.nii` / `*.nii.gz` in it, sorted by name), NIfTI files in the
/// given order, or folders that each hold one DICOM series (one case per folder). A path given
/// twice is one case.
pub fn jobs_from_inputs(inputs: &[PathBuf], prompts: &[String]) -> Result<Vec<Job>> {
    if inputs.is_empty() {
        return Err(InferError::Option { option: "inputs", reason: "no input given".to_string() });
    }
    if prompts.is_empty() {
        return Err(InferError::Option { option: "prompts", reason: "no prompts given".to_string() });
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut nifti: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| {
                    InferError::Invalid(format!("{}: cannot read the folder: {e}", input.display()))
                })?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_nifti(p))
                .collect();
            let dicom = voxtell_io::is_dicom_folder(input);
            let invalid = |what: &str| Err(InferError::Invalid(format!("{}: {what}", input.display())));
            match (nifti.is_empty(), dicom) {
                (false, true) => return invalid("holds both NIfTI files and a DICOM series"),
                // Named after the folder, also when given as `.` or `..`.
                (true, true) => out.push(std::fs::canonicalize(input).unwrap_or_else(|_| input.clone())),
                (false, false) if inputs.len() != 1 => {
                    return invalid("a folder of NIfTI files must be the only input");
                }
                (false, false) => {
                    nifti.sort();
                    out.extend(nifti);
                }
                (true, false) => return invalid("no NIfTI files and no DICOM series in the folder"),
            }
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            return Err(InferError::Invalid(format!("{}: no such file or folder", input.display())));
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out.into_iter().map(|p| Job::from_path(p, prompts.to_vec())).collect())
}

fn is_nifti(p: &Path) -> bool {
    let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

/// Jobs from a JSON list `[{"image": PATH, "prompts": ["..", ..] or ".."}, ..]` (the official
/// jobs format). A folder given as `.` or `..` is a case named after the folder itself.
pub fn jobs_from_json(text: &str) -> Result<Vec<Job>> {
    let invalid = |reason: String| InferError::Option { option: "jobs", reason };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let list = value
        .as_array()
        .ok_or_else(|| invalid("must be a JSON list of {\"image\", \"prompts\"}".to_string()))?;
    list.iter()
        .enumerate()
        .map(|(i, job)| {
            let image = job
                .get("image")
                .and_then(|v| v.as_str())
                .ok_or_else(|| invalid(format!("job {i}: \"image\" must be a path string")))?;
            let prompts = match job.get("prompts") {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|p| p.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid(format!("job {i}: \"prompts\" must hold strings")))?,
                _ => {
                    return Err(invalid(format!(
                        "job {i}: \"prompts\" must be a string or a list of strings"
                    )));
                }
            };
            let path = PathBuf::from(image);
            let path = if path.is_dir() { std::fs::canonicalize(&path).unwrap_or(path) } else { path };
            Ok(Job::from_path(path, prompts))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_come_from_the_nifti_header_or_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let identity = voxtell_io::orientation::IDENTITY;
        let volume = Volume::new(ndarray::Array3::<f32>::zeros((40, 30, 20)), identity);
        let path = dir.path().join("a.nii.gz");
        voxtell_io::write_nifti(&path, volume.data.view(), &identity, voxtell_io::WriteOptions::default())
            .unwrap();
        let patch = [16, 16, 16];
        let want = (2 * 24_000 + 24_000) * 4;
        assert_eq!(Input::Path(path).estimated_bytes(patch), want);
        assert_eq!(Input::Volume(Arc::new(volume)).estimated_bytes(patch), want);
        // Padded up to a larger patch.
        let small = Volume::new(ndarray::Array3::<f32>::zeros((4, 4, 4)), identity);
        assert_eq!(Input::Volume(Arc::new(small)).estimated_bytes(patch), (2 * 64 + 4096) * 4);
        // What cannot be looked at is read (and fails there, saying why).
        assert_eq!(Input::Path(dir.path().join("missing.nii.gz")).estimated_bytes(patch), 0);
    }
}
