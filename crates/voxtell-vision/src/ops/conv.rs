//! 3-D convolution (`nn.Conv3d` with padding `(k − 1) / 2`, as every convolution of the
//! official network), its gradients, and the decoder's fused forms: the sum of a shared addend
//! into the output ([`conv3d_add`]) and the upsampling computed inside the convolution
//! ([`upsample_conv3d_add`]). Which kernel runs is decided by [`crate::kernels::select`].

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, bail};

use super::{
    ConvPrecision, CpuOp, Op, Result, Weighted, WeightedOp, arity, conv_precision, conv_transpose3d, dims5,
    dispatch, slice,
};
use crate::composed;
use crate::kernels::cpu::{Avx512, Avx512Bf16, CpuFeatures};
use crate::kernels::direct_channels_last::{self, Input, Upsample};
use crate::kernels::select::{self, ConvPath};
use crate::kernels::{ConvGeom, Elem, as_f32, conv_gemm, direct_ncdhw, into_t, norm, pointwise};

/// 3-D convolution with zero padding `(k − 1) / 2`, dilation 1, groups 1. `x`: (N, Cin, D, H, W);
/// `weight`: (Cout, Cin, kd, kh, kw) with odd kernel sizes; `bias`: (Cout); `stride` per axis.
pub fn conv3d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: [usize; 3]) -> Result<Tensor> {
    let geom = conv_geom(x.dims(), weight.dims(), bias.map(|b| b.dims()), stride)?;
    if !x.device().is_cpu() {
        return composed::conv3d(x, weight, bias, stride);
    }
    let op = Op(Weighted(Conv3d { geom, precision: conv_precision() }));
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

/// `conv3d(x, weight, None, stride) + addend`, the sum added into the convolution's own output
/// (no separate sum tensor). `addend` is (N / r, Cout, D', H', W') for an output of
/// (N, Cout, D', H', W'): each addend sample serves `r` consecutive output samples (in the
/// fusion decoder, the prompts of an image share the skip half of a convolution this way).
/// Same values as `conv3d(x, weight, None, stride)?` plus the repeated addend.
pub fn conv3d_add(x: &Tensor, weight: &Tensor, addend: &Tensor, stride: [usize; 3]) -> Result<Tensor> {
    let geom = conv_geom(x.dims(), weight.dims(), None, stride)?;
    let [od, oh, ow] = geom.output();
    let repeat = addend_repeat(&geom, addend)?;
    let na = geom.batch / repeat;
    if !x.device().is_cpu() {
        let out = composed::conv3d(x, weight, None, stride)?;
        let dims = out.dims().to_vec();
        return out
            .reshape((na, repeat, dims[1], od, oh, ow))?
            .broadcast_add(&addend.unsqueeze(1)?)?
            .reshape(dims);
    }
    let op = Op(Conv3dAdd { conv: Conv3d { geom, precision: conv_precision() }, repeat });
    x.contiguous()?.apply_op3(&weight.contiguous()?, &addend.contiguous()?, op)
}

/// `conv3d_add(&conv_transpose3d(x, up_weight, up_bias, up_stride)?, weight, addend, [1, 1, 1])`
/// — a decoder stage's upsampling (transposed convolution, kernel == stride) and its first
/// convolution plus the shared skip half — without the upsampled tensor: on the CPU in f32 with
/// AVX-512, each task of the channels-last convolution computes the upsampled rows its input
/// window needs (the two slabs a window shares with its neighbours are computed twice: at 8
/// slices per task, a quarter more upsampling, cheap beside the 3×3×3 convolution). At
/// VoxTell's last stage this saves the 864 MB upsampled tensor of a 192³ patch.
///
/// For inference: where gradients are tracked, off the CPU, for f64, without AVX-512 or with
/// fewer than 32 channels into or out of the convolution it runs the composition above (same
/// values up to rounding: the upsampling's sums are ordered differently).
/// [`ConvPrecision::Bf16`] rounds the upsampled values to bf16 as [`conv3d`] would round its
/// input.
pub fn upsample_conv3d_add(
    x: &Tensor,
    up_weight: &Tensor,
    up_bias: Option<&Tensor>,
    up_stride: [usize; 3],
    weight: &Tensor,
    addend: &Tensor,
) -> Result<Tensor> {
    let composed =
        || conv3d_add(&conv_transpose3d(x, up_weight, up_bias, up_stride)?, weight, addend, [1, 1, 1]);
    let [n, ci, d, h, w] = dims5(x.dims(), "upsample_conv3d_add input")?;
    let [wci, cu, kd, kh, kw] = dims5(up_weight.dims(), "upsample_conv3d_add upsampling weight")?;
    let tensors = [Some(x), Some(up_weight), up_bias, Some(weight), Some(addend)];
    let fused = wci == ci
        && [kd, kh, kw] == up_stride
        && up_bias.is_none_or(|b| b.dims() == [cu])
        && x.device().is_cpu()
        && tensors.iter().flatten().all(|t| t.dtype() == DType::F32 && !t.track_op());
    if !fused {
        return composed();
    }
    let [s0, s1, s2] = up_stride;
    let geom = conv_geom(&[n, cu, d * s0, h * s1, w * s2], weight.dims(), None, [1, 1, 1])?;
    let Some(path) = select::upsample_fused(&geom, conv_precision(), CpuFeatures::get()) else {
        return composed();
    };
    let repeat = addend_repeat(&geom, addend)?;
    let [x, up_weight, weight, addend] = [x, up_weight, weight, addend].map(Tensor::contiguous);
    let (x, up_weight, weight, addend) = (x?, up_weight?, weight?, addend?);
    let up_bias = up_bias.map(Tensor::contiguous).transpose()?;
    let guards: Vec<_> = [Some(&x), Some(&up_weight), up_bias.as_ref(), Some(&weight), Some(&addend)]
        .into_iter()
        .map(|t| t.map(Tensor::storage_and_layout))
        .collect();
    let mut slices: Vec<Option<&[f32]>> = Vec::with_capacity(guards.len());
    for g in &guards {
        slices.push(match g {
            Some((storage, layout)) => match &**storage {
                candle_core::Storage::Cpu(cpu) => Some(slice::<f32>(cpu, layout, "upsample_conv3d_add")?),
                _ => bail!("upsample_conv3d_add: expected CPU tensors"),
            },
            None => None,
        });
    }
    let (Some(xs), Some(uw), ub, Some(ws), Some(adds)) =
        (slices[0], slices[1], slices[2], slices[3], slices[4])
    else {
        bail!("upsample_conv3d_add: missing input");
    };
    let input = Input::Upsampled(Upsample {
        x: xs,
        weight: uw,
        bias: ub,
        c_in: ci,
        c_out: cu,
        input: [d, h, w],
        stride: up_stride,
    });
    let mut out = if path == ConvPath::DirectChannelsLastBf16 {
        direct_channels_last::run_bf16(Avx512Bf16::expect(), input, ws, None, &geom)
    } else {
        direct_channels_last::run(Avx512::expect(), input, ws, None, &geom, geom.c_out, cu, false)
    };
    pointwise::add_repeated(&mut out, adds, geom.c_out * geom.out_voxels(), repeat);
    drop(guards);
    Tensor::from_vec(out, out_shape(&geom), x.device())
}

/// How many output samples each addend sample of a [`conv3d_add`] serves, or an error naming the
/// shapes when the addend does not fit the output.
fn addend_repeat(geom: &ConvGeom, addend: &Tensor) -> Result<usize> {
    let [od, oh, ow] = geom.output();
    let [na, ca, ad, ah, aw] = dims5(addend.dims(), "conv3d_add addend")?;
    if ca != geom.c_out || [ad, ah, aw] != [od, oh, ow] || na == 0 || !geom.batch.is_multiple_of(na) {
        bail!(
            "conv3d_add: addend {:?} does not fit the output ({}, {}, {od}, {oh}, {ow}) (its batch must divide the output's)",
            addend.dims(),
            geom.batch,
            geom.c_out
        );
    }
    Ok(geom.batch / na)
}

struct Conv3dAdd {
    conv: Conv3d,
    /// Output samples per addend sample.
    repeat: usize,
}

impl CpuOp for Conv3dAdd {
    const NAMES: [&'static str; 2] = ["voxtell-conv3d-add"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = arity(inputs, Self::NAMES[0])?;
        let g = &self.conv.geom;
        let sample = g.c_out * g.out_voxels();
        let out = dispatch!(s1, Self::NAMES[0], |T| {
            let mut out = conv_forward::<T>(
                slice(s1, l1, "conv3d input")?,
                slice(s2, l2, "conv3d weight")?,
                None,
                g,
                self.conv.precision,
            );
            pointwise::add_repeated(&mut out, slice(s3, l3, "conv3d addend")?, sample, self.repeat);
            out
        });
        Ok((out, out_shape(g)))
    }

    fn grads(&self, inputs: &[&Tensor], _res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let &[x, w, addend] = inputs else { bail!("conv3d_add: expected input, weight and addend") };
        let (gx, gw) = self.conv.input_weight_grads(x, w, grad)?;
        let mut dims = addend.dims().to_vec();
        dims.insert(1, self.repeat);
        let ga = grad.reshape(dims)?.sum(1)?;
        Ok(vec![Some(gx), Some(gw), Some(ga)])
    }
}

fn conv_geom(x: &[usize], w: &[usize], b: Option<&[usize]>, stride: [usize; 3]) -> Result<ConvGeom> {
    let [n, ci, d, h, wd] = dims5(x, "conv3d input")?;
    let [co, wci, kd, kh, kw] = dims5(w, "conv3d weight")?;
    if wci != ci {
        bail!("conv3d: weight {w:?} expects {wci} input channels, input {x:?} has {ci}");
    }
    let kernel = [kd, kh, kw];
    if kernel.iter().any(|&k| k % 2 == 0) {
        bail!("conv3d: kernel {kernel:?} must be odd (padding is (k - 1) / 2)");
    }
    if stride.contains(&0) {
        bail!("conv3d: stride {stride:?} must be positive");
    }
    if let Some(b) = b
        && b != [co]
    {
        bail!("conv3d: bias of shape {b:?} does not match {co} output channels");
    }
    if n == 0 || ci == 0 || co == 0 || d == 0 || h == 0 || wd == 0 {
        bail!("conv3d: empty tensor (input {x:?}, weight {w:?})");
    }
    Ok(ConvGeom {
        batch: n,
        c_in: ci,
        c_out: co,
        input: [d, h, wd],
        kernel,
        stride,
        padding: [(kd - 1) / 2, (kh - 1) / 2, (kw - 1) / 2],
    })
}

/// The forward convolution on the path [`select::forward`] chooses.
fn conv_forward<T: Elem>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    g: &ConvGeom,
    precision: ConvPrecision,
) -> Vec<T> {
    let path = select::forward(g, T::DTYPE, precision, CpuFeatures::get(), select::cl_override());
    if path == ConvPath::Gemm {
        return conv_gemm::forward(x, w, b, g);
    }
    // Every direct path is f32 (`select` chooses them for f32 only).
    let (x, w, b) = (as_f32(x), as_f32(w), b.map(as_f32));
    into_t(match path {
        ConvPath::DirectNcdhw => direct_ncdhw::forward(Avx512::expect(), x, w, b, g),
        ConvPath::DirectChannelsLast => {
            direct_channels_last::run(Avx512::expect(), Input::Volume(x), w, b, g, g.c_out, g.c_in, false)
        }
        ConvPath::DirectChannelsLastBf16 => {
            direct_channels_last::run_bf16(Avx512Bf16::expect(), Input::Volume(x), w, b, g)
        }
        ConvPath::Gemm => unreachable!("the GEMM path returned above"),
    })
}

