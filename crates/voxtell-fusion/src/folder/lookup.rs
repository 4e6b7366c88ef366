//! Where the published model folder and embedding bank are found: a path the caller gives,
//! else an environment variable, else the local Hugging Face cache — downloaded into it first
//! only when the crate is built with the `download` feature.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{PLANS_FILE, PTH_FILE, PTH_FOLDER};
use crate::error::{FusionError, Result};
use crate::published::{PUBLISHED_BANK, PUBLISHED_FOLDER, PUBLISHED_REPO, VOXTELL_EMBEDDINGS, VOXTELL_MODEL};

/// Find the model folder: `explicit` when given, else `$VOXTELL_MODEL` when set and not empty,
/// else the published folder ([`PUBLISHED_REPO`], [`PUBLISHED_FOLDER`]) in the Hugging Face
/// cache (`$HF_HOME/hub`, else `~/.cache/huggingface/hub`), downloaded there first when built
/// with the `download` feature. The folder is only found here, not checked: open it with
/// [`crate::ModelDir::open`]. [`FusionError::NoModel`] when none is found.
pub fn resolve_model_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    resolve_model_dir_in(explicit, std::env::var_os(VOXTELL_MODEL), &hf_hub::Cache::from_env())
}

/// Find the embedding bank: `explicit` when given, else `$VOXTELL_EMBEDDINGS` when set and not
/// empty, else the published bank ([`PUBLISHED_BANK`]) in the Hugging Face cache (downloaded
/// first with the `download` feature); `None` when there is none.
pub fn resolve_bank(explicit: Option<&Path>) -> Option<PathBuf> {
    resolve_bank_in(explicit, std::env::var_os(VOXTELL_EMBEDDINGS), &hf_hub::Cache::from_env())
}

/// Where [`resolve_bank`] looked for `explicit`, as words for a message when it gave no bank or
/// an empty one: the path given or `$VOXTELL_EMBEDDINGS` (then that bank is empty), else the
/// published bank's place in the Hugging Face cache.
pub fn bank_search_places(explicit: Option<&Path>) -> String {
    if let Some(p) = explicit {
        return format!("{}, which holds no prompts", p.display());
    }
    if let Some(v) = std::env::var_os(VOXTELL_EMBEDDINGS).filter(|v| !v.is_empty()) {
        return format!("${VOXTELL_EMBEDDINGS}, {}, which holds no prompts", Path::new(&v).display());
    }
    let cache = hf_hub::Cache::from_env();
    format!(
        "${VOXTELL_EMBEDDINGS} (not set), then {PUBLISHED_BANK} of {PUBLISHED_REPO} in the Hugging Face cache {} \
         (give one with --embeddings)",
        cache.path().display()
    )
}

/// [`resolve_model_dir`] with the environment variable's value and the cache given.
fn resolve_model_dir_in(
    explicit: Option<&Path>,
    env: Option<OsString>,
    cache: &hf_hub::Cache,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let plans = hub_file(cache, &format!("{PUBLISHED_FOLDER}/{PLANS_FILE}"));
    let weights = hub_file(cache, &format!("{PUBLISHED_FOLDER}/{PTH_FOLDER}/{PTH_FILE}"));
    match (plans, weights) {
        (Ok(plans), Ok(_)) => Ok(plans.parent().map(Path::to_path_buf).unwrap_or_default()),
        (Err(reason), _) | (_, Err(reason)) => Err(FusionError::NoModel { reason }),
    }
}

/// [`resolve_bank`] with the environment variable's value and the cache given.
fn resolve_bank_in(explicit: Option<&Path>, env: Option<OsString>, cache: &hf_hub::Cache) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    hub_file(cache, PUBLISHED_BANK).ok()
}

/// A file of [`PUBLISHED_REPO`] from the cache, downloaded first with the `download` feature;
/// else why not.
fn hub_file(cache: &hf_hub::Cache, file: &str) -> std::result::Result<PathBuf, String> {
    if let Some(p) = cache.model(PUBLISHED_REPO.to_string()).get(file) {
        return Ok(p);
    }
    download(cache, file)
}

