//! Small VoxTell models built and saved by the official classes (`tools/gen_fusion_fixtures.py`:
//! `plans.json` + `fold_0/checkpoint_final.pth` with every alias and nnU-Net's other pickle
//! entries) load unchanged and give the official memory, mask embeddings, logits and
//! deep-supervision maps: within 1e-4·max|ref| in f32 and 1e-6·max|ref| in f64.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use voxtell_fusion::{Checkpoint, VoxTellModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fusion")
}

fn model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("plans.json").exists())
        .collect();
    dirs.sort();
    dirs
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> f64 {
    let (a, b) = (ours.to_dtype(DType::F64).unwrap(), theirs.to_dtype(DType::F64).unwrap());
    assert_eq!(a.dims(), b.dims());
    let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn official_checkpoints_give_official_outputs() {
    let dirs = model_dirs();
    assert!(dirs.len() >= 2, "fixtures missing: {dirs:?}");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        for (dtype, suffix, tol) in [(DType::F32, "", 1e-4), (DType::F64, "_f64", 1e-6)] {
            let get = |k: &str| expected.get(&format!("{k}{suffix}")).or_else(|| expected.get(k)).cloned();
            let model = VoxTellModel::from_dir(&dir, dtype, &Device::Cpu).unwrap();
            let image = get("image").unwrap().to_dtype(dtype).unwrap();
            let text = get("text").unwrap().to_dtype(dtype).unwrap();
            let out = model.forward(&image, &text).unwrap();
            let mut checked = 0;
            // memory: official (T, B, E); ours (B, T, E).
            if let Some(m) = expected.get(&format!("memory{suffix}")) {
                let err = rel_err(&out.memory.transpose(0, 1).unwrap(), m);
                assert!(err <= tol, "{name} {dtype:?} memory: {err:e}");
                checked += 1;
            }
            if let Some(m) = expected.get(&format!("mask_embeddings{suffix}")) {
                let err = rel_err(&out.mask_embeddings, m);
                assert!(err <= tol, "{name} {dtype:?} mask embeddings: {err:e}");
                checked += 1;
            }
            if let Some(l) = expected.get(&format!("logits{suffix}")) {
                let err = rel_err(&out.outputs[0], l);
                assert!(err <= tol, "{name} {dtype:?} logits: {err:e}");
                checked += 1;
            }
            for i in 0..out.outputs.len() {
                if let Some(ds) = expected.get(&format!("ds.{i}{suffix}")) {
                    let err = rel_err(&out.outputs[i], ds);
                    assert!(err <= tol, "{name} {dtype:?} deep supervision {i}: {err:e}");
                    checked += 1;
                }
            }
            assert!(checked >= 3 || dtype == DType::F64, "{name} {dtype:?}: only {checked} tensors compared");
        }
    }
}

#[test]
fn prompt_groups_equal_one_batch() {
    let dir = model_dirs().into_iter().next().unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let model = VoxTellModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let (image, text) = (&expected["image"], &expected["text"]);
    let all = model.forward(image, text).unwrap();
    for group in [1, 2] {
        let grouped = model.forward_grouped(image, text, group).unwrap();
        for (a, b) in all.outputs.iter().zip(&grouped.outputs) {
            assert!(rel_err(b, a) <= 1e-6, "group {group}");
        }
    }
    // Sharing the skip half of the first convolutions changes nothing but rounding.
    let mut unshared = model.clone();
    unshared.set_share_skip_half(false);
    let plain = unshared.forward(image, text).unwrap();
    for (a, b) in all.outputs.iter().zip(&plain.outputs) {
        assert!(rel_err(b, a) <= 1e-5, "shared vs unshared skip half");
    }
}

