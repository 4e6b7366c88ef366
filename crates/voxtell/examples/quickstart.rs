//! The whole system on a fresh machine, offline, in seconds: a held-out synthetic torso CT
//! (regenerated from its seed, not stored), the embedded demo model (`assets/demo/`, a small
//! VoxTell trained by `voxtell train` on phantoms) and its prompt bank (all-MiniLM-L6-v2
//! vectors). It segments the scan with a few prompts, two of them paraphrases that no training
//! sample used, writes the masks, a preview PNG and statistics, and prints each prompt's Dice
//! against the phantom's truth.
//!
//! ```sh
//! cargo run --release -p voxtell --example quickstart [-- OUT_DIR]
//! ```
//!
//! The demo model knows phantoms only; real scans need the published VoxTell weights
//! (`voxtell predict -m ...`, see the README).

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use voxtell::demo::{Demo, demo_dir, repository_root};
use voxtell::infer::{naming, preview, stats};
use voxtell::io::{Volume, WriteOptions, write_nifti};

/// Prompts and the vocabulary key whose labels are the truth: default names, a training
/// synonym, and paraphrases that are in no training vocabulary ("the patient's right kidney",
/// "spinal column bones"; `evaluate_demo` scores every held-out paraphrase).
const PROMPTS: [(&str, &str); 6] = [
    ("liver", "liver+liver_lesion"),
    ("left kidney", "kidney_left"),
    ("the patient's right kidney", "kidney_right"),
    ("splenic organ", "spleen"),
    ("spinal column bones", "vertebrae"),
    ("aorta", "aorta"),
];

fn main() -> Result<(), Box<dyn Error>> {
    voxtell_alloc::tune_allocator();
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join("target/quickstart"));
    std::fs::create_dir_all(&out)?;
    let t0 = Instant::now();
    let mut demo = Demo::load(demo_dir())?;

    // A held-out phantom, written as the CT a user would have.
    let case = demo.held_out_case(0);
    let scan = out.join("phantom.nii.gz");
    let write = WriteOptions { overwrite: true };
    write_nifti(&scan, case.image.mapv(|v| v as i16).view(), &case.affine, write)?;
    println!(
        "held-out phantom (stored {}, spacing {:.1?} mm): {}",
        case.axcodes,
        case.spacing(),
        scan.display()
    );

    // Segment it as `voxtell predict` would: read the file, predict, write.
    let volume = voxtell::io::read(&scan)?;
    let texts: Vec<&str> = PROMPTS.iter().map(|(p, _)| *p).collect();
    let masks = demo.predictor.predict(&volume, &texts)?;
    let names = naming::output_files("phantom", masks.prompts(), naming::OutputMode::PerPrompt)?;
    for (i, name) in names.iter().enumerate() {
        masks.write_mask(i, out.join(name), write)?;
    }
    let image = Volume::to_ras(&volume)?;
    let png = out.join(naming::preview_file("phantom"));
    preview::of_masks(&image, &masks)?.write_png(&png, true)?;
    let statistics = stats::of_masks("phantom", &scan.display().to_string(), &image, &masks)?;
    stats::write_statistics(&out.join(naming::statistics_file("phantom")), &statistics, true)?;

    // Dice against the generator's truth.
    let scores = demo.score_masks(&case, &masks, &PROMPTS)?;
    println!("\n{:<30} {:>9} {:>9} {:>6}", "prompt", "voxels", "ml", "Dice");
    for (s, st) in scores.iter().zip(&statistics.prompts) {
        println!("{:<30} {:>9} {:>9.1} {:>6.3}", format!("{:?}", s.prompt), st.voxels, st.volume_ml, s.dice);
    }
    let worst = scores.iter().map(|s| s.dice).fold(f64::INFINITY, f64::min);
    println!(
        "\nlowest Dice {worst:.3}; masks, {} and {} in {} ({:.1} s)",
        naming::preview_file("phantom"),
        naming::statistics_file("phantom"),
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