/// Fetch a file of [`PUBLISHED_REPO`] into the cache (`download` feature).
#[cfg(feature = "download")]
fn download(cache: &hf_hub::Cache, file: &str) -> std::result::Result<PathBuf, String> {
    let failed = |e: hf_hub::api::sync::ApiError| format!("downloading {file} failed: {e}");
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(true)
        .build()
        .map_err(failed)?;
    api.model(PUBLISHED_REPO.to_string()).get(file).map_err(failed)
}

/// Without the `download` feature nothing is fetched.
#[cfg(not(feature = "download"))]
fn download(_cache: &hf_hub::Cache, _file: &str) -> std::result::Result<PathBuf, String> {
    Err("this build does not download; build with the `download` feature or fetch them with huggingface-cli"
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Hugging Face cache in `root` holding `files` of the published repository at one
    /// snapshot, laid out as hf-hub lays it out.
    fn cache_with(root: &Path, files: &[&str]) -> hf_hub::Cache {
        let repo = root.join("models--mrokuss--VoxTell");
        std::fs::create_dir_all(repo.join("refs")).expect("refs");
        std::fs::write(repo.join("refs/main"), "abc123").expect("ref");
        for f in files {
            let p = repo.join("snapshots/abc123").join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("snapshot");
            std::fs::write(p, b"x").expect("file");
        }
        hf_hub::Cache::new(root.to_path_buf())
    }

    #[test]
    #[cfg_attr(feature = "download", ignore = "an empty cache would be filled from the network")]
    fn the_model_folder_is_the_given_path_then_the_variable_then_the_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let empty = cache_with(&tmp.path().join("empty"), &[]);
        let given = Path::new("/models/mine");
        assert_eq!(resolve_model_dir_in(Some(given), Some("/env".into()), &empty).expect("given"), given);
        assert_eq!(resolve_model_dir_in(None, Some("/env".into()), &empty).expect("env"), Path::new("/env"));

        // An empty variable counts as unset; with nothing cached the error says what was tried.
        let err = resolve_model_dir_in(None, Some("".into()), &empty).expect_err("nothing").to_string();
        for part in
            ["option `model`", "$VOXTELL_MODEL", "mrokuss/VoxTell", "voxtell_v1.1", "Hugging Face cache"]
        {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }

        // Plans without the weights are not a model.
        let half = cache_with(&tmp.path().join("half"), &["voxtell_v1.1/plans.json"]);
        assert!(matches!(resolve_model_dir_in(None, None, &half), Err(FusionError::NoModel { .. })));

        let full = cache_with(
            &tmp.path().join("full"),
            &["voxtell_v1.1/plans.json", "voxtell_v1.1/fold_0/checkpoint_final.pth"],
        );
        let dir = resolve_model_dir_in(None, None, &full).expect("cached");
        assert!(dir.ends_with("snapshots/abc123/voxtell_v1.1"), "{dir:?}");
    }

    #[test]
    #[cfg_attr(feature = "download", ignore = "an empty cache would be filled from the network")]
    fn the_bank_is_the_given_path_then_the_variable_then_the_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let empty = cache_with(&tmp.path().join("empty"), &[]);
        let given = Path::new("bank.npz");
        assert_eq!(resolve_bank_in(Some(given), Some("/env.npz".into()), &empty).as_deref(), Some(given));
        assert_eq!(
            resolve_bank_in(None, Some("/env.npz".into()), &empty).as_deref(),
            Some(Path::new("/env.npz"))
        );
        assert_eq!(resolve_bank_in(None, Some("".into()), &empty), None);
        let cached = cache_with(&tmp.path().join("full"), &[PUBLISHED_BANK]);
        let bank = resolve_bank_in(None, None, &cached).expect("cached");
        assert!(bank.ends_with("snapshots/abc123/embeddings/voxtell_v1.1/text_embeddings.npz"), "{bank:?}");
    }
}
