//! `ModelDir`: one reader and one writer of the model folder. The official fixture folders
//! (`plans.json` + `fold_0/checkpoint_final.pth`, from `tools/gen_fusion_fixtures.py`) open with
//! the sizes the plans and weights give; broken folders are errors that name the file at fault;
//! a written folder opens again with the same plans, weights and metadata, and an existing one
//! is never clobbered unless asked.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use voxtell_fusion::{
    Checkpoint, FusionError, ModelDir, ModelMeta, PlansNetwork, SpacingAxis, SpacingRange, TextEncoderSpec,
    VoxTellConfig,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fusion").join(name)
}

/// A copy of a fixture folder's `plans.json` and weights in `dst`.
fn copy_folder(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.join("fold_0")).unwrap();
    std::fs::copy(src.join("plans.json"), dst.join("plans.json")).unwrap();
    std::fs::copy(src.join("fold_0/checkpoint_final.pth"), dst.join("fold_0/checkpoint_final.pth")).unwrap();
}

/// The path an error names, for the variants that carry one.
fn error_path(e: &FusionError) -> Option<&Path> {
    match e {
        FusionError::File { path, .. } | FusionError::MissingKey { path, .. } => Some(path),
        _ => None,
    }
}

#[test]
fn the_published_layout_opens_with_the_sizes_of_plans_and_weights() {
    let dir = fixture("cfg_a");
    assert!(voxtell_fusion::is_model_dir(&dir));
    assert!(!voxtell_fusion::is_model_dir(&dir.join("fold_0")));
    let folder = ModelDir::open(&dir).unwrap();
    assert_eq!(folder.path(), dir);
    assert!(folder.weights_path().ends_with("fold_0/checkpoint_final.pth"));
    assert_eq!(folder.weights_path(), folder.checkpoint().path());
    assert!(folder.meta().is_none(), "the published folder has no voxtell.json");
    assert!(folder.plans().get("plans_name").is_some());

    let plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plans.json")).unwrap()).unwrap();
    assert_eq!(folder.plans(), &plans);
    let ckpt = Checkpoint::open(dir.join("fold_0/checkpoint_final.pth")).unwrap();
    let expected = VoxTellConfig::from_plans_and_checkpoint(&plans, &ckpt).unwrap();
    assert_eq!(folder.config(), &expected);
    let network = PlansNetwork::from_plans(&plans).unwrap();
    assert_eq!((network.arch, network.patch_size), (expected.arch.clone(), expected.patch_size));

    let model = folder.load(DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config(), folder.config());
}

