//! Print what VoxTell sees of a scan: shape, spacing, orientation code and intensity range.
//!
//! ```text
//! cargo run -p voxtell --example inspect -- path/to/ct.nii.gz [more files or DICOM folders...]
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: inspect FILE.nii[.gz] | DICOM_FOLDER ...");
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for path in &paths {
        match voxtell::io::read(path) {
            Ok(volume) => print!("{}", volume.summary()),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
