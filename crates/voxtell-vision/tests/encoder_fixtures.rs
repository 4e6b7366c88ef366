//! The residual encoder and the stacked conv blocks against the official
//! dynamic_network_architectures modules (fixtures from `tools/gen_vision_fixtures.py`), with
//! every parameter randomised: f32 within 1e-4·max|ref| per skip, f64 within 1e-6·max|ref|.

#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use voxtell_vision::{ArchKwargs, BlockSettings, ResidualEncoder, StackedConvBlocks, VisionError};

mod common;
use common::fixtures;

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> f64 {
    let ours = ours.to_dtype(DType::F64).unwrap();
    let theirs = theirs.to_dtype(DType::F64).unwrap();
    assert_eq!(ours.dims(), theirs.dims());
    let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    diff / scale
}

fn check_encoder(name: &str) {
    let meta = json(&format!("{name}.json"));
    let kw = ArchKwargs::from_json(&meta["arch_kwargs"]).unwrap();
    let file = fixtures().join(format!("{name}.safetensors"));
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    for (dtype, input, skip, tol) in
        [(DType::F32, "input", "skip", 1e-4), (DType::F64, "input_f64", "skip_f64", 1e-6)]
    {
        let vb = VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
        let enc = ResidualEncoder::load(vb.pp("encoder"), &kw, 1).unwrap();
        let skips = enc.forward(&tensors[input].to_dtype(dtype).unwrap()).unwrap();
        assert_eq!(skips.len(), kw.n_stages);
        for (i, s) in skips.iter().enumerate() {
            let err = rel_err(s, &tensors[&format!("{skip}.{i}")]);
            assert!(err <= tol, "{name} {dtype:?} skip {i}: relative error {err:e} > {tol:e}");
        }
    }
}

#[test]
fn isotropic_encoder_matches_the_official_module() {
    check_encoder("encoder_iso");
}

#[test]
fn anisotropic_encoder_matches_the_official_module() {
    check_encoder("encoder_aniso");
}

#[test]
fn stacked_conv_blocks_match_the_official_module() {
    let meta = json("stacked_conv.json");
    let kw = &meta["kwargs"];
    let norm = &kw["norm_op_kwargs"];
    let s = BlockSettings {
        conv_bias: kw["conv_bias"].as_bool().unwrap(),
        eps: norm["eps"].as_f64().unwrap(),
        affine: norm["affine"].as_bool().unwrap(),
        slope: 0.01,
    };
    let file = fixtures().join("stacked_conv.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let n = kw["num_convs"].as_u64().unwrap() as usize;
    let (ci, co) =
        (kw["input_channels"].as_u64().unwrap() as usize, kw["output_channels"].as_u64().unwrap() as usize);
    let stride = kw["initial_stride"].as_u64().unwrap() as usize;
    for (dtype, out, tol) in [(DType::F32, "output", 1e-4), (DType::F64, "output_f64", 1e-6)] {
        let vb = VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
        let block =
            StackedConvBlocks::load(vb.pp("block"), n, ci, co, s.unit([3, 3, 3], [stride; 3])).unwrap();
        let y = block.forward(tensors["input"].to_dtype(dtype).unwrap()).unwrap();
        let err = rel_err(&y, &tensors[out]);
        assert!(err <= tol, "{dtype:?}: relative error {err:e}");
    }
}

#[test]
fn unsupported_plans_and_wrong_weights_are_clear_errors() {
    let meta = json("encoder_iso.json");
    for (key, value, expect) in [
        ("norm_op", serde_json::json!("torch.nn.BatchNorm3d"), "norm_op"),
        ("nonlin", serde_json::json!("torch.nn.ReLU"), "nonlin"),
        ("conv_op", serde_json::json!("torch.nn.Conv2d"), "conv_op"),
        ("dropout_op", serde_json::json!("torch.nn.Dropout3d"), "dropout_op"),
        ("strides", serde_json::json!([[1, 1, 1]]), "strides"),
        ("kernel_sizes", serde_json::json!([[3, 3, 3], [2, 2, 2], [3, 3, 3], [3, 3, 3]]), "kernel_sizes[1]"),
        ("n_stages", serde_json::json!("four"), "arch_kwargs"),
    ] {
        let mut kw = meta["arch_kwargs"].clone();
        kw[key] = value;
        let err = ArchKwargs::from_json(&kw).unwrap_err();
        assert!(matches!(err, VisionError::Plan(_)) && err.to_string().contains(expect), "{key}: {err}");
    }
    let plans = serde_json::json!({"configurations": {"3d_fullres": {"architecture": {"arch_kwargs": meta["arch_kwargs"]}}}});
    assert!(ArchKwargs::from_plans(&plans, "3d_fullres").is_ok());
    let err = ArchKwargs::from_plans(&plans, "2d").unwrap_err();
    assert!(err.to_string().contains("configurations.2d"), "{err}");

    // Weights of the isotropic fixture do not fit a plan with other channel counts: the error
    // names the key.
    let mut kw = meta["arch_kwargs"].clone();
    kw["features_per_stage"] = serde_json::json!([4, 8, 12, 20]);
    let kw = ArchKwargs::from_json(&kw).unwrap();
    let file = fixtures().join("encoder_iso.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let err = ResidualEncoder::load(vb.pp("encoder"), &kw, 1).unwrap_err().to_string();
    assert!(err.contains("encoder.stages.3.blocks.0.conv1.conv.weight"), "{err}");
    let err = ResidualEncoder::load(vb.pp("model"), &kw, 1).unwrap_err().to_string();
    assert!(err.contains("model.stem.convs.0.conv.weight"), "{err}");
}
