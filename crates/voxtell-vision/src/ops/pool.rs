//! Average pooling with kernel == stride (`nn.AvgPool3d` on the strided skip path of the
//! official residual blocks) and its gradient.

use candle_core::{CpuStorage, Layout, Shape, Tensor, bail};

use super::{CpuOp, Op, Result, arity, dims5, dispatch, slice};
use crate::composed;
use crate::kernels::pool;

/// Average pooling with kernel == stride, no padding, floor mode.
pub fn avg_pool3d(x: &Tensor, kernel: [usize; 3]) -> Result<Tensor> {
    let [n, c, d, h, w] = dims5(x.dims(), "avg_pool3d input")?;
    if kernel.contains(&0) {
        bail!("avg_pool3d: kernel {kernel:?} must be positive");
    }
    if d < kernel[0] || h < kernel[1] || w < kernel[2] {
        bail!("avg_pool3d: input {:?} is smaller than the kernel {kernel:?}", [d, h, w]);
    }
    if !x.device().is_cpu() {
        return composed::avg_pool3d(x, kernel);
    }
    x.contiguous()?.apply_op1(Op(AvgPool { planes: n * c, input: [d, h, w], kernel }))
}

#[derive(Clone, Copy)]
struct AvgPool {
    planes: usize,
    input: [usize; 3],
    kernel: [usize; 3],
}

impl CpuOp for AvgPool {
    const NAMES: [&'static str; 2] = ["voxtell-avg-pool3d"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s, l)] = arity(inputs, Self::NAMES[0])?;
        let out = dispatch!(s, Self::NAMES[0], |T| pool::avg_pool::<T>(
            slice(s, l, "input")?,
            self.planes,
            self.input,
            self.kernel
        ));
        let dims = l.dims();
        let [od, oh, ow] = pool::pooled(self.input, self.kernel);
        Ok((out, Shape::from((dims[0], dims[1], od, oh, ow))))
    }

    fn grads(&self, _inputs: &[&Tensor], _res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad.contiguous()?.apply_op1_no_bwd(&Op(AvgPoolGrad { pool: *self }))?)])
    }
}

struct AvgPoolGrad {
    pool: AvgPool,
}

impl CpuOp for AvgPoolGrad {
    const NAMES: [&'static str; 2] = ["voxtell-avg-pool3d-grad"; 2];

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(s, l)] = arity(inputs, Self::NAMES[0])?;
        let p = self.pool;
        let out = dispatch!(s, Self::NAMES[0], |T| pool::avg_pool_backward::<T>(
            slice(s, l, "grad")?,
            p.planes,
            p.input,
            p.kernel
        ));
        let dims = l.dims();
        let [d, h, w] = p.input;
        Ok((out, Shape::from((dims[0], dims[1], d, h, w))))
    }
}
