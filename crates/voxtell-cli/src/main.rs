//! The `voxtell` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use voxtell::io::{DicomOptions, read_dicom_series, read_nifti};

/// VoxTell: text-prompted segmentation of 3-D CT, MR and PET scans.
#[derive(Debug, Parser)]
#[command(name = "voxtell", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print shape, spacing, orientation, affine and intensity range of scans
    /// (NIfTI files or DICOM series folders).
    Info {
        /// NIfTI files (.nii, .nii.gz) or folders holding one DICOM series.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// SeriesInstanceUID to read from a folder holding several DICOM series.
        #[arg(long)]
        series: Option<String>,
        /// Also print the array layout the network sees (after RAS reorientation).
        #[arg(long)]
        ras: bool,
    },
    /// Convert a model folder (plans.json + fold_0/checkpoint_final.pth) into one that loads
    /// without the pickle reader: plans.json, model.safetensors (canonical keys) and voxtell.json.
    Convert {
        /// The model folder to read.
        model: PathBuf,
        /// The folder to write (created if missing).
        out: PathBuf,
        /// Replace an existing model.safetensors in the output folder.
        #[arg(long)]
        overwrite: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { paths, series, ras } => info(&paths, series, ras),
        Command::Convert { model, out, overwrite } => match voxtell::fusion::convert(&model, &out, overwrite)
        {
            Ok(()) => {
                println!("wrote {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn info(paths: &[PathBuf], series: Option<String>, ras: bool) -> ExitCode {
    let mut failed = Vec::new();
    for path in paths {
        let volume = if path.is_dir() {
            read_dicom_series(path, &DicomOptions { series_uid: series.clone() })
        } else {
            read_nifti(path)
        };
        let result = volume.and_then(|v| {
            print!("{}", v.summary());
            if ras {
                let r = v.to_ras()?;
                let [s, a, rr] = r.geometry.ras_shape();
                let [ss, sa, sr] = r.geometry.spacing();
                println!(
                    "  network layout (S, A, R): {s} × {a} × {rr}, spacing {ss:.4} × {sa:.4} × {sr:.4} mm"
                );
            }
            Ok(())
        });
        if let Err(e) = result {
            eprintln!("error: {e}");
            failed.push(path.display().to_string());
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} of {} inputs failed: {}", failed.len(), paths.len(), failed.join(", "));
        ExitCode::FAILURE
    }
}
