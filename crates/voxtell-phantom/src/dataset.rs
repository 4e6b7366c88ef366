//! A phantom dataset on disk: the nnU-Net raw layout (`imagesTr/`, `labelsTr/`,
//! `dataset.json`) that `voxtell-train` reads, with the generator's settings recorded so that the
//! cases can be regenerated.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Value, json};
use voxtell_io::{WriteOptions, write_nifti};

use crate::case::generate_case;
use crate::error::{PhantomError, Result};
use crate::options::{GENERATOR_VERSION, LABELS, PhantomOptions};

/// The identifier of case `index` of dataset `name`: `{name}_{index:03}`.
pub fn case_id(name: &str, index: usize) -> String {
    format!("{name}_{index:03}")
}

/// The `dataset.json` of a phantom dataset (nnU-Net raw format, plus the generator's settings
/// under `"phantom"` so that the data can be regenerated).
///
/// The generator's name in the file (`"voxtell-train phantom"`) is an identifier of the data,
/// kept from when the generator lived in `voxtell-train`, so that datasets written before and
/// after the move are the same files.
pub fn dataset_json(name: &str, options: &PhantomOptions) -> Value {
    let labels: serde_json::Map<String, Value> =
        LABELS.iter().map(|&(n, v)| (n.to_string(), json!(v))).collect();
    json!({
        "name": name,
        "description": "Synthetic torso CT phantoms (voxtell-train phantom generator); \
                        image intensities in HU; RAS+ world coordinates.",
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": options.cases,
        "file_ending": ".nii.gz",
        "phantom": {
            "generator": "voxtell-train phantom",
            "version": GENERATOR_VERSION,
            "options": options,
        },
    })
}

/// Write `options.cases` phantoms as the nnU-Net raw dataset `{dir}/{name}`:
/// `imagesTr/{name}_{i:03}_0000.nii.gz` (int16 HU), `labelsTr/{name}_{i:03}.nii.gz` (uint8) and
/// `dataset.json` (written last). Cases are generated in parallel; the files do not depend on the
/// number of threads. The dataset folder must not exist yet. Returns the dataset folder.
pub fn write_dataset(dir: impl AsRef<Path>, name: &str, options: &PhantomOptions) -> Result<PathBuf> {
    options.validate()?;
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(PhantomError::Name(name.to_string()));
    }
    if options.cases == 0 {
        return Err(PhantomError::Options("cases must be at least 1".into()));
    }
    let root = dir.as_ref().join(name);
    if root.exists() {
        return Err(PhantomError::file(&root, "already exists; remove it to regenerate the phantom dataset"));
    }
    let images = root.join("imagesTr");
    let labels = root.join("labelsTr");
    for d in [&images, &labels] {
        std::fs::create_dir_all(d).map_err(|e| PhantomError::file(d, e))?;
    }
    let write = WriteOptions { overwrite: false };
    (0..options.cases).into_par_iter().try_for_each(|i| -> Result<()> {
        let case = generate_case(options, i);
        let id = case_id(name, i);
        let image = case.image.mapv(|v| v as i16);
        write_nifti(images.join(format!("{id}_0000.nii.gz")), image.view(), &case.affine, write)?;
        write_nifti(labels.join(format!("{id}.nii.gz")), case.labels.view(), &case.affine, write)?;
        Ok(())
    })?;
    let json_path = root.join("dataset.json");
    let text = serde_json::to_string_pretty(&dataset_json(name, options))
        .map_err(|e| PhantomError::file(&json_path, e))?;
    voxtell_io::atomic::write_bytes(&json_path, (text + "\n").as_bytes(), true)?;
    Ok(root)
}
