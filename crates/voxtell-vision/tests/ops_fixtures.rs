//! Every 3-D op and its gradients against PyTorch (float64 fixtures from
//! `tools/gen_vision_fixtures.py`): in f64 to 1e-10, in f32 to 1e-4 of the largest value.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;
use voxtell_vision::{composed, ops};

mod common;
use common::{fixtures, max_abs};

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

/// Which implementation to run: the CPU kernels, or the device-generic composition of candle ops.
#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Kernels,
    Composed,
}

/// Run one case in `dtype`; returns (output, grads by name) computed through candle's backprop.
fn run(
    case: &Case,
    t: &HashMap<String, Tensor>,
    dtype: DType,
    path: Impl,
) -> (Tensor, HashMap<&'static str, Tensor>) {
    let get = |k: &str| t.get(&format!("{}/{k}", case.name)).map(|x| x.to_dtype(dtype).unwrap());
    let x = Var::from_tensor(&get("input").unwrap()).unwrap();
    let w = get("weight").map(|w| Var::from_tensor(&w).unwrap());
    let b = get("bias").map(|b| Var::from_tensor(&b).unwrap());
    let (wt, bt) = (w.as_ref().map(|w| w.as_tensor()), b.as_ref().map(|b| b.as_tensor()));
    let stride = || arr3(&case.stride);
    let out = match (case.op.as_str(), path) {
        ("conv3d", Impl::Kernels) => ops::conv3d(&x, wt.unwrap(), bt, stride()),
        ("conv3d", Impl::Composed) => composed::conv3d(&x, wt.unwrap(), bt, stride()),
        ("conv_transpose3d", Impl::Kernels) => ops::conv_transpose3d(&x, wt.unwrap(), bt, stride()),
        ("conv_transpose3d", Impl::Composed) => composed::conv_transpose3d(&x, wt.unwrap(), bt, stride()),
        ("instance_norm3d", Impl::Kernels) => ops::instance_norm3d(&x, wt, bt, case.eps.unwrap()),
        ("instance_norm3d", Impl::Composed) => {
            composed::instance_norm3d_act(&x, wt, bt, case.eps.unwrap(), None)
        }
        ("leaky_relu", Impl::Kernels) => ops::leaky_relu(&x, case.slope.unwrap()),
        ("leaky_relu", Impl::Composed) => composed::leaky_relu(&x, case.slope.unwrap()),
        ("avg_pool3d", Impl::Kernels) => ops::avg_pool3d(&x, arr3(&case.kernel)),
        ("avg_pool3d", Impl::Composed) => composed::avg_pool3d(&x, arr3(&case.kernel)),
        (other, _) => panic!("unknown op {other}"),
    }
    .unwrap();
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

fn assert_close(ours: &Tensor, theirs: &Tensor, rel: f64, what: &str) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    let diff = max_abs(&(ours.to_dtype(DType::F64).unwrap() - theirs).unwrap());
    let scale = max_abs(theirs).max(1e-30);
    assert!(diff <= rel * scale, "{what}: max |diff| {diff:e} > {rel:e} · max|ref| {scale:e}");
}

fn check(dtype: DType, rel: f64, path: Impl) {
    let (cases, t) = load();
    assert!(cases.len() >= 20);
    for case in &cases {
        let (out, grads) = run(case, &t, dtype, path);
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
    check(DType::F64, 1e-10, Impl::Kernels);
}

/// The device-generic path (what CUDA and Metal run), checked here on the CPU.
#[test]
fn composed_ops_match_pytorch_in_f64() {
    check(DType::F64, 1e-10, Impl::Composed);
}

#[test]
fn ops_match_pytorch_in_f32() {
    check(DType::F32, 1e-4, Impl::Kernels);
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

#[test]
fn fused_norm_and_activation_equal_the_composition_with_gradients() {
    let (_, t) = load();
    let x0 = t["inorm_affine_const/input"].clone();
    let w0 = t["inorm_affine_const/weight"].clone();
    let b0 = t["inorm_affine_const/bias"].clone();
    let g = t["inorm_affine_const/grad_output"].clone();
    let mut results = Vec::new();
    for fused in [true, false] {
        let (x, w, b) =
            (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap(), Var::from_tensor(&b0).unwrap());
        let y = if fused {
            ops::instance_norm3d_act(&x, Some(&w), Some(&b), 1e-5, Some(0.01)).unwrap()
        } else {
            ops::leaky_relu(&ops::instance_norm3d(&x, Some(&w), Some(&b), 1e-5).unwrap(), 0.01).unwrap()
        };
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        results.push([
            y,
            grads.get(&x).unwrap().clone(),
            grads.get(&w).unwrap().clone(),
            grads.get(&b).unwrap().clone(),
        ]);
    }
    for (i, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
        assert_close(a, b, 1e-12, &format!("fused vs composed, tensor {i}"));
    }
}
