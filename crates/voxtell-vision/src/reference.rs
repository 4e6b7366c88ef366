//! Plain scalar reference implementations of the 3-D operations, used as test oracles.
//!
//! Everything here is written for clarity rather than speed: straightforward nested loops over
//! plain slices, generic over [`f32`] and [`f64`] through the small [`Elem`] trait. Sums are
//! accumulated in the element type itself, so the `f64` versions are accurate enough for
//! comparisons at the 1e-10 level.
//!
//! Tensors are `&[T]` slices in NCDHW row-major order (the last axis varies fastest) together
//! with a shape `[usize; 5]` = `[n, c, d, h, w]`. Functions that can be handed inconsistent
//! shapes return a [`ShapeError`] instead of panicking.
//!
//! Conventions follow PyTorch: `conv3d` weights are `[cout, cin, kd, kh, kw]` (zero padding,
//! dilation 1, one group), `conv_transpose3d` weights are `[cin, cout, kd, kh, kw]`, instance
//! normalisation uses the biased variance, and leaky ReLU passes `slope · grad` at `x == 0`.

/// The scalar types the reference implementations are generic over (`f32` and `f64`): the
/// kernels' own element trait.
pub use crate::kernels::Elem;

/// Shapes (or slice lengths) handed to a reference operation do not fit together.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(
    /// What did not fit.
    pub String,
);

/// Gradients of [`conv3d`] with respect to its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv3dGrads<T> {
    /// Gradient with respect to the input, shaped like the input.
    pub grad_input: Vec<T>,
    /// Gradient with respect to the weight, shaped `[cout, cin, kd, kh, kw]`.
    pub grad_weight: Vec<T>,
    /// Gradient with respect to the bias (`cout` values): `grad_out` summed over n, d, h, w.
    pub grad_bias: Vec<T>,
}

/// Gradients of [`conv_transpose3d`] with respect to its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvTranspose3dGrads<T> {
    /// Gradient with respect to the input, shaped like the input.
    pub grad_input: Vec<T>,
    /// Gradient with respect to the weight, shaped `[cin, cout, kd, kh, kw]`.
    pub grad_weight: Vec<T>,
    /// Gradient with respect to the bias (`cout` values): `grad_out` summed over n, d, h, w.
    pub grad_bias: Vec<T>,
}

/// Gradients of [`instance_norm3d`] with respect to its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceNormGrads<T> {
    /// Gradient with respect to the input, shaped like the input.
    pub grad_input: Vec<T>,
    /// Gradient with respect to the per-channel scale; present when a weight was given.
    pub grad_weight: Option<Vec<T>>,
    /// Gradient with respect to the per-channel shift; present when a weight was given.
    pub grad_bias: Option<Vec<T>>,
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn err<R>(msg: String) -> Result<R, ShapeError> {
    Err(ShapeError(msg))
}

/// Number of elements of `shape`, or an error if the product overflows `usize`.
fn numel(shape: &[usize], what: &str) -> Result<usize, ShapeError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ShapeError(format!("{what}: shape {shape:?} has too many elements")))
}

/// Checks that `data` holds exactly as many elements as `shape` describes.
fn check_len<T>(data: &[T], shape: &[usize], what: &str) -> Result<(), ShapeError> {
    let n = numel(shape, what)?;
    if data.len() != n {
        return err(format!("{what}: shape {shape:?} needs {n} elements, got {}", data.len()));
    }
    Ok(())
}

/// Checks an optional per-channel vector's length.
fn check_channels<T>(v: Option<&[T]>, channels: usize, what: &str) -> Result<(), ShapeError> {
    if let Some(v) = v
        && v.len() != channels
    {
        return err(format!("{what}: expected {channels} values (one per channel), got {}", v.len()));
    }
    Ok(())
}

/// Row-major offset of `[n, c, d, h, w]` in a tensor of shape `s`.
#[inline]
fn at(s: [usize; 5], n: usize, c: usize, d: usize, h: usize, w: usize) -> usize {
    (((n * s[1] + c) * s[2] + d) * s[3] + h) * s[4] + w
}

/// Input coordinate read by output coordinate `o` through kernel tap `k`, if it is not padding.
#[inline]
fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Every kernel tap `(a, b, c)` of output voxel `out` that reads the input (not padding), with
/// the input voxel it reads, taps in row-major order.
fn for_each_tap(
    out: [usize; 3],
    in_shape: [usize; 5],
    w_shape: [usize; 5],
    stride: [usize; 3],
    padding: [usize; 3],
    mut f: impl FnMut([usize; 3], [usize; 3]),
) {
    let [z, y, x] = out;
    for a in 0..w_shape[2] {
        let Some(iz) = tap(z, a, stride[0], padding[0], in_shape[2]) else { continue };
        for b in 0..w_shape[3] {
            let Some(iy) = tap(y, b, stride[1], padding[1], in_shape[3]) else { continue };
            for c in 0..w_shape[4] {
                let Some(ix) = tap(x, c, stride[2], padding[2], in_shape[4]) else { continue };
                f([a, b, c], [iz, iy, ix]);
            }
        }
    }
}