/// The input gradient of a convolution on the path [`select::backward_input`] chooses.
fn conv_backward_input<T: Elem>(w: &[T], gout: &[T], g: &ConvGeom) -> Vec<T> {
    match select::backward_input(g, T::DTYPE, CpuFeatures::get(), select::cl_override()) {
        ConvPath::DirectNcdhw => {
            into_t(direct_ncdhw::backward_input(Avx512::expect(), as_f32(w), as_f32(gout), g))
        }
        ConvPath::DirectChannelsLast => {
            let adjoint = ConvGeom { c_in: g.c_out, c_out: g.c_in, ..*g };
            into_t(direct_channels_last::run(
                Avx512::expect(),
                Input::Volume(as_f32(gout)),
                as_f32(w),
                None,
                &adjoint,
                g.c_out,
                g.c_in,
                true,
            ))
        }
        // `select::backward_input` never chooses bf16: gradients are f32.
        ConvPath::Gemm | ConvPath::DirectChannelsLastBf16 => conv_gemm::backward_input(w, gout, g),
    }
}

fn out_shape(g: &ConvGeom) -> Shape {
    let [d, h, w] = g.output();
    Shape::from((g.batch, g.c_out, d, h, w))
}

struct Conv3d {
    geom: ConvGeom,
    /// Forward in bf16 products where a kernel covers it ([`ConvPrecision::Bf16`]).
    precision: ConvPrecision,
}