#[test]
fn broken_folders_are_errors_that_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // No plans.json.
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("plans.json").as_path()), "{e}");

    // plans.json that is not JSON.
    std::fs::write(dir.join("plans.json"), "{not json").unwrap();
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("plans.json").as_path()), "{e}");
    assert!(e.to_string().contains("not valid JSON"), "{e}");

    // plans.json without the configuration VoxTell builds.
    std::fs::write(dir.join("plans.json"), r#"{"configurations": {"2d": {}}}"#).unwrap();
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("plans.json").as_path()), "{e}");
    assert!(e.to_string().contains("3d_fullres"), "{e}");

    // Plans but no weights: the error names the file the official layout has, and says so.
    std::fs::copy(fixture("cfg_a").join("plans.json"), dir.join("plans.json")).unwrap();
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("fold_0/checkpoint_final.pth").as_path()), "{e}");
    assert!(e.to_string().contains("no weights"), "{e}");

    // A model.safetensors that is not one: it is the file opened (preferred), and named.
    std::fs::write(dir.join("model.safetensors"), b"garbage that is not safetensors").unwrap();
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("model.safetensors").as_path()), "{e}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();

    // voxtell.json that is not valid metadata.
    copy_folder(&fixture("cfg_a"), dir);
    std::fs::write(dir.join("voxtell.json"), r#"{"decoder_layer": "four"}"#).unwrap();
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("voxtell.json").as_path()), "{e}");
    assert!(e.to_string().contains("invalid metadata"), "{e}");

    // voxtell.json naming a text encoder of another width than the weights take.
    let width = ModelDir::open(fixture("cfg_a")).unwrap().config().text_dim;
    let mut meta =
        ModelMeta { text_encoder: TextEncoderSpec::default_for_width(width + 1), ..ModelMeta::default() };
    std::fs::write(dir.join("voxtell.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    let e = ModelDir::open(dir).unwrap_err();
    assert_eq!(error_path(&e), Some(dir.join("voxtell.json").as_path()), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("width {}", width + 1)) && text.contains(&format!("{width}-wide")),
        "{text}"
    );

    // voxtell.json naming a memory stage the encoder does not have, or heads that do not divide
    // the query width.
    meta.text_encoder = TextEncoderSpec::default_for_width(width);
    let good = ModelDir::open(fixture("cfg_a")).unwrap();
    for (layer, heads, what) in
        [(99, 8, "decoder_layer 99"), (good.config().decoder_layer, 0, "attention_heads 0")]
    {
        meta.decoder_layer = layer;
        meta.attention_heads = heads;
        std::fs::write(dir.join("voxtell.json"), serde_json::to_string(&meta).unwrap()).unwrap();
        let e = ModelDir::open(dir).unwrap_err();
        assert_eq!(error_path(&e), Some(dir.join("voxtell.json").as_path()), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }

    // voxtell.json with a training spacing range that is no range.
    meta.decoder_layer = good.config().decoder_layer;
    meta.attention_heads = good.config().attention_heads;
    for (inplane, slice, what) in [
        ([5.0, 4.0], [5.0, 6.0], "training_spacing.inplane_mm [5.0, 4.0]"),
        ([4.0, 5.0], [0.0, 6.0], "training_spacing.slice_mm [0.0, 6.0]"),
    ] {
        meta.training_spacing = Some(SpacingRange { inplane_mm: inplane, slice_mm: slice });
        std::fs::write(dir.join("voxtell.json"), serde_json::to_string(&meta).unwrap()).unwrap();
        let e = ModelDir::open(dir).unwrap_err();
        assert_eq!(error_path(&e), Some(dir.join("voxtell.json").as_path()), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn training_spacing_is_optional_and_says_which_axis_a_scan_misses() {
    // A voxtell.json written before the field existed loads, without a range; one with it
    // round-trips.
    let old = r#"{"decoder_layer": 4, "attention_heads": 4, "text_encoder": {"id": "m", "dim": 384,
        "pooling": "mean", "normalize": true, "instruction": null}}"#;
    let meta: ModelMeta = serde_json::from_str(old).unwrap();
    assert_eq!(meta.training_spacing, None);
    assert!(!serde_json::to_string(&meta).unwrap().contains("training_spacing"));
    let range = SpacingRange { inplane_mm: [4.0, 5.0], slice_mm: [5.0, 6.0] };
    let with = ModelMeta { training_spacing: Some(range), ..meta };
    let back: ModelMeta = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
    assert_eq!(back, with);
    assert_eq!(range.describe(), "in-plane 4–5 mm, slices 5–6 mm");

    // Spacing along (S, A, R): slice first, then the two in-plane axes.
    assert!(range.outside([5.5, 4.5, 4.0]).is_empty());
    // f32 headers: a hair beyond an end is still within.
    assert!(range.outside([6.000_001, 4.999_999_5, 3.999_999_7]).is_empty());
    assert_eq!(range.outside([5.5, 2.0, 2.0]), [SpacingAxis::InPlane]);
    assert_eq!(range.outside([5.5, 4.5, 5.2]), [SpacingAxis::InPlane]);
    assert_eq!(range.outside([3.0, 4.5, 4.5]), [SpacingAxis::Slice]);
    assert_eq!(range.outside([7.0, 2.0, 4.5]), [SpacingAxis::Slice, SpacingAxis::InPlane]);
    assert!(SpacingRange { inplane_mm: [f64::NAN, 5.0], ..range }.validate().is_err());
}

#[test]
fn a_written_folder_opens_with_the_same_plans_weights_and_metadata() {
    let source = ModelDir::open(fixture("cfg_b")).unwrap();
    let meta = ModelMeta {
        decoder_layer: source.config().decoder_layer,
        attention_heads: source.config().attention_heads,
        text_encoder: TextEncoderSpec::default_for_width(source.config().text_dim),
        training_spacing: Some(SpacingRange { inplane_mm: [0.7, 1.5], slice_mm: [1.0, 5.0] }),
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nested/model");
    ModelDir::write(&out, source.plans(), source.checkpoint(), &meta, false).unwrap();
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["model.safetensors", "plans.json", "voxtell.json"], "no temporary files are left");

    let back = ModelDir::open(&out).unwrap();
    assert!(back.weights_path().ends_with("model.safetensors"));
    assert_eq!(back.plans(), source.plans());
    assert_eq!(back.meta(), Some(&meta));
    assert_eq!(back.config(), source.config());
    assert_eq!(back.checkpoint().keys(), source.checkpoint().keys());
    for key in source.checkpoint().keys() {
        let a = source.checkpoint().tensor(key, DType::F64, &Device::Cpu).unwrap().flatten_all().unwrap();
        let b = back.checkpoint().tensor(key, DType::F64, &Device::Cpu).unwrap().flatten_all().unwrap();
        assert_eq!(a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap(), "{key}");
    }

    // The metadata's overrides are what the reopened folder builds.
    let mut other = meta.clone();
    other.attention_heads = if source.config().query_dim.is_multiple_of(4) { 4 } else { 1 };
    ModelDir::write(&out, source.plans(), source.checkpoint(), &other, true).unwrap();
    assert_eq!(ModelDir::open(&out).unwrap().config().attention_heads, other.attention_heads);
}

#[test]
fn write_never_clobbers_unless_asked_and_refuses_a_folder_that_would_not_open() {
    let source = ModelDir::open(fixture("cfg_a")).unwrap();
    let width = source.config().text_dim;
    let meta = ModelMeta { text_encoder: TextEncoderSpec::default_for_width(width), ..ModelMeta::default() };
    let tmp = tempfile::tempdir().unwrap();

    // Any one of the three files is enough to refuse, and nothing is written then.
    let out = tmp.path().join("has_meta");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("voxtell.json"), b"precious").unwrap();
    let e = ModelDir::write(&out, source.plans(), source.checkpoint(), &meta, false).unwrap_err();
    assert_eq!(error_path(&e), Some(out.join("voxtell.json").as_path()), "{e}");
    assert!(e.to_string().contains("overwriting was not requested"), "{e}");
    assert_eq!(std::fs::read(out.join("voxtell.json")).unwrap(), b"precious");
    assert!(!out.join("model.safetensors").exists() && !out.join("plans.json").exists());

    // A complete folder: refused, naming the weights first; replaced with overwrite.
    let out = tmp.path().join("complete");
    ModelDir::write(&out, source.plans(), source.checkpoint(), &meta, false).unwrap();
    let before = std::fs::read(out.join("plans.json")).unwrap();
    let e = ModelDir::write(&out, source.plans(), source.checkpoint(), &meta, false).unwrap_err();
    assert_eq!(error_path(&e), Some(out.join("model.safetensors").as_path()), "{e}");
    assert_eq!(std::fs::read(out.join("plans.json")).unwrap(), before);
    ModelDir::write(&out, source.plans(), source.checkpoint(), &meta, true).unwrap();

    // Metadata that does not fit the weights: refused before the folder is even created.
    let out = tmp.path().join("misfit");
    let wrong = ModelMeta { text_encoder: TextEncoderSpec::default_for_width(width + 3), ..meta };
    let e = ModelDir::write(&out, source.plans(), source.checkpoint(), &wrong, false).unwrap_err();
    assert!(e.to_string().contains("voxtell.json") && e.to_string().contains("wide"), "{e}");
    assert!(!out.exists());
}
