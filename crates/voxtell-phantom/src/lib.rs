//! Deterministic torso-CT phantoms with organ masks, for training and evaluating text-prompted
//! segmentation without patient data.
//!
//! [`generate_case`] draws one phantom from `(seed, index)` alone: a torso (skin, subcutaneous
//! fat, muscle wall, ribs, bowel, stomach, pelvis, heart) with the labelled structures of
//! [`LABELS`] placed anatomically — liver on the patient's right, spleen on the left, kidneys
//! either side of the spine (the right one lower) in perirenal fat, with liver and spleen only
//! anterior and lateral of them (never behind a kidney), the spleen's lower pole at the left
//! kidney's upper pole, vertebrae on the posterior midline, the aorta anterior-left of the spine,
//! lungs above the diaphragm, the urinary bladder low and anterior in perivesical fat, hypodense
//! lesions inside the liver (by default 45–65 HU darker than it, 15–28 mm in radius, in 65 % of
//! the cases; and sometimes a cyst inside a kidney, labelled as part of that kidney). Sizes
//! (±20 %), positions (±12 mm), shapes (smooth low-frequency deformations), intensities (HU, ±15
//! per tissue), noise (by default σ 6–14 HU, slightly correlated in-plane), partial volume blur,
//! voxel spacing (by default 4–5 mm in-plane, 5–6 mm between slices) and, for about a third of
//! the cases, a non-RAS storage order all vary per case. [`write_dataset`] writes a dataset in
//! the nnU-Net raw layout that `voxtell_train::data::Dataset` reads, [`vocabulary_json`] its prompt
//! vocabulary, and [`paraphrases`] held-out prompts for evaluation.
//!
//! # Defaults
//!
//! [`PhantomOptions::default`] is the training distribution of the embedded demo model
//! (`assets/demo/phantom.json` of the repository, apart from `cases` and `seed`), so that any
//! phantom made with the default settings is one that model was trained to segment. Other
//! settings (finer voxels, smaller or fainter lesions, more noise) are valid phantoms, but
//! outside what the demo model has seen. The defaults of generator version 1 before the demo
//! model's settings became the defaults (in-plane 2.2–3.2 mm, slices 2.5–4 mm, noise σ 10–25 HU,
//! lesions 9–20 mm and 35–55 HU darker in 80 % of the cases) are still reachable through the
//! options; a dataset's `dataset.json` records every option, so it regenerates the same phantoms
//! whatever the defaults.
//!
//! # Coordinates
//!
//! World coordinates are NIfTI / nibabel **RAS+** millimetres: x grows toward the patient's
//! **Right**, y toward Anterior, z toward Superior (DICOM's LPS+ has the opposite x and y). The
//! patient's right side (the liver) therefore has the larger x, and in the `(S, A, R)` array that
//! `voxtell_io::read(path)?.to_ras()?` gives, array axis 2 grows toward the patient's right. A
//! radiological display (such as `voxtell_infer::preview`) shows the patient's right on the
//! image's left.
//!
//! # Determinism
//!
//! Every case draws from its own random streams `Rng::stream(seed, &[index, part])`, one per part
//! — geometry, intensities, lesions, grid, noise and storage orientation — (so
//! that, for instance, `include_lesions = false` or `non_ras_fraction = 0` leave the rest of a
//! case unchanged). Results are identical from run to run and do not depend on the number of
//! threads; as the geometry uses the platform's `sin`, `exp` and `powf`, bit-identity across
//! platforms or toolchains is not promised (a boundary voxel could differ). Held-out phantoms
//! are regenerated from their seed rather than stored.

//!
//! # Crate layout
//!
//! - `case.rs`: label values, [`PhantomOptions`], [`PhantomCase`] and [`generate_case`];
//! - `anatomy.rs` and `geometry.rs`: the torso's parts and the shapes and grid they are painted
//!   with (private);
//! - `dataset.rs`: [`write_dataset`] and [`dataset_json`] (the nnU-Net raw layout);
//! - `vocabulary.rs`: [`vocabulary_json`], [`paraphrases`] and [`NEGATIVES_KEY`];
//! - [`rng`]: the seeded random streams (also those of `voxtell-train`'s sampling and
//!   augmentation).

mod anatomy;
mod case;
mod dataset;
mod error;
mod geometry;
mod options;
pub mod rng;
mod vocabulary;

pub use case::{PhantomCase, generate_case, world};
pub use dataset::{case_id, dataset_json, write_dataset};
pub use error::{PhantomError, Result};
pub use options::{
    AORTA, BACKGROUND, GENERATOR_VERSION, HU_RANGE, KIDNEY_LEFT, KIDNEY_RIGHT, LABELS, LIVER, LIVER_LESION,
    LUNG_LEFT, LUNG_RIGHT, PhantomOptions, SPLEEN, URINARY_BLADDER, VERTEBRAE,
};
pub use rng::Rng;
pub use vocabulary::{NEGATIVES_KEY, label_values, paraphrases, vocabulary_entries, vocabulary_json};