impl WeightedOp for Conv3d {
    const NAMES: [&'static str; 2] = ["voxtell-conv3d", "voxtell-conv3d-bias"];

    fn run<T: Elem>(&self, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        conv_forward(x, w, bias, &self.geom, self.precision)
    }

    fn shape(&self) -> Shape {
        out_shape(&self.geom)
    }

    fn input_weight_grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let gx = w.apply_op2_no_bwd(&grad, &Op(Conv3dGradInput { geom: self.geom }))?;
        let gw = x.apply_op2_no_bwd(&grad, &Op(Conv3dGradWeight { geom: self.geom }))?;
        Ok((gx, gw))
    }
}

struct Conv3dGradInput {
    geom: ConvGeom,
}

impl CpuOp for Conv3dGradInput {
    const NAMES: [&'static str; 2] = ["voxtell-conv3d-grad-input"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2)] = arity(inputs, Self::NAMES[0])?;
        let g = &self.geom;
        let out = dispatch!(s1, Self::NAMES[0], |T| {
            let (w, gout) = (slice::<T>(s1, l1, "weight")?, slice::<T>(s2, l2, "grad")?);
            conv_backward_input(w, gout, g)
        });
        let [d, h, w] = g.input;
        Ok((out, Shape::from((g.batch, g.c_in, d, h, w))))
    }
}

