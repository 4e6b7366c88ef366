//! Leaky ReLU (`nn.LeakyReLU(0.01)` of the official blocks), alone and fused with the residual
//! sum before it, and its gradient (which the fused norm's backward uses too).

use candle_core::{CpuStorage, Layout, Shape, Tensor, bail};

use super::{CpuOp, Op, Result, arity, dispatch, slice};
use crate::composed;
use crate::kernels::pointwise;

/// `leaky_relu(a + b, slope)` in one pass and one output tensor (the residual sum of a ResNet
/// block is never materialised); `a` and `b` have the same shape, `slope ≥ 0`. Same values as
/// `leaky_relu(&(a + b)?, slope)`.
pub fn add_leaky_relu(a: &Tensor, b: &Tensor, slope: f64) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!("add_leaky_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if slope.is_nan() || slope < 0.0 {
        bail!("add_leaky_relu: slope {slope} must be non-negative");
    }
    if !a.device().is_cpu() {
        return composed::leaky_relu(&(a + b)?, slope);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Op(AddLeakyRelu { slope }))
}

struct AddLeakyRelu {
    slope: f64,
}

impl CpuOp for AddLeakyRelu {
    const NAMES: [&'static str; 2] = ["voxtell-add-leaky-relu"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2)] = arity(inputs, Self::NAMES[0])?;
        let out = dispatch!(s1, Self::NAMES[0], |T| pointwise::add_leaky_relu::<T>(
            slice(s1, l1, "a")?,
            slice(s2, l2, "b")?,
            self.slope
        ));
        Ok((out, l1.shape().clone()))
    }

    fn grads(&self, _inputs: &[&Tensor], res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // With slope ≥ 0 the output is positive exactly where the sum is, so the output tells
        // where the activation passed the gradient through.
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &Op(LeakyReluGrad { slope: self.slope }))?;
        Ok(vec![Some(g.clone()), Some(g)])
    }
}

/// Leaky ReLU in one pass: `x` where `x > 0`, else `slope · x` (the gradient at 0 is `slope`).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::leaky_relu(x, slope);
    }
    x.contiguous()?.apply_op1(Op(LeakyRelu { slope }))
}

struct LeakyRelu {
    slope: f64,
}

impl CpuOp for LeakyRelu {
    const NAMES: [&'static str; 2] = ["voxtell-leaky-relu"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s, l)] = arity(inputs, Self::NAMES[0])?;
        let out =
            dispatch!(s, Self::NAMES[0], |T| pointwise::leaky_relu::<T>(slice(s, l, "input")?, self.slope));
        Ok((out, l.shape().clone()))
    }

    fn grads(&self, inputs: &[&Tensor], _res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = inputs[0].apply_op2_no_bwd(&grad.contiguous()?, &Op(LeakyReluGrad { slope: self.slope }))?;
        Ok(vec![Some(g)])
    }
}

/// The gradient of a leaky ReLU from its input or its output (the activation keeps signs).
pub(super) struct LeakyReluGrad {
    pub(super) slope: f64,
}

impl CpuOp for LeakyReluGrad {
    const NAMES: [&'static str; 2] = ["voxtell-leaky-relu-grad"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2)] = arity(inputs, Self::NAMES[0])?;
        let out = dispatch!(s1, Self::NAMES[0], |T| pointwise::leaky_relu_backward::<T>(
            slice(s1, l1, "input")?,
            self.slope,
            slice(s2, l2, "grad")?
        ));
        Ok((out, l1.shape().clone()))
    }
}
