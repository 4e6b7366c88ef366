//! Test helpers that several VoxTell crates' tests share, so that each lives once: where the
//! fixtures are, reading a JSON manifest, unpacking a gzipped fixture (the tiny Qwen3 folder
//! among them), and validating a DICOM file with dciodvfy.
//!
//! A dev-dependency only: nothing here is part of any library. The helpers panic with the file
//! they were given, as a test should.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The workspace's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A JSON file parsed into `T` (a manifest, an expectation file).
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> T {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `cases` list most fixture manifests hold (`manifest.json`), each case of type `C`.
#[derive(Debug, serde::Deserialize)]
pub struct Manifest<C> {
    /// The cases, in file order.
    pub cases: Vec<C>,
}

/// The content of a gzipped file (every member, as `gzip -d` gives it).
pub fn gunzip(path: impl AsRef<Path>) -> Vec<u8> {
    use std::io::Read;
    let path = path.as_ref();
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

/// Unpack `fixtures/text/qwen-tiny` (a random 8-wide Qwen3 with a real Qwen tokenizer, whose
/// `tokenizer.json` is committed gzipped) into `dst`, created if needed: a folder
/// `QwenEmbedder::load` reads.
pub fn unpack_qwen_tiny(dst: &Path) {
    let src = fixtures().join("text/qwen-tiny");
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap_or_else(|e| panic!("{}: {e}", src.join(f).display()));
    }
    let tokenizer = dst.join("tokenizer.json");
    std::fs::write(&tokenizer, gunzip(src.join("tokenizer.json.gz")))
        .unwrap_or_else(|e| panic!("{}: {e}", tokenizer.display()));
}

/// Assert that dciodvfy (Debian's dicom3tools) reports no error for a DICOM file; skipped with
/// a note where it is not installed, unless `CI` is set.
pub fn dciodvfy(path: &Path) {
    let out = match std::process::Command::new("dciodvfy").arg("-new").arg(path).output() {
        Ok(out) => out,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("dciodvfy not installed (Debian dicom3tools): validation skipped");
            return;
        }
        Err(e) => panic!("CI is set but dciodvfy cannot run: {e}"),
    };
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy on {}:\n{report}", path.display());
}