#[test]
fn checkpoint_skips_aliases_and_names_missing_keys() {
    let dir = model_dirs().into_iter().next().unwrap();
    let ckpt = Checkpoint::open(dir.join("fold_0/checkpoint_final.pth")).unwrap();
    assert!(ckpt.keys().iter().all(|k| !k.starts_with("decoder.encoder.") && !k.contains(".all_modules.")));
    assert!(ckpt.shape("encoder.stem.convs.0.conv.weight").is_some());
    let err = ckpt.require("encoder.nope").unwrap_err().to_string();
    assert!(err.contains("encoder.nope") && err.contains("checkpoint_final.pth"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.pth");
    std::fs::write(&bad, b"PK\x03\x04 definitely not a zip archive").unwrap();
    let err = Checkpoint::open(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.pth"), "{err}");
    let short = tmp.path().join("short.pth");
    std::fs::write(&short, b"PK").unwrap();
    assert!(Checkpoint::open(&short).unwrap_err().to_string().contains("short.pth"));
}

#[test]
fn computed_positional_encoding_equals_the_stored_buffer() {
    for dir in model_dirs() {
        let plans: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("plans.json")).unwrap()).unwrap();
        let ckpt = Checkpoint::open(dir.join("fold_0/checkpoint_final.pth")).unwrap();
        let config = voxtell_fusion::VoxTellConfig::from_plans_and_checkpoint(&plans, &ckpt).unwrap();
        let grid = config.stage_sizes()[config.decoder_layer];
        let ours =
            voxtell_fusion::posenc::positional_encoding_3d(grid, config.query_dim, DType::F32, &Device::Cpu)
                .unwrap();
        let stored = ckpt.tensor("pos_embed", DType::F32, &Device::Cpu).unwrap().transpose(0, 1).unwrap();
        let err = rel_err(&ours, &stored);
        assert!(err <= 1e-6, "{}: grid {grid:?}: {err:e}", dir.display());
    }
}

#[test]
fn converted_folders_load_from_safetensors_with_the_same_outputs() {
    let dir = model_dirs().into_iter().last().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    voxtell_fusion::convert(&dir, &out, false).unwrap();
    assert!(out.join("model.safetensors").exists() && out.join("voxtell.json").exists());
    let saved = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.keys().all(|k| !voxtell_fusion::checkpoint::is_alias(k)));
    // Refuses to overwrite unless asked.
    let err = voxtell_fusion::convert(&dir, &out, false).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    voxtell_fusion::convert(&dir, &out, true).unwrap();

    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let a = VoxTellModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let b = VoxTellModel::from_dir(&out, DType::F32, &Device::Cpu).unwrap();
    let (image, text) = (&expected["image"], &expected["text"]);
    let (oa, ob) = (a.forward(image, text).unwrap(), b.forward(image, text).unwrap());
    assert_eq!(rel_err(&ob.outputs[0], &oa.outputs[0]), 0.0);

    // voxtell.json that names a text encoder of another width is refused.
    let mut meta = voxtell_fusion::ModelMeta::from_dir(&out).unwrap().unwrap();
    meta.text_encoder.dim += 1;
    std::fs::write(out.join("voxtell.json"), serde_json::to_string_pretty(&meta).unwrap()).unwrap();
    let err = VoxTellModel::from_dir(&out, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("voxtell.json") && err.contains("wide"), "{err}");
}

#[test]
fn broken_model_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = VoxTellModel::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("plans.json"), "{err}");
    let src = model_dirs().into_iter().next().unwrap();
    std::fs::copy(src.join("plans.json"), tmp.path().join("plans.json")).unwrap();
    let err = VoxTellModel::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("checkpoint_final.pth"), "{err}");
    // A checkpoint that does not fit the plan: the error names the weight at fault.
    let other = model_dirs().into_iter().last().unwrap();
    std::fs::create_dir_all(tmp.path().join("fold_0")).unwrap();
    std::fs::copy(other.join("fold_0/checkpoint_final.pth"), tmp.path().join("fold_0/checkpoint_final.pth"))
        .unwrap();
    let err = VoxTellModel::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("project_to_decoder_channels.1.2.weight"), "{err}");
    std::fs::write(tmp.path().join("plans.json"), "{not json").unwrap();
    let err = VoxTellModel::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("not valid JSON"), "{err}");
}

#[test]
fn a_misshapen_weight_names_the_key_and_both_shapes() {
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "encoder.stem.convs.0.conv.weight".to_string(),
        Tensor::zeros((4, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let ckpt = Checkpoint::from_tensors(tensors);
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
    let err = vb.pp("encoder.stem.convs.0.conv").get((4, 1, 3, 3, 3), "weight").unwrap_err().to_string();
    assert!(
        err.contains("encoder.stem.convs.0.conv.weight")
            && err.contains("[4, 1, 3, 3]")
            && err.contains("[4, 1, 3, 3, 3]"),
        "{err}"
    );
    let err = vb.get(3, "missing.bias").unwrap_err().to_string();
    assert!(err.contains("missing weight missing.bias"), "{err}");
}

#[test]
fn prompt_groups_follow_the_memory_budget() {
    let dir = model_dirs().into_iter().next().unwrap();
    let model = VoxTellModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let per_prompt = model.decoder_bytes_per_prompt(4);
    assert!(per_prompt > 0);
    assert_eq!(model.prompt_group_for_budget(0, 4), 1, "never below one prompt");
    assert_eq!(model.prompt_group_for_budget(per_prompt * 3 + per_prompt / 2, 4), 3);
    assert_eq!(model.decoder_bytes_per_prompt(8), 2 * per_prompt);
}

#[test]
fn hostile_pickles_are_refused_before_the_reader() {
    use std::io::{Read, Write};
    let src = model_dirs().into_iter().next().unwrap().join("fold_0/checkpoint_final.pth");
    let mut zin = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hostile.pth");
    let mut zout = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            // PROTO 2, a 9-byte LONG1 integer, STOP.
            bytes = vec![0x80, 2, 0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, b'.'];
        }
        zout.start_file(name, opts).unwrap();
        zout.write_all(&bytes).unwrap();
    }
    zout.finish().unwrap();
    let err = Checkpoint::open(&out).unwrap_err().to_string();
    assert!(err.contains("hostile.pth") && err.contains("wider than 64 bits"), "{err}");
}
