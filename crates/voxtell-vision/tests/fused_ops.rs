//! The fused ops against their unfused compositions, forward and backward, in f64 (exact
//! agreement expected up to summation order) and f32: `add_leaky_relu(a, b)` against
//! `leaky_relu(a + b)`, and `conv3d_add(x, w, addend)` against `conv3d(x, w) + addend` with the
//! addend repeated over consecutive samples.

#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use voxtell_vision::ops;

mod common;

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
    common::max_abs(&(a - b).unwrap())
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

/// `upsample_conv3d_add` against `conv3d_add(conv_transpose3d(…))`: f32 (the fused path where
/// the CPU has AVX-512 and both channel counts of the convolution are ≥ 32, the composition
/// elsewhere), channel counts past the kernel's 32-channel block and its 16-channel interleaving, isotropic and anisotropic strides, rows
/// longer than one 64-voxel chunk, prompts sharing an addend, with and without the upsampling
/// bias; in bf16 within bf16's precision; with tracked gradients the composition runs (its
/// gradients flow), and misfitting shapes are refused.
#[test]
fn upsample_conv3d_add_equals_the_composition() {
    let f = DType::F32;
    for (batch, repeat, ci, cu, co, dims, stride, bias) in [
        (2, 2, 6, 4, 5, [3, 2, 3], [2, 2, 2], true),
        (1, 1, 48, 32, 40, [3, 4, 35], [2, 2, 2], true),
        (2, 1, 20, 17, 33, [2, 3, 5], [1, 2, 2], false),
        (3, 3, 36, 34, 32, [4, 3, 9], [2, 1, 2], true),
    ] {
        let what = format!("n{batch} ×{repeat} {ci}→{cu}→{co} {dims:?} s{stride:?}");
        let [d, h, w] = dims;
        let x = data(&[batch, ci, d, h, w], 1, f);
        let uw = data(&[ci, cu, stride[0], stride[1], stride[2]], 2, f);
        let ub = bias.then(|| data(&[cu], 3, f));
        let cw = (data(&[co, cu, 3, 3, 3], 4, f) * 0.3).unwrap();
        let up = [d * stride[0], h * stride[1], w * stride[2]];
        let addend = data(&[batch / repeat, co, up[0], up[1], up[2]], 5, f);
        let plain = ops::conv3d_add(
            &ops::conv_transpose3d(&x, &uw, ub.as_ref(), stride).unwrap(),
            &cw,
            &addend,
            [1, 1, 1],
        )
        .unwrap();
        let fused = ops::upsample_conv3d_add(&x, &uw, ub.as_ref(), stride, &cw, &addend).unwrap();
        let scale = max_diff(&plain, &plain.zeros_like().unwrap());
        assert!(max_diff(&fused, &plain) <= 1e-5 * scale, "{what}: f32 differs");
        let bf16 = |t: &dyn Fn() -> Tensor| ops::with_conv_precision(ops::ConvPrecision::Bf16, t);
        let fused16 = bf16(&|| ops::upsample_conv3d_add(&x, &uw, ub.as_ref(), stride, &cw, &addend).unwrap());
        assert!(max_diff(&fused16, &plain) <= 2e-2 * scale, "{what}: bf16 off by more than bf16's precision");
    }
    // Tracked gradients: the composition, whose gradients reach the upsampling weight.
    let x = Var::from_tensor(&data(&[1, 4, 2, 2, 3], 6, f)).unwrap();
    let uw = Var::from_tensor(&data(&[4, 3, 2, 2, 2], 7, f)).unwrap();
    let cw = data(&[5, 3, 3, 3, 3], 8, f);
    let addend = data(&[1, 5, 4, 4, 6], 9, f);
    let y = ops::upsample_conv3d_add(&x, &uw, None, [2, 2, 2], &cw, &addend).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&uw).is_some() && grads.get(&x).is_some());
    // Misfits: an addend of the wrong size, a kernel other than the stride, a wrong bias.
    let x = data(&[1, 4, 2, 2, 3], 6, f);
    let uw = data(&[4, 3, 2, 2, 2], 7, f);
    let bad_addend = data(&[1, 5, 4, 4, 5], 9, f);
    let e = ops::upsample_conv3d_add(&x, &uw, None, [2, 2, 2], &cw, &bad_addend).unwrap_err().to_string();
    assert!(e.contains("addend"), "{e}");
    let e = ops::upsample_conv3d_add(&x, &uw, None, [2, 2, 1], &cw, &addend).unwrap_err().to_string();
    assert!(e.contains("kernel == stride"), "{e}");
    let e = ops::upsample_conv3d_add(&x, &uw, Some(&data(&[4], 1, f)), [2, 2, 2], &cw, &addend)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias"), "{e}");
}

/// `instance_norm3d_act_in_place` gives `instance_norm3d_act`'s values bit for bit (f64 and f32,
/// with and without the affine parameters and the activation), in the input's own storage; with
/// tracked gradients it is the ordinary op (gradients flow); a transposed (non-contiguous) input
/// and misfitting parameters are handled as by the ordinary op.
#[test]
fn instance_norm_in_place_equals_the_ordinary_op() {
    for dtype in [DType::F64, DType::F32] {
        let shape = [2, 3, 4, 5, 6];
        let (w, b) = (data(&[3], 2, dtype), data(&[3], 3, dtype));
        for (affine, slope) in [(true, Some(0.01)), (false, None), (true, None)] {
            let x = (data(&shape, 1, dtype) * 3.0).unwrap();
            let (w, b) = if affine { (Some(&w), Some(&b)) } else { (None, None) };
            let plain = ops::instance_norm3d_act(&x, w, b, 1e-5, slope).unwrap();
            let fresh = x.copy().unwrap();
            let ours = ops::instance_norm3d_act_in_place(fresh, w, b, 1e-5, slope).unwrap();
            assert_eq!(max_diff(&ours, &plain), 0.0, "{dtype:?} affine {affine} slope {slope:?}");
        }
        let v = Var::from_tensor(&data(&shape, 4, dtype)).unwrap();
        let y =
            ops::instance_norm3d_act_in_place(v.as_tensor().clone(), Some(&w), Some(&b), 1e-5, Some(0.01))
                .unwrap();
        let plain = ops::instance_norm3d_act(v.as_tensor(), Some(&w), Some(&b), 1e-5, Some(0.01)).unwrap();
        assert_eq!(max_diff(&y, &plain), 0.0);
        let g = (&y * &data(&shape, 5, dtype)).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&v).is_some(), "{dtype:?}: no gradient through the tracked path");
        let t = data(&[2, 3, 6, 5, 4], 6, dtype).transpose(2, 4).unwrap();
        let plain = ops::instance_norm3d_act(&t, None, None, 1e-5, None).unwrap();
        assert_eq!(
            max_diff(&ops::instance_norm3d_act_in_place(t, None, None, 1e-5, None).unwrap(), &plain),
            0.0
        );
    }
    let x = data(&[1, 3, 2, 2, 2], 7, DType::F32);
    let w4 = data(&[4], 8, DType::F32);
    assert!(ops::instance_norm3d_act_in_place(x.copy().unwrap(), Some(&w4), Some(&w4), 1e-5, None).is_err());
    assert!(ops::instance_norm3d_act_in_place(x.copy().unwrap(), None, None, -1.0, None).is_err());
    assert!(
        ops::instance_norm3d_act_in_place(x, Some(&data(&[3], 9, DType::F32)), None, 1e-5, None).is_err()
    );
}
