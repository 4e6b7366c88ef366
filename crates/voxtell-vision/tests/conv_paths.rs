//! The fast convolution paths (two direct AVX-512 kernels — W-vectorised NCDHW for stride 1 and
//! channels-last for stride 1 and strided layers — and tiled im2col + GEMM for the rest; for the weight gradient of stride-1
//! convolutions with at most 64 × 64 channels, one GEMM per tap on shifted padded grids) against
//! the scalar f64 reference, forward and backward, on shapes that reach each path: channel counts
//! that are not multiples of the kernels' blocks, batch 2, kernel 5, strides. On a CPU without
//! AVX-512 every case runs the GEMM paths and is checked just the same.

#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use voxtell_vision::{ops, reference};

/// A small deterministic generator (SplitMix64) for test data.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn assert_close(ours: &Tensor, reference: &[f64], what: &str) {
    let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let worst = ours.iter().zip(reference).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 2e-5 * scale, "{what}: max |diff| {worst:e} vs max |ref| {scale:e}");
}

fn check(n: usize, ci: usize, co: usize, dims: [usize; 3], k: usize, stride: [usize; 3], bias: bool) {
    let what = format!("n{n} {ci}->{co} {dims:?} k{k} s{stride:?}");
    let dev = Device::Cpu;
    let in_shape = [n, ci, dims[0], dims[1], dims[2]];
    let w_shape = [co, ci, k, k, k];
    let xv = data(in_shape.iter().product(), 1);
    let wv: Vec<f32> = data(w_shape.iter().product(), 2).iter().map(|v| v * 0.2).collect();
    let bv = data(co, 3);
    let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), in_shape.to_vec(), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::from_vec(wv.clone(), w_shape.to_vec(), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::from_vec(bv.clone(), co, &dev).unwrap()).unwrap();
    let out = ops::conv3d(&x, &w, bias.then_some(b.as_tensor()), stride).unwrap();
    let pad = [(k - 1) / 2; 3];
    let b64 = to64(&bv);
    let (r, out_shape) =
        reference::conv3d(&to64(&xv), in_shape, &to64(&wv), w_shape, bias.then_some(&b64[..]), stride, pad)
            .unwrap();
    assert_eq!(out.dims(), out_shape, "{what}");
    assert_close(&out, &r, &format!("{what} forward"));

    let gv = data(out.elem_count(), 4);
    let g = Tensor::from_vec(gv.clone(), out.shape(), &dev).unwrap();
    let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let rg = reference::conv3d_backward(
        &to64(&xv),
        in_shape,
        &to64(&wv),
        w_shape,
        &to64(&gv),
        out_shape,
        stride,
        pad,
    )
    .unwrap();
    assert_close(grads.get(&x).unwrap(), &rg.grad_input, &format!("{what} grad input"));
    assert_close(grads.get(&w).unwrap(), &rg.grad_weight, &format!("{what} grad weight"));
    if bias {
        assert_close(grads.get(&b).unwrap(), &rg.grad_bias, &format!("{what} grad bias"));
    }
}

#[test]
fn direct_path_shapes() {
    check(1, 3, 8, [5, 6, 17], 3, [1, 1, 1], true);
    check(2, 5, 11, [4, 3, 33], 3, [1, 1, 1], true);
    check(1, 1, 13, [3, 4, 50], 3, [1, 1, 1], false);
    check(1, 4, 6, [6, 5, 20], 5, [1, 1, 1], true);
    check(1, 16, 16, [4, 4, 48], 3, [1, 1, 1], true);
}

/// Channels-last direct kernel: both channel counts ≥ 32, or a volume narrower than 16 along W;
/// channel counts that are not multiples of its 32-channel tile, and W not a multiple of 14; the
/// output written straight to NCDHW with a last channel block of 3 (c_out 35), batch 2, and tasks
/// of several depth slices.
#[test]
fn channels_last_path_shapes() {
    check(1, 64, 70, [3, 4, 18], 3, [1, 1, 1], true);
    check(2, 32, 35, [4, 9, 17], 3, [1, 1, 1], true);
    // Deep enough for tasks of several depth slices, the last one short; kernel 5.
    check(2, 40, 32, [19, 4, 15], 5, [1, 1, 1], true);
    check(2, 3, 40, [4, 5, 9], 3, [1, 1, 1], true);
    check(1, 66, 64, [3, 3, 15], 3, [1, 1, 1], false);
    check(1, 5, 7, [5, 6, 3], 5, [1, 1, 1], true);
}

/// Strided layers with ≥ 32 input and output channels and output rows of ≥ 8 voxels take the
/// channels-last kernel: stride 2 on every axis with odd and even sizes (tasks of several depth
/// slices, rows of more than one tile), anisotropic strides, kernel 5, batch 2; shorter rows
/// take the GEMM path.
#[test]
fn strided_channels_last_path_shapes() {
    check(1, 32, 64, [19, 12, 33], 3, [2, 2, 2], true);
    check(2, 40, 35, [7, 6, 16], 3, [2, 2, 2], false);
    check(1, 33, 32, [6, 9, 31], 3, [1, 2, 2], true);
    check(1, 32, 32, [9, 5, 24], 5, [2, 1, 3], true);
    check(1, 32, 32, [4, 5, 12], 3, [2, 2, 2], true);
}