/// Output shape of a 3-D convolution, validating every shape involved.
fn conv_out_shape(
    in_shape: [usize; 5],
    w_shape: [usize; 5],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<[usize; 5], ShapeError> {
    if w_shape[1] != in_shape[1] {
        return err(format!(
            "conv3d: weight {w_shape:?} expects {} input channels, input {in_shape:?} has {}",
            w_shape[1], in_shape[1]
        ));
    }
    let mut out = [in_shape[0], w_shape[0], 0, 0, 0];
    for axis in 0..3 {
        let (n, k, s, p) = (in_shape[2 + axis], w_shape[2 + axis], stride[axis], padding[axis]);
        if s == 0 {
            return err(format!("conv3d: stride {stride:?} must be positive"));
        }
        if k == 0 {
            return err(format!("conv3d: kernel in weight {w_shape:?} must be non-empty"));
        }
        let padded = p.checked_mul(2).and_then(|pp| pp.checked_add(n));
        match padded {
            Some(padded) if padded >= k => out[2 + axis] = (padded - k) / s + 1,
            _ => {
                return err(format!(
                    "conv3d: kernel {:?} larger than padded input {in_shape:?} (padding {padding:?})",
                    &w_shape[2..]
                ));
            }
        }
    }
    numel(&out, "conv3d output")?;
    Ok(out)
}

fn conv_check(
    input: &[impl Sized],
    in_shape: [usize; 5],
    weight: &[impl Sized],
    w_shape: [usize; 5],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<[usize; 5], ShapeError> {
    check_len(input, &in_shape, "conv3d input")?;
    check_len(weight, &w_shape, "conv3d weight")?;
    conv_out_shape(in_shape, w_shape, stride, padding)
}

// ---------------------------------------------------------------------------------------------
// Convolution.
// ---------------------------------------------------------------------------------------------

/// 3-D convolution (cross-correlation, as in PyTorch) with zero padding, dilation 1, one group.
///
/// `input` is `[n, cin, d, h, w]`, `weight` is `[cout, cin, kd, kh, kw]`, `bias` (if any) has
/// `cout` values. The output is `[n, cout, od, oh, ow]` with `o = (size + 2·pad − k) / stride + 1`
/// per spatial axis.
pub fn conv3d<T: Elem>(
    input: &[T],
    in_shape: [usize; 5],
    weight: &[T],
    w_shape: [usize; 5],
    bias: Option<&[T]>,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<(Vec<T>, [usize; 5]), ShapeError> {
    let out_shape = conv_check(input, in_shape, weight, w_shape, stride, padding)?;
    check_channels(bias, w_shape[0], "conv3d bias")?;
    let [nb, cout, od, oh, ow] = out_shape;
    let cin = w_shape[1];
    let mut out = vec![T::ZERO; numel(&out_shape, "conv3d output")?];
    for n in 0..nb {
        for co in 0..cout {
            let b0 = bias.map_or(T::ZERO, |b| b[co]);
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut acc = b0;
                        for ci in 0..cin {
                            for_each_tap(
                                [z, y, x],
                                in_shape,
                                w_shape,
                                stride,
                                padding,
                                |[a, b, c], [iz, iy, ix]| {
                                    acc += input[at(in_shape, n, ci, iz, iy, ix)]
                                        * weight[at(w_shape, co, ci, a, b, c)];
                                },
                            );
                        }
                        out[at(out_shape, n, co, z, y, x)] = acc;
                    }
                }
            }
        }
    }
    Ok((out, out_shape))
}

