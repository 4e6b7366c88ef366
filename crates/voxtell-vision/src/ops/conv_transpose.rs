//! Transposed 3-D convolution with kernel == stride (`nn.ConvTranspose3d` of the official
//! decoder's `transpconvs`, which upsample by the encoder's stride) and its gradients.

use candle_core::{CpuStorage, Layout, Shape, Tensor, bail};

use super::{CpuOp, Op, Result, Weighted, WeightedOp, arity, concat, dims5, dispatch, out_len, slice};
use crate::composed;
use crate::kernels::Elem;
use crate::kernels::conv_transpose::{self, TransposeGeom};

/// Transposed 3-D convolution with kernel == stride. `x`: (N, Cin, D, H, W); `weight`:
/// (Cin, Cout, s0, s1, s2) as PyTorch stores it; output (N, Cout, D·s0, H·s1, W·s2).
pub fn conv_transpose3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
) -> Result<Tensor> {
    let [n, ci, d, h, w] = dims5(x.dims(), "conv_transpose3d input")?;
    let [wci, co, kd, kh, kw] = dims5(weight.dims(), "conv_transpose3d weight")?;
    if wci != ci {
        bail!("conv_transpose3d: weight {:?} expects {wci} input channels, input has {ci}", weight.dims());
    }
    if [kd, kh, kw] != stride {
        bail!(
            "conv_transpose3d: only kernel == stride is supported, got kernel {:?} and stride {stride:?}",
            [kd, kh, kw]
        );
    }
    if let Some(b) = bias
        && b.dims() != [co]
    {
        bail!("conv_transpose3d: bias of shape {:?} does not match {co} output channels", b.dims());
    }
    if !x.device().is_cpu() {
        return composed::conv_transpose3d(x, weight, bias, stride);
    }
    let op = Op(Weighted(ConvTranspose(TransposeGeom {
        batch: n,
        c_in: ci,
        c_out: co,
        input: [d, h, w],
        stride,
    })));
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

#[derive(Clone, Copy)]
struct ConvTranspose(TransposeGeom);

impl WeightedOp for ConvTranspose {
    const NAMES: [&'static str; 2] = ["voxtell-conv-transpose3d", "voxtell-conv-transpose3d-bias"];

    fn run<T: Elem>(&self, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        conv_transpose::conv_transpose(x, w, bias, &self.0)
    }

    fn shape(&self) -> Shape {
        let g = &self.0;
        let ([d, h, w], s) = (g.input, g.stride);
        Shape::from((g.batch, g.c_out, d * s[0], h * s[1], w * s[2]))
    }

    fn input_weight_grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let both = x.apply_op3_no_bwd(w, &grad, &Op(ConvTransposeGrad { op: *self }))?;
        let gx = both.narrow(0, 0, x.elem_count())?.reshape(x.shape())?;
        let gw = both.narrow(0, x.elem_count(), w.elem_count())?.reshape(w.shape())?;
        Ok((gx, gw))
    }
}

/// Both gradients of the transposed convolution in one pass, concatenated flat:
/// `[grad_input…, grad_weight…]`.
struct ConvTransposeGrad {
    op: ConvTranspose,
}

impl CpuOp for ConvTransposeGrad {
    const NAMES: [&'static str; 2] = ["voxtell-conv-transpose3d-grad"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = arity(inputs, Self::NAMES[0])?;
        let o = self.op.0;
        let out = dispatch!(s1, Self::NAMES[0], |T| {
            let (gx, gw) = conv_transpose::conv_transpose_backward::<T>(
                slice(s1, l1, "input")?,
                slice(s2, l2, "weight")?,
                slice(s3, l3, "grad")?,
                &o,
            );
            concat(gx, gw)
        });
        let len = out_len(&out);
        Ok((out, Shape::from(len)))
    }
}