struct Conv3dGradWeight {
    geom: ConvGeom,
}

impl CpuOp for Conv3dGradWeight {
    const NAMES: [&'static str; 2] = ["voxtell-conv3d-grad-weight"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2)] = arity(inputs, Self::NAMES[0])?;
        let g = &self.geom;
        let out = dispatch!(s1, Self::NAMES[0], |T| {
            let (x, gout) = (slice(s1, l1, "input")?, slice(s2, l2, "grad")?);
            if conv_gemm::shifted_applies(g) {
                conv_gemm::backward_weight_shifted::<T>(x, gout, g)
            } else {
                conv_gemm::backward_weight::<T>(x, gout, g, false).0
            }
        });
        let [kd, kh, kw] = g.kernel;
        Ok((out, Shape::from((g.c_out, g.c_in, kd, kh, kw))))
    }
}

/// The gradient of a per-channel bias from the output gradient (N, C, D, H, W): the sum over
/// the batch and the voxels, shape (C). On the CPU one parallel pass (candle's `sum` over
/// non-trailing axes runs on one thread with strided reads); see
/// [`norm::channel_sums`] for the summation order.
pub fn bias_grad(grad: &Tensor) -> Result<Tensor> {
    dims5(grad.dims(), "bias gradient")?;
    if !grad.device().is_cpu() {
        return grad.sum((0, 2, 3, 4));
    }
    grad.contiguous()?.apply_op1_no_bwd(&Op(ChannelSum))
}

struct ChannelSum;

impl CpuOp for ChannelSum {
    const NAMES: [&'static str; 2] = ["voxtell-channel-sum"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s, l)] = arity(inputs, Self::NAMES[0])?;
        let [_, c, d, h, w] = dims5(l.dims(), "bias gradient")?;
        let out =
            dispatch!(s, Self::NAMES[0], |T| norm::channel_sums::<T>(slice(s, l, "gradient")?, c, d * h * w));
        Ok((out, Shape::from(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bias_grad_is_the_sum_over_batch_and_voxels() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            // 3·5·7 voxels: not a multiple of the four partial sums.
            let g = Tensor::randn(0.0f32, 1.0, (2, 3, 3, 5, 7), &Device::Cpu)?.to_dtype(dtype)?;
            let want = g.to_dtype(DType::F64)?.sum((0, 2, 3, 4))?.to_vec1::<f64>()?;
            let got = bias_grad(&g)?;
            assert_eq!(got.dims(), &[3]);
            assert_eq!(got.dtype(), dtype);
            for (a, b) in got.to_dtype(DType::F64)?.to_vec1::<f64>()?.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
            // A non-contiguous input is made contiguous first.
            let t = g.transpose(3, 4)?;
            let want_t = t.to_dtype(DType::F64)?.sum((0, 2, 3, 4))?.to_vec1::<f64>()?;
            let got_t = bias_grad(&t)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (a, b) in got_t.iter().zip(&want_t) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
        assert!(bias_grad(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?).is_err());
        Ok(())
    }
}
