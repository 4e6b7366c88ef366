//! Instance normalisation (`nn.InstanceNorm3d(affine=True)`, as after every convolution of the
//! official network), alone or fused with the leaky ReLU that follows it, out of place with
//! gradients or in place for inference.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, bail};

use super::activation::LeakyReluGrad;
use super::{CpuOp, Op, Result, arity, concat, dims5, dispatch, out_len, slice};
use crate::composed;
use crate::kernels::Elem;
use crate::kernels::norm::{self, NormParams};

/// Instance normalisation per sample and channel over (D, H, W), biased variance:
/// `(x − mean) / sqrt(var + eps) · weight + bias`. `weight` and `bias` are (C) or absent.
pub fn instance_norm3d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    instance_norm3d_act(x, weight, bias, eps, None)
}

/// [`instance_norm3d`] followed, when `slope` is given, by a leaky ReLU with that slope, in one
/// pass and one output tensor (the norm's output is never materialised).
pub fn instance_norm3d_act(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    slope: Option<f64>,
) -> Result<Tensor> {
    check_norm(x, weight, bias, eps)?;
    if !x.device().is_cpu() {
        return composed::instance_norm3d_act(x, weight, bias, eps, slope);
    }
    let x = x.contiguous()?;
    let op = Op(InstanceNorm { eps, slope });
    match (weight, bias) {
        (Some(w), Some(b)) => x.apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        (None, None) => x.apply_op1(op),
        _ => bail!("instance_norm3d: give both weight and bias, or neither"),
    }
}

/// The checks of [`instance_norm3d_act`]: a 5-D input, per-channel weight and bias, `eps ≥ 0`.
fn check_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<()> {
    let [_, c, ..] = dims5(x.dims(), "instance_norm3d input")?;
    for (t, what) in [(weight, "weight"), (bias, "bias")] {
        if let Some(t) = t
            && t.dims() != [c]
        {
            bail!("instance_norm3d: {what} of shape {:?} does not match {c} channels", t.dims());
        }
    }
    if eps.is_nan() || eps < 0.0 {
        bail!("instance_norm3d: eps {eps} must be non-negative");
    }
    Ok(())
}

