//! Every 3-D op and its gradients against PyTorch (float64 fixtures from
//! `tools/gen_vision_fixtures.py`): in f64 to 1e-10, in f32 to 1e-4 of the largest value.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;
use voxtell_vision::ops;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vision")
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    op: String,
    #[serde(default)]
    stride: Vec<usize>,
    #[serde(default)]
    kernel: Vec<usize>,
    eps: Option<f64>,
    affine: Option<bool>,
    slope: Option<f64>,
    bias: Option<bool>,
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

fn load() -> (Vec<Case>, HashMap<String, Tensor>) {
    let m: Manifest =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ops.json")).unwrap()).unwrap();
    let t = candle_core::safetensors::load(fixtures().join("ops.safetensors"), &Device::Cpu).unwrap();
    (m.cases, t)
}

fn arr3(v: &[usize]) -> [usize; 3] {
    [v[0], v[1], v[2]]
}

/// Run one case in `dtype`; returns (output, grads by name) computed through candle's backprop.
fn run(case: &Case, t: &HashMap<String, Tensor>, dtype: DType) -> (Tensor, HashMap<&'static str, Tensor>) {
    let get = |k: &str| t.get(&format!("{}/{k}", case.name)).map(|x| x.to_dtype(dtype).unwrap());
    let x = Var::from_tensor(&get("input").unwrap()).unwrap();
    let w = get("weight").map(|w| Var::from_tensor(&w).unwrap());
    let b = get("bias").map(|b| Var::from_tensor(&b).unwrap());
    let out = match case.op.as_str() {
        "conv3d" => {
            ops::conv3d(&x, w.as_ref().unwrap(), b.as_ref().map(|b| b.as_tensor()), arr3(&case.stride))
                .unwrap()
        }
        "conv_transpose3d" => ops::conv_transpose3d(
            &x,
            w.as_ref().unwrap(),
            b.as_ref().map(|b| b.as_tensor()),
            arr3(&case.stride),
        )
        .unwrap(),
        "instance_norm3d" => ops::instance_norm3d(
            &x,
            w.as_ref().map(|w| w.as_tensor()),
            b.as_ref().map(|b| b.as_tensor()),
            case.eps.unwrap(),
        )
        .unwrap(),
        "leaky_relu" => ops::leaky_relu(&x, case.slope.unwrap()).unwrap(),
        "avg_pool3d" => ops::avg_pool3d(&x, arr3(&case.kernel)).unwrap(),
        other => panic!("unknown op {other}"),
    };
    let loss = (&out * get("grad_output").unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut g = HashMap::new();
    g.insert("grad_input", grads.get(&x).unwrap().clone());
    if let Some(w) = &w {
        g.insert("grad_weight", grads.get(w).unwrap().clone());
    }
    if let Some(b) = &b {
        g.insert("grad_bias", grads.get(b).unwrap().clone());
    }
    (out, g)
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn assert_close(ours: &Tensor, theirs: &Tensor, rel: f64, what: &str) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    let diff = max_abs(&(ours.to_dtype(DType::F64).unwrap() - theirs).unwrap());
    let scale = max_abs(theirs).max(1e-30);
    assert!(diff <= rel * scale, "{what}: max |diff| {diff:e} > {rel:e} · max|ref| {scale:e}");
}

fn check(dtype: DType, rel: f64) {
    let (cases, t) = load();
    assert!(cases.len() >= 20);
    for case in &cases {
        let (out, grads) = run(case, &t, dtype);
        let name = &case.name;
        assert_close(&out, &t[&format!("{name}/output")], rel, &format!("{name} output ({dtype:?})"));
        for (k, g) in &grads {
            assert_close(g, &t[&format!("{name}/{k}")], rel, &format!("{name} {k} ({dtype:?})"));
        }
        let expected = 1
            + usize::from(t.contains_key(&format!("{name}/weight")))
            + usize::from(case.bias.unwrap_or(false) || case.affine.unwrap_or(false));
        assert_eq!(grads.len(), expected, "{name}: gradients checked");
    }
}

#[test]
fn ops_match_pytorch_in_f64() {
    check(DType::F64, 1e-10);
}

#[test]
fn ops_match_pytorch_in_f32() {
    check(DType::F32, 1e-4);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4, 4), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, &dev).unwrap();
    let e = ops::conv3d(&x, &w, None, [1, 1, 1]).unwrap_err().to_string();
    assert!(e.contains("input channels"), "{e}");
    let w = Tensor::zeros((2, 3, 2, 3, 3), DType::F32, &dev).unwrap();
    assert!(ops::conv3d(&x, &w, None, [1, 1, 1]).unwrap_err().to_string().contains("odd"));
    let w = Tensor::zeros((2, 3, 3, 3, 3), DType::F32, &dev).unwrap();
    assert!(ops::conv3d(&x, &w, None, [0, 1, 1]).unwrap_err().to_string().contains("stride"));
    let b = Tensor::zeros(5, DType::F32, &dev).unwrap();
    assert!(ops::conv3d(&x, &w, Some(&b), [1, 1, 1]).unwrap_err().to_string().contains("bias"));
    let x4 = Tensor::zeros((3, 4, 4, 4), DType::F32, &dev).unwrap();
    assert!(ops::conv3d(&x4, &w, None, [1, 1, 1]).unwrap_err().to_string().contains("5-D"));
    let wt = Tensor::zeros((3, 2, 2, 2, 2), DType::F32, &dev).unwrap();
    assert!(
        ops::conv_transpose3d(&x, &wt, None, [2, 2, 1]).unwrap_err().to_string().contains("kernel == stride")
    );
    assert!(ops::avg_pool3d(&x, [5, 1, 1]).unwrap_err().to_string().contains("smaller"));
    let half = x.to_dtype(DType::F16).unwrap();
    assert!(ops::leaky_relu(&half, 0.01).unwrap_err().to_string().contains("unsupported dtype"));
    let wn = Tensor::zeros(2, DType::F32, &dev).unwrap();
    assert!(
        ops::instance_norm3d(&x, Some(&wn), Some(&wn), 1e-5).unwrap_err().to_string().contains("channels")
    );
}
