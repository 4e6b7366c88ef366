//! The fused ops against their unfused compositions, forward and backward, in f64 (exact
//! agreement expected up to summation order) and f32: `add_leaky_relu(a, b)` against
//! `leaky_relu(a + b)`, and `conv3d_add(x, w, addend)` against `conv3d(x, w) + addend` with the
//! addend repeated over consecutive samples.

#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use voxtell_vision::ops;

fn data(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn add_leaky_relu_equals_leaky_relu_of_the_sum_with_its_gradients() {
    for dtype in [DType::F64, DType::F32] {
        let shape = [2, 3, 4, 5, 6];
        let a = Var::from_tensor(&data(&shape, 1, dtype)).unwrap();
        let b = Var::from_tensor(&data(&shape, 2, dtype)).unwrap();
        let g = data(&shape, 3, dtype);
        let fused = ops::add_leaky_relu(&a, &b, 0.01).unwrap();
        let plain = ops::leaky_relu(&(a.as_tensor() + b.as_tensor()).unwrap(), 0.01).unwrap();
        assert_eq!(max_diff(&fused, &plain), 0.0, "{dtype:?}: values differ");
        let gf = (&fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            assert_eq!(max_diff(gf.get(v).unwrap(), gp.get(v).unwrap()), 0.0, "{dtype:?}: gradients differ");
        }
    }
    let x = data(&[1, 1, 2, 2, 2], 4, DType::F32);
    assert!(ops::add_leaky_relu(&x, &data(&[1, 1, 2, 2, 3], 5, DType::F32), 0.01).is_err());
    assert!(ops::add_leaky_relu(&x, &x, -0.1).is_err());
}

#[test]
fn conv3d_add_equals_conv3d_plus_the_repeated_addend_with_its_gradients() {
    // (input channels, output channels, spatial, samples, addend samples): the direct kernels
    // (f32, stride 1) and the GEMM path (f64), an addend per sample and one per 3 samples.
    for (dtype, ci, co, s, n, na) in [
        (DType::F64, 3, 5, [4, 5, 6], 3, 1),
        (DType::F32, 32, 33, [5, 6, 17], 2, 2),
        (DType::F32, 4, 8, [3, 4, 20], 3, 1),
    ] {
        let what = format!("{dtype:?} {ci}->{co} {s:?} n{n} addend {na}");
        let x = Var::from_tensor(&data(&[n, ci, s[0], s[1], s[2]], 6, dtype)).unwrap();
        let w = Var::from_tensor(&(data(&[co, ci, 3, 3, 3], 7, dtype) * 0.2).unwrap()).unwrap();
        let add = Var::from_tensor(&data(&[na, co, s[0], s[1], s[2]], 8, dtype)).unwrap();
        let fused = ops::conv3d_add(&x, &w, &add, [1, 1, 1]).unwrap();
        let conv = ops::conv3d(&x, &w, None, [1, 1, 1]).unwrap();
        let plain = conv
            .reshape((na, n / na, co, s[0], s[1], s[2]))
            .unwrap()
            .broadcast_add(&add.as_tensor().unsqueeze(1).unwrap())
            .unwrap()
            .reshape((n, co, s[0], s[1], s[2]))
            .unwrap();
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
        assert!(max_diff(&fused, &plain) <= tol, "{what}: values differ");
        let g = data(fused.dims(), 9, dtype);
        let gf = (&fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, name) in [(&x, "input"), (&w, "weight"), (&add, "addend")] {
            let d = max_diff(gf.get(v).unwrap(), gp.get(v).unwrap());
            assert!(d <= tol * 10.0, "{what}: {name} gradients differ by {d}");
        }
    }
    // An addend whose batch does not divide the output's, or of another size, is refused.
    let x = data(&[3, 2, 4, 4, 4], 10, DType::F32);
    let w = data(&[4, 2, 3, 3, 3], 11, DType::F32);
    for bad in [[2, 4, 4, 4, 4], [1, 4, 4, 4, 5], [1, 3, 4, 4, 4]] {
        let err = ops::conv3d_add(&x, &w, &data(&bad, 12, DType::F32), [1, 1, 1]).unwrap_err();
        assert!(err.to_string().contains("addend"), "{err}");
    }
}