/// [`instance_norm3d_act`] written over `x`'s own storage, so that no second tensor of its size
/// exists (at VoxTell's full resolution, 864 MB per 192³ patch): for inference on a tensor that
/// no other tensor shares storage with — a fresh output of an op, as the encoder's and decoder's
/// convolutions give. Where gradients are tracked, off the CPU or for a non-contiguous `x`, it is
/// [`instance_norm3d_act`].
pub fn instance_norm3d_act_in_place(
    x: Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    slope: Option<f64>,
) -> Result<Tensor> {
    let tracked = x.track_op() || weight.is_some_and(Tensor::track_op) || bias.is_some_and(Tensor::track_op);
    if tracked || !x.device().is_cpu() || !x.is_contiguous() {
        return instance_norm3d_act(&x, weight, bias, eps, slope);
    }
    check_norm(&x, weight, bias, eps)?;
    let affine = match (weight, bias) {
        (Some(w), Some(b)) => {
            Some((w.to_dtype(DType::F64)?.to_vec1::<f64>()?, b.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        }
        (None, None) => None,
        _ => bail!("instance_norm3d: give both weight and bias, or neither"),
    };
    x.inplace_op1(&InstanceNormInPlace { eps, slope, affine })?;
    Ok(x)
}

/// The in-place instance norm; the affine parameters as f64 values.
struct InstanceNormInPlace {
    eps: f64,
    slope: Option<f64>,
    affine: Option<(Vec<f64>, Vec<f64>)>,
}

impl candle_core::InplaceOp1 for InstanceNormInPlace {
    fn name(&self) -> &'static str {
        "voxtell-instance-norm3d-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (c, vox) = plane_dims(l)?;
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("instance_norm3d: expected a contiguous tensor");
        };
        fn run<T: Elem>(x: &mut [T], c: usize, vox: usize, op: &InstanceNormInPlace) {
            let affine = op.affine.as_ref().map(|(w, b)| {
                (
                    w.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>(),
                    b.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>(),
                )
            });
            let (w, b) = match &affine {
                Some((w, b)) => (Some(&w[..]), Some(&b[..])),
                None => (None, None),
            };
            norm::instance_norm_in_place(
                x,
                &NormParams { c, vox, weight: w, bias: b, eps: op.eps, slope: op.slope },
            );
        }
        match s {
            CpuStorage::F32(v) => run(&mut v[a..b], c, vox, self),
            CpuStorage::F64(v) => run(&mut v[a..b], c, vox, self),
            other => bail!(
                "instance_norm3d: unsupported dtype {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct InstanceNorm {
    eps: f64,
    slope: Option<f64>,
}

impl InstanceNorm {
    /// The gradient with respect to the norm's output: through the leaky ReLU when fused. The
    /// activation keeps signs, so the op's own output tells where it was active.
    fn norm_grad(&self, res: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        match self.slope {
            Some(slope) => res.apply_op2_no_bwd(&grad, &Op(LeakyReluGrad { slope })),
            None => Ok(grad),
        }
    }
}

fn plane_dims(l: &Layout) -> Result<(usize, usize)> {
    let [_, c, d, h, w] = dims5(l.dims(), "instance_norm3d input")?;
    Ok((c, d * h * w))
}

/// The input, then weight and bias when affine.
impl CpuOp for InstanceNorm {
    const NAMES: [&'static str; 2] = ["voxtell-instance-norm3d", "voxtell-instance-norm3d-affine"];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let (affine, (s, l)) = match *inputs {
            [x] => (None, x),
            [x, w, b] => (Some((w, b)), x),
            _ => bail!("instance_norm3d: expected the input, with weight and bias or neither"),
        };
        let (c, vox) = plane_dims(l)?;
        let out = dispatch!(s, Self::name_of(inputs.len()), |T| {
            let (w, b) = match affine {
                Some(((s2, l2), (s3, l3))) => (Some(slice(s2, l2, "weight")?), Some(slice(s3, l3, "bias")?)),
                None => (None, None),
            };
            let params = NormParams { c, vox, weight: w, bias: b, eps: self.eps, slope: self.slope };
            norm::instance_norm::<T>(slice(s, l, "input")?, &params)
        });
        Ok((out, l.shape().clone()))
    }

    fn grads(&self, inputs: &[&Tensor], res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let grad = self.norm_grad(res, grad)?;
        match *inputs {
            [x] => Ok(vec![Some(x.apply_op2_no_bwd(&grad, &Op(InstanceNormGrad { eps: self.eps }))?)]),
            [x, w, _] => {
                let all = x.apply_op3_no_bwd(w, &grad, &Op(InstanceNormAffineGrad { eps: self.eps }))?;
                let (n, c) = (x.elem_count(), w.elem_count());
                let gx = all.narrow(0, 0, n)?.reshape(x.shape())?;
                Ok(vec![Some(gx), Some(all.narrow(0, n, c)?), Some(all.narrow(0, n + c, c)?)])
            }
            _ => bail!("instance_norm3d: expected the input, with weight and bias or neither"),
        }
    }
}

/// Gradient of the non-affine instance norm with respect to its input.
struct InstanceNormGrad {
    eps: f64,
}

impl CpuOp for InstanceNormGrad {
    const NAMES: [&'static str; 2] = ["voxtell-instance-norm3d-grad"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2)] = arity(inputs, Self::NAMES[0])?;
        let (c, vox) = plane_dims(l1)?;
        let out = dispatch!(s1, Self::NAMES[0], |T| norm::instance_norm_backward::<T>(
            slice(s1, l1, "input")?,
            c,
            vox,
            None,
            self.eps,
            slice(s2, l2, "grad")?
        )
        .0);
        Ok((out, l1.shape().clone()))
    }
}

/// All gradients of the affine instance norm in one pass, concatenated flat:
/// `[grad_input…, grad_weight…, grad_bias…]`.
struct InstanceNormAffineGrad {
    eps: f64,
}

impl CpuOp for InstanceNormAffineGrad {
    const NAMES: [&'static str; 2] = ["voxtell-instance-norm3d-affine-grad"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = arity(inputs, Self::NAMES[0])?;
        let (c, vox) = plane_dims(l1)?;
        let out = dispatch!(s1, Self::NAMES[0], |T| {
            let (gx, affine) = norm::instance_norm_backward::<T>(
                slice(s1, l1, "input")?,
                c,
                vox,
                Some(slice(s2, l2, "weight")?),
                self.eps,
                slice(s3, l3, "grad")?,
            );
            let Some((gw, gb)) = affine else { bail!("instance norm gradient: affine parameters missing") };
            let mut all = concat(gx, gw);
            all.extend(gb);
            all
        });
        let shape = Shape::from(out_len(&out));
        Ok((out, shape))
    }
}