/// Backward pass of [`conv3d`]: gradients with respect to input, weight and bias.
///
/// `out_shape` must be the shape [`conv3d`] produces for these arguments and `grad_out` must
/// hold that many values. The bias gradient is always returned (it does not depend on whether
/// the forward pass used a bias).
#[allow(clippy::too_many_arguments)]
pub fn conv3d_backward<T: Elem>(
    input: &[T],
    in_shape: [usize; 5],
    weight: &[T],
    w_shape: [usize; 5],
    grad_out: &[T],
    out_shape: [usize; 5],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Conv3dGrads<T>, ShapeError> {
    let expected = conv_check(input, in_shape, weight, w_shape, stride, padding)?;
    if out_shape != expected {
        return err(format!(
            "conv3d_backward: out_shape {out_shape:?} but the convolution gives {expected:?}"
        ));
    }
    check_len(grad_out, &out_shape, "conv3d_backward grad_out")?;
    let [nb, cout, od, oh, ow] = out_shape;
    let cin = w_shape[1];
    let mut grad_input = vec![T::ZERO; input.len()];
    let mut grad_weight = vec![T::ZERO; weight.len()];
    let mut grad_bias = vec![T::ZERO; cout];
    for n in 0..nb {
        for co in 0..cout {
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let g = grad_out[at(out_shape, n, co, z, y, x)];
                        grad_bias[co] += g;
                        for ci in 0..cin {
                            for_each_tap(
                                [z, y, x],
                                in_shape,
                                w_shape,
                                stride,
                                padding,
                                |[a, b, c], [iz, iy, ix]| {
                                    let i = at(in_shape, n, ci, iz, iy, ix);
                                    let w = at(w_shape, co, ci, a, b, c);
                                    grad_input[i] += g * weight[w];
                                    grad_weight[w] += g * input[i];
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(Conv3dGrads { grad_input, grad_weight, grad_bias })
}

// ---------------------------------------------------------------------------------------------
// Transposed convolution (stride == kernel).
// ---------------------------------------------------------------------------------------------

/// Validates a transposed convolution with stride equal to kernel; returns the output shape.
fn conv_t_check(
    input: &[impl Sized],
    in_shape: [usize; 5],
    weight: &[impl Sized],
    w_shape: [usize; 5],
) -> Result<[usize; 5], ShapeError> {
    check_len(input, &in_shape, "conv_transpose3d input")?;
    check_len(weight, &w_shape, "conv_transpose3d weight")?;
    if w_shape[0] != in_shape[1] {
        return err(format!(
            "conv_transpose3d: weight {w_shape:?} expects {} input channels, input {in_shape:?} has {}",
            w_shape[0], in_shape[1]
        ));
    }
    if w_shape[2..].contains(&0) {
        return err(format!("conv_transpose3d: kernel in weight {w_shape:?} must be non-empty"));
    }
    let mut out = [in_shape[0], w_shape[1], 0, 0, 0];
    for axis in 0..3 {
        out[2 + axis] = in_shape[2 + axis].checked_mul(w_shape[2 + axis]).ok_or_else(|| {
            ShapeError(format!("conv_transpose3d: output of {in_shape:?} with {w_shape:?} too large"))
        })?;
    }
    numel(&out, "conv_transpose3d output")?;
    Ok(out)
}

/// 3-D transposed convolution whose stride equals its kernel (non-overlapping up-sampling).
///
/// `input` is `[n, cin, d, h, w]`, `weight` is `[cin, cout, kd, kh, kw]` (PyTorch layout),
/// `bias` (if any) has `cout` values and `stride` must equal `[kd, kh, kw]`. The output is
/// `[n, cout, d·kd, h·kh, w·kw]` with
/// `out[n, o, kd·i + a, kh·j + b, kw·k + c] = bias[o] + Σ_in x[n, in, i, j, k] · W[in, o, a, b, c]`.
pub fn conv_transpose3d<T: Elem>(
    input: &[T],
    in_shape: [usize; 5],
    weight: &[T],
    w_shape: [usize; 5],
    bias: Option<&[T]>,
    stride: [usize; 3],
) -> Result<(Vec<T>, [usize; 5]), ShapeError> {
    if stride[..] != w_shape[2..] {
        return err(format!(
            "conv_transpose3d: only stride == kernel is supported, got stride {stride:?} and kernel {:?}",
            &w_shape[2..]
        ));
    }
    let out_shape = conv_t_check(input, in_shape, weight, w_shape)?;
    check_channels(bias, w_shape[1], "conv_transpose3d bias")?;
    let [nb, cin, d, h, w] = in_shape;
    let [_, cout, kd, kh, kw] = w_shape;
    let mut out = vec![T::ZERO; numel(&out_shape, "conv_transpose3d output")?];
    for n in 0..nb {
        for co in 0..cout {
            let b0 = bias.map_or(T::ZERO, |b| b[co]);
            for i in 0..d {
                for j in 0..h {
                    for k in 0..w {
                        for a in 0..kd {
                            for b in 0..kh {
                                for c in 0..kw {
                                    let mut acc = b0;
                                    for ci in 0..cin {
                                        acc += input[at(in_shape, n, ci, i, j, k)]
                                            * weight[at(w_shape, ci, co, a, b, c)];
                                    }
                                    out[at(out_shape, n, co, kd * i + a, kh * j + b, kw * k + c)] = acc;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((out, out_shape))
}

/// Backward pass of [`conv_transpose3d`] (stride == kernel): gradients with respect to input,
/// weight and bias. `grad_out` must have the forward output's size, `[n, cout, d·kd, h·kh, w·kw]`.
pub fn conv_transpose3d_backward<T: Elem>(
    input: &[T],
    in_shape: [usize; 5],
    weight: &[T],
    w_shape: [usize; 5],
    grad_out: &[T],
) -> Result<ConvTranspose3dGrads<T>, ShapeError> {
    let out_shape = conv_t_check(input, in_shape, weight, w_shape)?;
    check_len(grad_out, &out_shape, "conv_transpose3d_backward grad_out")?;
    let [nb, cin, d, h, w] = in_shape;
    let [_, cout, kd, kh, kw] = w_shape;
    let mut grad_input = vec![T::ZERO; input.len()];
    let mut grad_weight = vec![T::ZERO; weight.len()];
    let mut grad_bias = vec![T::ZERO; cout];
    for n in 0..nb {
        for co in 0..cout {
            for i in 0..d {
                for j in 0..h {
                    for k in 0..w {
                        for a in 0..kd {
                            for b in 0..kh {
                                for c in 0..kw {
                                    let g =
                                        grad_out[at(out_shape, n, co, kd * i + a, kh * j + b, kw * k + c)];
                                    grad_bias[co] += g;
                                    for ci in 0..cin {
                                        let xi = at(in_shape, n, ci, i, j, k);
                                        let wi = at(w_shape, ci, co, a, b, c);
                                        grad_input[xi] += g * weight[wi];
                                        grad_weight[wi] += g * input[xi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ConvTranspose3dGrads { grad_input, grad_weight, grad_bias })
}

// ---------------------------------------------------------------------------------------------
// Instance normalisation.
// ---------------------------------------------------------------------------------------------

/// Validates an instance-norm call; returns the number of voxels per (sample, channel).
fn norm_check<T>(
    input: &[T],
    shape: [usize; 5],
    weight: Option<&[T]>,
    what: &str,
) -> Result<usize, ShapeError> {
    check_len(input, &shape, what)?;
    check_channels(weight, shape[1], what)?;
    let m = shape[2] * shape[3] * shape[4];
    if m == 0 {
        return err(format!("{what}: shape {shape:?} has no voxels to normalise over"));
    }
    Ok(m)
}

/// Mean and reciprocal standard deviation `1 / sqrt(var + eps)` (biased variance) of `xs`.
fn moments<T: Elem>(xs: &[T], eps: T) -> (T, T) {
    let m = T::from_f64(xs.len() as f64);
    let mut sum = T::ZERO;
    for &x in xs {
        sum += x;
    }
    let mean = sum / m;
    let mut sq = T::ZERO;
    for &x in xs {
        let d = x - mean;
        sq += d * d;
    }
    let var = sq / m;
    (mean, T::ONE / (var + eps).sqrt())
}

/// Instance normalisation over each (sample, channel) volume, with an optional affine transform.
///
/// `y = (x − mean) / sqrt(var + eps) · weight[c] + bias[c]`, mean and biased variance taken over
/// d·h·w. A missing `weight` acts as 1 and a missing `bias` as 0.
pub fn instance_norm3d<T: Elem>(
    input: &[T],
    shape: [usize; 5],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
) -> Result<Vec<T>, ShapeError> {
    let m = norm_check(input, shape, weight, "instance_norm3d")?;
    check_channels(bias, shape[1], "instance_norm3d bias")?;
    let eps = T::from_f64(eps);
    let mut out = vec![T::ZERO; input.len()];
    for (plane, (xs, ys)) in input.chunks_exact(m).zip(out.chunks_exact_mut(m)).enumerate() {
        let c = plane % shape[1];
        let (mean, r) = moments(xs, eps);
        let w = weight.map_or(T::ONE, |w| w[c]);
        let b = bias.map_or(T::ZERO, |b| b[c]);
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = (x - mean) * r * w + b;
        }
    }
    Ok(out)
}

/// Backward pass of [`instance_norm3d`], by the exact analytic formula.
///
/// With `x̂ = (x − μ)·r`, `r = 1 / sqrt(var + eps)` and `g = grad_out · weight[c]`:
/// `grad_x = r · (g − mean(g) − x̂ · mean(g · x̂))`, `grad_weight[c] = Σ grad_out · x̂` and
/// `grad_bias[c] = Σ grad_out` (sums over samples and voxels). The weight and bias gradients are
/// returned only when `weight` is given (the bias gradient does not depend on the bias value).
pub fn instance_norm3d_backward<T: Elem>(
    input: &[T],
    shape: [usize; 5],
    weight: Option<&[T]>,
    eps: f64,
    grad_out: &[T],
) -> Result<InstanceNormGrads<T>, ShapeError> {
    let m = norm_check(input, shape, weight, "instance_norm3d_backward")?;
    check_len(grad_out, &shape, "instance_norm3d_backward grad_out")?;
    let eps = T::from_f64(eps);
    let mt = T::from_f64(m as f64);
    let channels = shape[1];
    let mut grad_input = vec![T::ZERO; input.len()];
    let mut grad_weight = vec![T::ZERO; channels];
    let mut grad_bias = vec![T::ZERO; channels];
    let mut xhat = vec![T::ZERO; m];
    let planes = input.chunks_exact(m).zip(grad_out.chunks_exact(m)).zip(grad_input.chunks_exact_mut(m));
    for (plane, ((xs, gos), gis)) in planes.enumerate() {
        let c = plane % channels;
        let (mean, r) = moments(xs, eps);
        let w = weight.map_or(T::ONE, |w| w[c]);
        let (mut sum_g, mut sum_gx) = (T::ZERO, T::ZERO);
        for ((xh, &x), &go) in xhat.iter_mut().zip(xs).zip(gos) {
            *xh = (x - mean) * r;
            let g = go * w;
            sum_g += g;
            sum_gx += g * *xh;
            grad_weight[c] += go * *xh;
            grad_bias[c] += go;
        }
        let (mean_g, mean_gx) = (sum_g / mt, sum_gx / mt);
        for ((gi, &xh), &go) in gis.iter_mut().zip(&xhat).zip(gos) {
            *gi = r * (go * w - mean_g - xh * mean_gx);
        }
    }
    let (grad_weight, grad_bias) =
        if weight.is_some() { (Some(grad_weight), Some(grad_bias)) } else { (None, None) };
    Ok(InstanceNormGrads { grad_input, grad_weight, grad_bias })
}

// ---------------------------------------------------------------------------------------------
// Leaky ReLU.
// ---------------------------------------------------------------------------------------------

/// Leaky ReLU, element-wise: `x` where `x > 0`, `slope · x` otherwise (PyTorch semantics).
pub fn leaky_relu<T: Elem>(input: &[T], slope: f64) -> Vec<T> {
    let s = T::from_f64(slope);
    input.iter().map(|&x| if x > T::ZERO { x } else { x * s }).collect()
}

/// Backward pass of [`leaky_relu`]: `grad` where `x > 0`, `slope · grad` otherwise (so at
/// `x == 0` the slope is used, as in PyTorch). Errors if the two slices differ in length.
pub fn leaky_relu_backward<T: Elem>(input: &[T], slope: f64, grad_out: &[T]) -> Result<Vec<T>, ShapeError> {
    if input.len() != grad_out.len() {
        return err(format!(
            "leaky_relu_backward: input has {} elements, grad_out has {}",
            input.len(),
            grad_out.len()
        ));
    }
    let s = T::from_f64(slope);
    Ok(input.iter().zip(grad_out).map(|(&x, &g)| if x > T::ZERO { g } else { g * s }).collect())
}

// ---------------------------------------------------------------------------------------------
// Average pooling (stride == kernel, no padding, floor mode).
// ---------------------------------------------------------------------------------------------

/// Output shape of the average pool, validating the kernel.
fn pool_out_shape(shape: [usize; 5], kernel: [usize; 3], what: &str) -> Result<[usize; 5], ShapeError> {
    if kernel.contains(&0) {
        return err(format!("{what}: kernel {kernel:?} must be positive"));
    }
    if (0..3).any(|a| shape[2 + a] < kernel[a]) {
        return err(format!("{what}: kernel {kernel:?} larger than input {shape:?}"));
    }
    Ok([shape[0], shape[1], shape[2] / kernel[0], shape[3] / kernel[1], shape[4] / kernel[2]])
}

/// 3-D average pooling with stride equal to the kernel, no padding and floor mode: the output is
/// `[n, c, d / kd, h / kh, w / kw]` and trailing voxels that do not fill a window are dropped.
pub fn avg_pool3d<T: Elem>(
    input: &[T],
    shape: [usize; 5],
    kernel: [usize; 3],
) -> Result<(Vec<T>, [usize; 5]), ShapeError> {
    check_len(input, &shape, "avg_pool3d input")?;
    let out_shape = pool_out_shape(shape, kernel, "avg_pool3d")?;
    let [nb, ch, od, oh, ow] = out_shape;
    let [kd, kh, kw] = kernel;
    let count = T::from_f64((kd * kh * kw) as f64);
    let mut out = vec![T::ZERO; numel(&out_shape, "avg_pool3d output")?];
    for n in 0..nb {
        for c in 0..ch {
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut acc = T::ZERO;
                        for a in 0..kd {
                            for b in 0..kh {
                                for e in 0..kw {
                                    acc += input[at(shape, n, c, z * kd + a, y * kh + b, x * kw + e)];
                                }
                            }
                        }
                        out[at(out_shape, n, c, z, y, x)] = acc / count;
                    }
                }
            }
        }
    }
    Ok((out, out_shape))
}

/// Backward pass of [`avg_pool3d`]: every input voxel inside a window receives
/// `grad / (kd·kh·kw)`; voxels dropped by floor mode receive 0.
pub fn avg_pool3d_backward<T: Elem>(
    in_shape: [usize; 5],
    kernel: [usize; 3],
    grad_out: &[T],
) -> Result<Vec<T>, ShapeError> {
    let out_shape = pool_out_shape(in_shape, kernel, "avg_pool3d_backward")?;
    check_len(grad_out, &out_shape, "avg_pool3d_backward grad_out")?;
    let [nb, ch, od, oh, ow] = out_shape;
    let [kd, kh, kw] = kernel;
    let count = T::from_f64((kd * kh * kw) as f64);
    let mut grad_input = vec![T::ZERO; numel(&in_shape, "avg_pool3d_backward input")?];
    for n in 0..nb {
        for c in 0..ch {
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let g = grad_out[at(out_shape, n, c, z, y, x)] / count;
                        for a in 0..kd {
                            for b in 0..kh {
                                for e in 0..kw {
                                    grad_input[at(in_shape, n, c, z * kd + a, y * kh + b, x * kw + e)] = g;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(grad_input)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a tiny deterministic generator, good enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [-1, 1).
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }

        fn vec(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.uniform()).collect()
        }
    }

    fn len(shape: [usize; 5]) -> usize {
        shape.iter().product()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    const H: f64 = 1e-6;
    const TOL: f64 = 1e-6;

    /// Central-difference gradient of the scalar function `f` at `x`.
    fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                let orig = xp[i];
                xp[i] = orig + H;
                let plus = f(&xp);
                xp[i] = orig - H;
                let minus = f(&xp);
                xp[i] = orig;
                (plus - minus) / (2.0 * H)
            })
            .collect()
    }

    fn assert_close(analytic: &[f64], numeric: &[f64], tol: f64, what: &str) {
        assert_eq!(analytic.len(), numeric.len(), "{what}: lengths differ");
        for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
            let scale = a.abs().max(n.abs()).max(1.0);
            assert!((a - n).abs() <= tol * scale, "{what}[{i}]: analytic {a} vs expected {n}");
        }
    }

    // ---------------------------------------------------------------- hand-checkable cases

    #[test]
    fn conv_1x1x1_is_channel_matmul() {
        // Two input channels, two voxels; W = [[1, 10], [100, 1000]].
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 10.0, 100.0, 1000.0];
        let (y, s) =
            conv3d(&x, [1, 2, 1, 1, 2], &w, [2, 2, 1, 1, 1], Some(&[0.5, -1.0]), [1; 3], [0; 3]).unwrap();
        assert_eq!(s, [1, 2, 1, 1, 2]);
        assert_eq!(y, vec![31.5, 42.5, 3099.0, 4199.0]);

        // The same on random data against an explicit matmul, in f32.
        let mut rng = Rng(1);
        let (cin, cout, vox) = (3, 4, 2 * 3 * 5);
        let x: Vec<f32> = rng.vec(cin * vox).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = rng.vec(cout * cin).iter().map(|&v| v as f32).collect();
        let (y, _) = conv3d(&x, [1, cin, 2, 3, 5], &w, [cout, cin, 1, 1, 1], None, [1; 3], [0; 3]).unwrap();
        for o in 0..cout {
            for v in 0..vox {
                let e: f32 = (0..cin).map(|i| w[o * cin + i] * x[i * vox + v]).sum();
                assert!((y[o * vox + v] - e).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn conv_box_filter_with_padding_counts_neighbours() {
        let x = vec![1.0f64; 27];
        let w = vec![1.0f64; 27];
        let (y, s) = conv3d(&x, [1, 1, 3, 3, 3], &w, [1, 1, 3, 3, 3], None, [1; 3], [1; 3]).unwrap();
        assert_eq!(s, [1, 1, 3, 3, 3]);
        assert_eq!(y[at(s, 0, 0, 1, 1, 1)], 27.0); // centre
        assert_eq!(y[at(s, 0, 0, 0, 0, 0)], 8.0); // corner
        assert_eq!(y[at(s, 0, 0, 0, 1, 1)], 18.0); // face centre
        assert_eq!(y[at(s, 0, 0, 0, 0, 1)], 12.0); // edge centre
    }

    #[test]
    fn conv_stride_two_along_w() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let w = [1.0, 10.0];
        let (y, s) = conv3d(&x, [1, 1, 1, 1, 5], &w, [1, 1, 1, 1, 2], None, [1, 1, 2], [0; 3]).unwrap();
        assert_eq!(s, [1, 1, 1, 1, 2]);
        assert_eq!(y, vec![21.0, 43.0]);
    }

    #[test]
    fn conv_transpose_one_hot_weight_places_input() {
        // Two input channels, one output channel, kernel [2, 1, 1]; only W[1, 0, 1, 0, 0] is set,
        // so channel 1 is copied to the odd depth slice and the even slice holds just the bias.
        let x = [3.0, 4.0, 5.0, 7.0];
        let w = [0.0, 0.0, 0.0, 1.0];
        let (y, s) =
            conv_transpose3d(&x, [1, 2, 1, 2, 1], &w, [2, 1, 2, 1, 1], Some(&[0.25]), [2, 1, 1]).unwrap();
        assert_eq!(s, [1, 1, 2, 2, 1]);
        assert_eq!(y, vec![0.25, 0.25, 5.25, 7.25]);
    }

    #[test]
    fn conv_transpose_equals_conv_input_gradient() {
        // With stride == kernel and no padding, the transposed convolution is the adjoint of the
        // convolution: conv_transpose(g, W) == conv3d_backward(.., W, g).grad_input.
        let mut rng = Rng(7);
        let (ci, co) = (3, 2); // conv channels: ci -> co; the transposed conv maps co -> ci
        let x_shape = [2, ci, 4, 6, 3];
        let w_shape = [co, ci, 2, 3, 1];
        let x = rng.vec(len(x_shape));
        let w = rng.vec(len(w_shape));
        let stride = [2, 3, 1];
        let (_, y_shape) = conv3d(&x, x_shape, &w, w_shape, None, stride, [0; 3]).unwrap();
        let g = rng.vec(len(y_shape));
        let back = conv3d_backward(&x, x_shape, &w, w_shape, &g, y_shape, stride, [0; 3]).unwrap();
        let (t, t_shape) = conv_transpose3d(&g, y_shape, &w, w_shape, None, stride).unwrap();
        assert_eq!(t_shape, x_shape);
        assert_close(&t, &back.grad_input, 1e-12, "adjoint");
    }

    #[test]
    fn avg_pool_of_ramp() {
        let x: Vec<f64> = (0..10).map(f64::from).collect(); // [1, 1, 1, 2, 5] ramp
        let (y, s) = avg_pool3d(&x, [1, 1, 1, 2, 5], [1, 2, 2]).unwrap();
        assert_eq!(s, [1, 1, 1, 1, 2]);
        assert_eq!(y, vec![3.0, 5.0]); // (0+1+5+6)/4, (2+3+7+8)/4; column 4 dropped
        let g = avg_pool3d_backward([1, 1, 1, 2, 5], [1, 2, 2], &[4.0, 8.0]).unwrap();
        assert_eq!(g, vec![1.0, 1.0, 2.0, 2.0, 0.0, 1.0, 1.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn instance_norm_small_case() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = instance_norm3d(&x, [1, 1, 1, 1, 4], Some(&[2.0]), Some(&[1.0]), 0.0).unwrap();
        let sd = 1.25f64.sqrt(); // mean 2.5, biased variance 1.25
        let e: Vec<f64> = x.iter().map(|v| (v - 2.5) / sd * 2.0 + 1.0).collect();
        assert_close(&y, &e, 1e-15, "instance_norm");

        // Without affine parameters every plane has mean 0 and variance 1 (eps 0).
        let mut rng = Rng(3);
        let shape = [2, 3, 3, 2, 5];
        let x = rng.vec(len(shape));
        let y = instance_norm3d(&x, shape, None, None, 0.0).unwrap();
        for plane in y.chunks(30) {
            let mean = plane.iter().sum::<f64>() / 30.0;
            let var = plane.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 30.0;
            assert!(mean.abs() < 1e-14 && (var - 1.0).abs() < 1e-13);
        }
    }

    #[test]
    fn leaky_relu_values_and_zero_gradient() {
        let x = [-2.0, 0.0, 3.0];
        assert_eq!(leaky_relu(&x, 0.1), vec![-0.2, 0.0, 3.0]);
        assert_eq!(leaky_relu_backward(&x, 0.1, &[1.0, 1.0, 1.0]).unwrap(), vec![0.1, 0.1, 1.0]);
    }

    #[test]
    fn f32_matches_f64() {
        let mut rng = Rng(11);
        let (xs, ws) = ([1, 2, 5, 4, 3], [3, 2, 3, 2, 2]);
        let x = rng.vec(len(xs));
        let w = rng.vec(len(ws));
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let (y64, _) = conv3d(&x, xs, &w, ws, None, [2, 1, 1], [1, 0, 1]).unwrap();
        let (y32, _) = conv3d(&x32, xs, &w32, ws, None, [2, 1, 1], [1, 0, 1]).unwrap();
        let y32: Vec<f64> = y32.iter().map(|v| v.to_f64()).collect();
        assert_close(&y32, &y64, 1e-5, "conv f32");
        let n64 = instance_norm3d(&x, xs, None, None, 1e-5).unwrap();
        let n32 = instance_norm3d(&x32, xs, None, None, 1e-5).unwrap();
        let n32: Vec<f64> = n32.iter().map(|v| v.to_f64()).collect();
        assert_close(&n32, &n64, 1e-5, "instance_norm f32");
    }

    // ---------------------------------------------------------------- finite differences

    fn check_conv3d(
        seed: u64,
        x_shape: [usize; 5],
        w_shape: [usize; 5],
        stride: [usize; 3],
        pad: [usize; 3],
    ) {
        let mut rng = Rng(seed);
        let x = rng.vec(len(x_shape));
        let w = rng.vec(len(w_shape));
        let b = rng.vec(w_shape[0]);
        let (_, y_shape) = conv3d(&x, x_shape, &w, w_shape, Some(&b), stride, pad).unwrap();
        let r = rng.vec(len(y_shape));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            dot(&conv3d(x, x_shape, w, w_shape, Some(b), stride, pad).unwrap().0, &r)
        };
        let g = conv3d_backward(&x, x_shape, &w, w_shape, &r, y_shape, stride, pad).unwrap();
        assert_close(&g.grad_input, &numeric_grad(&x, |x| loss(x, &w, &b)), TOL, "conv3d dx");
        assert_close(&g.grad_weight, &numeric_grad(&w, |w| loss(&x, w, &b)), TOL, "conv3d dw");
        assert_close(&g.grad_bias, &numeric_grad(&b, |b| loss(&x, &w, b)), TOL, "conv3d db");
    }

    #[test]
    fn conv3d_gradients_match_finite_differences() {
        check_conv3d(1, [2, 3, 5, 4, 3], [4, 3, 3, 2, 3], [1, 1, 1], [1, 0, 1]);
        check_conv3d(2, [1, 2, 7, 6, 5], [3, 2, 3, 3, 2], [2, 2, 2], [1, 1, 0]);
        check_conv3d(3, [1, 2, 6, 5, 7], [2, 2, 2, 3, 3], [2, 1, 3], [0, 1, 2]);
        check_conv3d(4, [2, 1, 3, 3, 3], [2, 1, 1, 1, 1], [1, 2, 1], [0, 0, 0]);
    }

    fn check_conv_transpose3d(seed: u64, x_shape: [usize; 5], w_shape: [usize; 5]) {
        let mut rng = Rng(seed);
        let stride = [w_shape[2], w_shape[3], w_shape[4]];
        let x = rng.vec(len(x_shape));
        let w = rng.vec(len(w_shape));
        let b = rng.vec(w_shape[1]);
        let (_, y_shape) = conv_transpose3d(&x, x_shape, &w, w_shape, Some(&b), stride).unwrap();
        let r = rng.vec(len(y_shape));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            dot(&conv_transpose3d(x, x_shape, w, w_shape, Some(b), stride).unwrap().0, &r)
        };
        let g = conv_transpose3d_backward(&x, x_shape, &w, w_shape, &r).unwrap();
        assert_close(&g.grad_input, &numeric_grad(&x, |x| loss(x, &w, &b)), TOL, "conv_t dx");
        assert_close(&g.grad_weight, &numeric_grad(&w, |w| loss(&x, w, &b)), TOL, "conv_t dw");
        assert_close(&g.grad_bias, &numeric_grad(&b, |b| loss(&x, &w, b)), TOL, "conv_t db");
    }

    #[test]
    fn conv_transpose3d_gradients_match_finite_differences() {
        check_conv_transpose3d(5, [2, 3, 3, 2, 3], [3, 2, 2, 2, 2]);
        check_conv_transpose3d(6, [1, 2, 3, 1, 5], [2, 3, 1, 2, 3]);
        check_conv_transpose3d(7, [1, 1, 1, 1, 1], [1, 2, 3, 1, 2]);
    }

    fn check_instance_norm(seed: u64, shape: [usize; 5], affine: bool, with_bias: bool, eps: f64) {
        let mut rng = Rng(seed);
        let x = rng.vec(len(shape));
        let w = rng.vec(shape[1]);
        let b = rng.vec(shape[1]);
        let r = rng.vec(len(shape));
        let bias = with_bias.then_some(&b[..]);
        let loss = |x: &[f64], w: Option<&[f64]>, b: Option<&[f64]>| {
            dot(&instance_norm3d(x, shape, w, b, eps).unwrap(), &r)
        };
        let wopt = affine.then_some(&w[..]);
        let g = instance_norm3d_backward(&x, shape, wopt, eps, &r).unwrap();
        assert_close(&g.grad_input, &numeric_grad(&x, |x| loss(x, wopt, bias)), TOL, "norm dx");
        if affine {
            let gw = g.grad_weight.expect("weight gradient");
            let gb = g.grad_bias.expect("bias gradient");
            assert_close(&gw, &numeric_grad(&w, |w| loss(&x, Some(w), bias)), TOL, "norm dw");
            assert_close(&gb, &numeric_grad(&b, |b| loss(&x, wopt, Some(b))), TOL, "norm db");
        } else {
            assert!(g.grad_weight.is_none() && g.grad_bias.is_none());
        }
    }

    #[test]
    fn instance_norm_gradients_match_finite_differences() {
        check_instance_norm(8, [2, 3, 3, 4, 5], true, true, 1e-5);
        check_instance_norm(9, [1, 2, 3, 1, 5], false, false, 1e-5);
        check_instance_norm(10, [3, 1, 2, 3, 1], true, false, 0.1);
        check_instance_norm(11, [1, 2, 1, 1, 3], false, true, 1e-3);
    }

    #[test]
    fn leaky_relu_gradient_matches_finite_differences() {
        let mut rng = Rng(12);
        // Keep inputs away from the kink at 0 so central differences are exact.
        let x: Vec<f64> = rng.vec(200).iter().map(|&v| if v.abs() < 1e-3 { 0.5 } else { v }).collect();
        let r = rng.vec(200);
        for slope in [0.01, 0.2] {
            let g = leaky_relu_backward(&x, slope, &r).unwrap();
            let n = numeric_grad(&x, |x| dot(&leaky_relu(x, slope), &r));
            assert_close(&g, &n, TOL, "leaky_relu dx");
        }
    }

    #[test]
    fn avg_pool_gradient_matches_finite_differences() {
        let cases =
            [([2, 2, 5, 7, 4], [2, 3, 2]), ([1, 3, 3, 4, 6], [1, 2, 3]), ([1, 1, 3, 3, 3], [3, 3, 3])];
        for (seed, (shape, kernel)) in (13..).zip(cases) {
            let mut rng = Rng(seed);
            let x = rng.vec(len(shape));
            let (_, out_shape) = avg_pool3d(&x, shape, kernel).unwrap();
            let r = rng.vec(len(out_shape));
            let g = avg_pool3d_backward(shape, kernel, &r).unwrap();
            let n = numeric_grad(&x, |x| dot(&avg_pool3d(x, shape, kernel).unwrap().0, &r));
            assert_close(&g, &n, TOL, "avg_pool dx");
        }
    }

    // ---------------------------------------------------------------- shape errors

    #[test]
    fn shape_errors_are_reported() {
        let x = vec![0.0f64; 2 * 4 * 4 * 4];
        let xs = [1, 2, 4, 4, 4];
        let w = vec![0.0f64; 3 * 2 * 27];
        let ws = [3, 2, 3, 3, 3];
        // conv3d
        assert!(conv3d(&x[1..], xs, &w, ws, None, [1; 3], [0; 3]).is_err()); // input length
        assert!(conv3d(&x, xs, &w[1..], ws, None, [1; 3], [0; 3]).is_err()); // weight length
        assert!(conv3d(&x, [1, 4, 4, 4, 2], &w, ws, None, [1; 3], [0; 3]).is_err()); // channels
        assert!(conv3d(&x, xs, &w, ws, Some(&[0.0; 2]), [1; 3], [0; 3]).is_err()); // bias length
        assert!(conv3d(&x, xs, &w, ws, None, [1, 0, 1], [0; 3]).is_err()); // zero stride
        assert!(conv3d(&x, [1, 2, 2, 4, 8], &w, ws, None, [1; 3], [0; 3]).is_err()); // kernel too big
        assert!(conv3d(&x, [1, 2, 2, 4, 8], &w, ws, None, [1; 3], [1, 0, 0]).is_ok()); // padded fits
        assert!(conv3d(&x, [1, 2, 4, 4, 4], &[0.0; 0], [3, 2, 0, 3, 3], None, [1; 3], [0; 3]).is_err());
        // conv3d_backward
        let (y, ys) = conv3d(&x, xs, &w, ws, None, [1; 3], [0; 3]).unwrap();
        assert!(conv3d_backward(&x, xs, &w, ws, &y, ys, [1; 3], [0; 3]).is_ok());
        assert!(conv3d_backward(&x, xs, &w, ws, &y[1..], ys, [1; 3], [0; 3]).is_err());
        assert!(conv3d_backward(&x, xs, &w, ws, &y, [1, 3, 2, 2, 1], [1; 3], [0; 3]).is_err());
        assert!(conv3d_backward(&x, xs, &w, ws, &y, ys, [2, 1, 1], [0; 3]).is_err());
        // conv_transpose3d
        let wt = vec![0.0f64; 2 * 3 * 8];
        let wts = [2, 3, 2, 2, 2];
        assert!(conv_transpose3d(&x, xs, &wt, wts, None, [2, 2, 2]).is_ok());
        assert!(conv_transpose3d(&x, xs, &wt, wts, None, [2, 2, 1]).is_err()); // stride != kernel
        assert!(conv_transpose3d(&x, xs, &wt, [3, 2, 2, 2, 2], None, [2, 2, 2]).is_err()); // channels
        assert!(conv_transpose3d(&x, xs, &wt, wts, Some(&[0.0; 2]), [2, 2, 2]).is_err()); // bias
        assert!(conv_transpose3d(&x[1..], xs, &wt, wts, None, [2, 2, 2]).is_err());
        assert!(conv_transpose3d_backward(&x, xs, &wt, wts, &vec![0.0; 3 * 512]).is_ok());
        assert!(conv_transpose3d_backward(&x, xs, &wt, wts, &vec![0.0; 3 * 511]).is_err());
        // instance_norm3d
        assert!(instance_norm3d(&x, xs, Some(&[1.0; 2]), Some(&[0.0; 2]), 1e-5).is_ok());
        assert!(instance_norm3d(&x, xs, Some(&[1.0; 3]), None, 1e-5).is_err());
        assert!(instance_norm3d(&x, xs, None, Some(&[0.0; 1]), 1e-5).is_err());
        assert!(instance_norm3d(&x[1..], xs, None, None, 1e-5).is_err());
        assert!(instance_norm3d(&[0.0f64; 0], [1, 2, 0, 4, 4], None, None, 1e-5).is_err());
        assert!(instance_norm3d_backward(&x, xs, None, 1e-5, &x[1..]).is_err());
        assert!(instance_norm3d_backward(&x, xs, Some(&[1.0]), 1e-5, &x).is_err());
        // leaky_relu_backward
        assert!(leaky_relu_backward(&x, 0.01, &x[1..]).is_err());
        // avg_pool3d
        assert!(avg_pool3d(&x, xs, [2, 2, 2]).is_ok());
        assert!(avg_pool3d(&x, xs, [5, 1, 1]).is_err()); // kernel too big
        assert!(avg_pool3d(&x, xs, [0, 1, 1]).is_err()); // zero kernel
        assert!(avg_pool3d(&x[1..], xs, [2, 2, 2]).is_err());
        assert!(avg_pool3d_backward(xs, [2, 2, 2], &[0.0f64; 16]).is_ok());
        assert!(avg_pool3d_backward(xs, [2, 2, 2], &[0.0f64; 15]).is_err());
        // Overflowing shapes are errors, not panics.
        assert!(conv3d(&x, [usize::MAX, 2, 4, 4, 4], &w, ws, None, [1; 3], [0; 3]).is_err());
    }
}