#[test]
fn gemm_path_shapes() {
    check(2, 6, 7, [7, 5, 9], 3, [2, 2, 2], true);
    check(1, 5, 9, [6, 9, 20], 3, [2, 1, 2], false);
    check(1, 7, 5, [5, 6, 7], 1, [1, 1, 1], true);
    check(1, 8, 24, [3, 4, 12], 3, [1, 1, 1], true);
}

#[test]
fn f64_takes_the_gemm_path_with_the_same_result() {
    let dev = Device::Cpu;
    let x = Tensor::from_vec(data(2 * 3 * 4 * 5 * 20, 7), (2, 3, 4, 5, 20), &dev).unwrap();
    let w = Tensor::from_vec(data(4 * 3 * 27, 8), (4, 3, 3, 3, 3), &dev).unwrap();
    let y32 = ops::conv3d(&x, &w, None, [1, 1, 1]).unwrap();
    let y64 =
        ops::conv3d(&x.to_dtype(DType::F64).unwrap(), &w.to_dtype(DType::F64).unwrap(), None, [1, 1, 1])
            .unwrap();
    let diff = (y32.to_dtype(DType::F64).unwrap() - y64).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-5);
}

/// bf16 rounding (nearest, ties to even), as the bf16 kernel rounds its inputs and weights.
fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// The bf16 convolution: with inputs and weights rounded to bf16 first, it is the exact
/// convolution of the rounded values up to f32 summation (checked against the f64 reference
/// on the rounded values); against the unrounded f32 convolution it is within bf16's relative
/// precision. Odd channel counts (a zero-padded pair), channel counts past one 32-wide block,
/// batch 2, kernel 5 and narrow volumes. Where the CPU lacks AVX-512 BF16 the setting falls
/// back to f32, which must then equal the default path bit for bit.
#[test]
fn bf16_precision_is_the_convolution_of_bf16_rounded_values() {
    use ops::{ConvPrecision, with_conv_precision};
    let dev = Device::Cpu;
    for (n, ci, co, dims, k, s) in [
        (1, 8, 8, [5, 6, 20], 3, [1, 1, 1]),
        (1, 9, 33, [4, 7, 18], 3, [1, 1, 1]),
        (2, 16, 40, [3, 5, 9], 3, [1, 1, 1]),
        (1, 12, 16, [6, 6, 6], 5, [1, 1, 1]),
        (1, 64, 64, [6, 8, 30], 3, [1, 1, 1]),
        (2, 32, 32, [19, 6, 20], 3, [1, 1, 1]),
        (1, 32, 64, [9, 8, 31], 3, [2, 2, 2]),
        (2, 34, 32, [5, 7, 18], 3, [1, 2, 2]),
    ] {
        let what = format!("bf16 n{n} {ci}->{co} {dims:?} k{k} s{s:?}");
        let in_shape = [n, ci, dims[0], dims[1], dims[2]];
        let w_shape = [co, ci, k, k, k];
        let xv = data(in_shape.iter().product(), 11);
        let wv: Vec<f32> = data(w_shape.iter().product(), 12).iter().map(|v| v * 0.2).collect();
        let bv = data(co, 13);
        let x = Tensor::from_vec(xv.clone(), in_shape.to_vec(), &dev).unwrap();
        let w = Tensor::from_vec(wv.clone(), w_shape.to_vec(), &dev).unwrap();
        let b = Tensor::from_vec(bv.clone(), co, &dev).unwrap();
        let ours = with_conv_precision(ConvPrecision::Bf16, || ops::conv3d(&x, &w, Some(&b), s)).unwrap();
        let f32_out = ops::conv3d(&x, &w, Some(&b), s).unwrap();
        let pad = [(k - 1) / 2; 3];
        let b64 = to64(&bv);
        if ops::bf16_supported() {
            let (r, _) = reference::conv3d(
                &to64(&round_bf16(&xv)),
                in_shape,
                &to64(&round_bf16(&wv)),
                w_shape,
                Some(&b64[..]),
                s,
                pad,
            )
            .unwrap();
            assert_close(&ours, &r, &what);
            // Against exact arithmetic on the unrounded values: bf16's 8-bit mantissa.
            let (exact, _) =
                reference::conv3d(&to64(&xv), in_shape, &to64(&wv), w_shape, Some(&b64[..]), s, pad).unwrap();
            let o: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
            let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst = o.iter().zip(&exact).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 2e-2 * scale && worst > 0.0, "{what}: {worst:e} of {scale:e}");
        } else {
            let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
            let e: Vec<f32> = f32_out.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, e, "{what}: the f32 fallback differs from the default path");
        }
    }
    // Strided convolutions with fewer than 32 channels and 1×1×1 convolutions stay f32 under the
    // bf16 setting.
    let x = Tensor::from_vec(data(16 * 6 * 6 * 6, 14), (1, 16, 6, 6, 6), &dev).unwrap();
    for (k, s) in [(3, [2, 2, 2]), (1, [1, 1, 1])] {
        let w = Tensor::from_vec(data(8 * 16 * k * k * k, 15), (8, 16, k, k, k), &dev).unwrap();
        let a = with_conv_precision(ConvPrecision::Bf16, || ops::conv3d(&x, &w, None, s)).unwrap();
        let e = ops::conv3d(&x, &w, None, s).unwrap();
        let (a, e): (Vec<f32>, Vec<f32>) =
            (a.flatten_all().unwrap().to_vec1().unwrap(), e.flatten_all().unwrap().to_vec1().unwrap());
        assert_eq!(a, e, "k{k} s{s:?}: not f32 under the bf16 setting");
    }
}
