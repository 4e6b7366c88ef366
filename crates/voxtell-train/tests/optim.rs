//! The optimisers against `torch.optim.SGD`, `torch.optim.AdamW` and
//! `torch.nn.utils.clip_grad_norm_` (`fixtures/train/optim.safetensors`): four parameters, three
//! steps with given gradients (p3 has none at step 2); SGD in two settings (Nesterov with weight
//! decay; plain momentum), lr 0.1, momentum 0.99; AdamW in two (PyTorch's defaults with lr 0.01;
//! other betas and eps without decay); in f64 within 1e-12 relative. Also the optimiser state
//! survives a save/load in the middle of the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use voxtell_train::optim::{
    AdamWConfig, Gradients, Optimizer, OptimizerConfig, Sgd, SgdConfig, clip_grad_norm,
};

fn fixture() -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/train");
    let tensors = candle_core::safetensors::load(dir.join("optim.safetensors"), &Device::Cpu).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    (tensors, config["optim"].clone())
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    d / b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

const NAMES: [&str; 4] = ["p0", "p1", "p2", "p3"];

fn grads_at(t: &HashMap<String, Tensor>, step: usize) -> Gradients {
    NAMES
        .iter()
        .filter_map(|p| {
            let g = t.get(&format!("g{}.step{step}", &p[1..]))?;
            Some((p.to_string(), g.clone()))
        })
        .collect()
}

#[test]
fn sgd_matches_torch() {
    let (t, cfg) = fixture();
    let steps = cfg["steps"].as_u64().unwrap() as usize;
    let mut worst = 0.0f64;
    for (name, c) in cfg["configs"].as_object().unwrap() {
        let sgd = SgdConfig {
            momentum: c["momentum"].as_f64().unwrap(),
            nesterov: c["nesterov"].as_bool().unwrap(),
            weight_decay: c["weight_decay"].as_f64().unwrap(),
        };
        assert_eq!(c["dampening"].as_f64().unwrap(), 0.0);
        let lr = c["lr"].as_f64().unwrap();
        let params: HashMap<String, Var> = NAMES
            .iter()
            .map(|p| (p.to_string(), Var::from_tensor(&t[*p].copy().unwrap()).unwrap()))
            .collect();
        let mut opt = Sgd::new(sgd);
        for step in 1..=steps {
            let grads = grads_at(&t, step);
            opt.step(&params, &grads, lr).unwrap();
            if step == 1 {
                // Save and restore the momentum buffers (resuming).
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("sgd.safetensors");
                opt.save(&path).unwrap();
                opt = Sgd::new(sgd);
                opt.load(&path, DType::F64, &Device::Cpu).unwrap();
            }
            for p in NAMES {
                let want = &t[&format!("{name}.{p}.step{step}")];
                let err = rel_err(params[p].as_tensor(), want);
                worst = worst.max(err);
                assert!(err <= 1e-12, "{name} {p} step {step}: {err:e}");
            }
        }
        // p3 had no gradient at step 2: its buffer continued from step 1 at step 3.
        assert!(opt.momentum_buffers().contains_key("p3"));
    }
    println!("SGD: worst relative error {worst:.2e}");
}

#[test]
fn adamw_matches_torch() {
    let (t, cfg) = fixture();
    let steps = cfg["steps"].as_u64().unwrap() as usize;
    let configs = cfg["adamw_configs"].as_object().unwrap();
    assert_eq!(configs.len(), 2);
    let mut worst = 0.0f64;
    for (name, c) in configs {
        assert!(!c["amsgrad"].as_bool().unwrap());
        let betas = c["betas"].as_array().unwrap();
        let config = OptimizerConfig::AdamW(AdamWConfig {
            betas: [betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()],
            eps: c["eps"].as_f64().unwrap(),
            weight_decay: c["weight_decay"].as_f64().unwrap(),
        });
        let lr = c["lr"].as_f64().unwrap();
        let params: HashMap<String, Var> = NAMES
            .iter()
            .map(|p| (p.to_string(), Var::from_tensor(&t[*p].copy().unwrap()).unwrap()))
            .collect();
        let mut opt = Optimizer::new(config);
        for step in 1..=steps {
            opt.step(&params, &grads_at(&t, step), lr).unwrap();
            if step == 2 {
                // Save and restore the moments and step counts (p3 has taken one step, the
                // others two).
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("adamw.safetensors");
                opt.save(&path).unwrap();
                opt = Optimizer::new(config);
                opt.load(&path, DType::F64, &Device::Cpu).unwrap();
                // An SGD state is not an AdamW state.
                let sgd_path = dir.path().join("sgd.safetensors");
                let mut sgd = Sgd::new(SgdConfig::default());
                sgd.step(&params, &grads_at(&t, 1), 0.0).unwrap();
                sgd.save(&sgd_path).unwrap();
                assert!(Optimizer::new(config).load(&sgd_path, DType::F64, &Device::Cpu).is_err());
            }
            for p in NAMES {
                let want = &t[&format!("{name}.{p}.step{step}")];
                let err = rel_err(params[p].as_tensor(), want);
                worst = worst.max(err);
                assert!(err <= 1e-12, "{name} {p} step {step}: {err:e}");
            }
        }
    }
    println!("AdamW: worst relative error {worst:.2e}");
}

#[test]
fn clipping_matches_torch() {
    let (t, cfg) = fixture();
    let max_norm = cfg["clip_max_norm"].as_f64().unwrap();
    let mut grads = grads_at(&t, 1);
    let norm = clip_grad_norm(&mut grads, max_norm).unwrap();
    let want = t["clip.total_norm"].to_vec1::<f64>().unwrap()[0];
    assert!((norm - want).abs() <= 1e-14 * want, "{norm} vs {want}");
    assert!((norm - cfg["clip_total_norm"].as_f64().unwrap()).abs() <= 1e-14 * want);
    let mut worst = 0.0f64;
    for p in NAMES {
        let err = rel_err(&grads[p], &t[&format!("clip.g{}.step1", &p[1..])]);
        worst = worst.max(err);
        assert!(err <= 1e-14, "{p}: {err:e}");
    }
    println!("clip: total norm {norm} ({want}), worst relative error {worst:.2e}");
}
