//! Leaky ReLU (`nn.LeakyReLU(0.01)` of the official blocks), alone and fused with the residual
//! sum before it, and its gradient (which the fused norm's backward uses too).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, bail};

use super::{Result, dispatch, slice};
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
    a.contiguous()?.apply_op2(&b.contiguous()?, AddLeakyRelu { slope })
}

struct AddLeakyRelu {
    slope: f64,
}

impl CustomOp2 for AddLeakyRelu {
    fn name(&self) -> &'static str {
        "voxtell-add-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, self.name(), |T| pointwise::add_leaky_relu::<T>(
            slice(s1, l1, "a")?,
            slice(s2, l2, "b")?,
            self.slope
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With slope ≥ 0 the output is positive exactly where the sum is, so the output tells
        // where the activation passed the gradient through.
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &LeakyReluGrad { slope: self.slope })?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// Leaky ReLU in one pass: `x` where `x > 0`, else `slope · x` (the gradient at 0 is `slope`).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::leaky_relu(x, slope);
    }
    x.contiguous()?.apply_op1(LeakyRelu { slope })
}

struct LeakyRelu {
    slope: f64,
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "voxtell-leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out =
            dispatch!(s, self.name(), |T| pointwise::leaky_relu::<T>(slice(s, l, "input")?, self.slope));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &LeakyReluGrad { slope: self.slope })?))
    }
}

/// The gradient of a leaky ReLU from its input or its output (the activation keeps signs).
pub(super) struct LeakyReluGrad {
    pub(super) slope: f64,
}

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "voxtell-leaky-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, self.name(), |T| pointwise::leaky_relu_backward::<T>(
            slice(s1, l1, "input")?,
            self.slope,
            slice(s2, l2, "grad")?
        ));
        Ok((out, l1.shape().clone()))
    }
}
