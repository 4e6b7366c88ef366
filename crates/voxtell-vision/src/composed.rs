//! The 3-D ops composed from candle's own differentiable ops, for devices without this crate's
//! CPU kernels (CUDA, Metal). The convolution is a sum over depth taps of `conv2d` on depth
//! slices; the rest are reductions, reshapes and a matmul. Gradients come from candle's
//! autograd. Slower than the CPU kernels on a CPU, but runs wherever candle runs; the tests run it
//! on the CPU against the same references.

use candle_core::{D, Tensor, bail};

type Result<T> = candle_core::Result<T>;

/// `x` restricted along `axis` to `start, start + step, …` (`count` entries).
fn strided(x: &Tensor, axis: usize, start: usize, step: usize, count: usize) -> Result<Tensor> {
    if step == 1 {
        return x.narrow(axis, start, count);
    }
    // Take the `step · count` entries from `start`, fold them as (count, step) and keep index 0.
    let len = x.dim(axis)?;
    let avail = (len - start).min(step * count);
    let mut x = x.narrow(axis, start, avail)?;
    if avail < step * count {
        let mut pad_shape = x.dims().to_vec();
        pad_shape[axis] = step * count - avail;
        x = Tensor::cat(&[&x, &Tensor::zeros(pad_shape, x.dtype(), x.device())?], axis)?;
    }
    let mut dims = x.dims().to_vec();
    dims[axis] = count;
    dims.insert(axis + 1, step);
    x.reshape(dims)?.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)
}

/// 3-D convolution (padding `(k − 1) / 2`) as a sum over depth taps of 2-D convolutions.
pub fn conv3d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: [usize; 3]) -> Result<Tensor> {
    let (n, ci, d, h, w) = x.dims5()?;
    let (co, wci, kd, kh, kw) = weight.dims5()?;
    if wci != ci {
        bail!("conv3d: weight {:?} expects {wci} input channels, input has {ci}", weight.dims());
    }
    let (pd, ph, pw) = ((kd - 1) / 2, (kh - 1) / 2, (kw - 1) / 2);
    // candle's conv2d has one stride for both axes: with unequal strides, convolve densely and
    // subsample afterwards.
    let s2 = if stride[1] == stride[2] { stride[1] } else { 1 };
    let od = (d + 2 * pd - kd) / stride[0] + 1;
    // Pad explicitly and trim the trailing voxels no output reads, so that every 2-D convolution
    // fits its input exactly (candle's conv2d backward mis-sizes the input gradient otherwise).
    let fit = |len: usize, pad: usize, k: usize, s: usize| (len + 2 * pad - k) / s * s + k;
    let xp = x.pad_with_zeros(2, pd, pd)?.pad_with_zeros(3, ph, ph)?.pad_with_zeros(4, pw, pw)?;
    let (hf, wf) = (fit(h, ph, kh, s2), fit(w, pw, kw, s2));
    let xp = xp.narrow(3, 0, hf)?.narrow(4, 0, wf)?;
    let mut acc: Option<Tensor> = None;
    for a in 0..kd {
        // Depth slices a, a + s, … as a batch of 2-D images: (N·Do, Ci, H, W).
        let slab =
            strided(&xp, 2, a, stride[0], od)?.permute((0, 2, 1, 3, 4))?.reshape((n * od, ci, hf, wf))?;
        let wa = weight.narrow(2, a, 1)?.squeeze(2)?.contiguous()?;
        let y = slab.contiguous()?.conv2d(&wa, 0, s2, 1, 1)?;
        acc = Some(match acc {
            None => y,
            Some(s) => (s + y)?,
        });
    }
    let Some(mut y) = acc else { bail!("conv3d: empty kernel") };
    if s2 == 1 && stride[1..] != [1, 1] {
        let (oh, ow) = ((h + 2 * ph - kh) / stride[1] + 1, (w + 2 * pw - kw) / stride[2] + 1);
        y = strided(&y, 2, 0, stride[1], oh)?;
        y = strided(&y, 3, 0, stride[2], ow)?;
    }
    let (_, _, oh, ow) = y.dims4()?;
    let y = y.reshape((n, od, co, oh, ow))?.permute((0, 2, 1, 3, 4))?.contiguous()?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, co, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// Transposed convolution with kernel == stride: a matmul and a pixel shuffle.
pub fn conv_transpose3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
) -> Result<Tensor> {
    let (n, ci, d, h, w) = x.dims5()?;
    let (wci, co, k0, k1, k2) = weight.dims5()?;
    if wci != ci || [k0, k1, k2] != stride {
        bail!(
            "conv_transpose3d: weight {:?} does not fit input {:?} with stride {stride:?}",
            weight.dims(),
            x.dims()
        );
    }
    // (N, D·H·W, Ci) · (Ci, Co·k) = (N, D, H, W, Co, k0, k1, k2) → (N, Co, D, k0, H, k1, W, k2).
    let xm = x.reshape((n, ci, d * h * w))?.transpose(1, 2)?.contiguous()?;
    let wm = weight.reshape((ci, co * k0 * k1 * k2))?;
    let y = xm.broadcast_matmul(&wm)?.reshape(vec![n, d, h, w, co, k0, k1, k2])?;
    let y = y.permute([0, 4, 1, 5, 2, 6, 3, 7])?.contiguous()?;
    let y = y.reshape((n, co, d * k0, h * k1, w * k2))?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, co, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// Instance normalisation (biased variance), optionally affine and followed by a leaky ReLU.
pub fn instance_norm3d_act(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    slope: Option<f64>,
) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    let flat = x.reshape((n, c, d * h * w))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let mut y = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let (Some(wt), Some(b)) = (weight, bias) {
        y = y.broadcast_mul(&wt.reshape((1, c, 1))?)?.broadcast_add(&b.reshape((1, c, 1))?)?;
    }
    let y = y.reshape((n, c, d, h, w))?;
    match slope {
        Some(s) => leaky_relu(&y, s),
        None => Ok(y),
    }
}

/// Leaky ReLU: `x` where `x > 0`, else `slope · x` (so the gradient at 0 is `slope`, as PyTorch).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    x.gt(0.0)?.where_cond(x, &(x * slope)?)
}

/// Average pooling with kernel == stride (floor).
pub fn avg_pool3d(x: &Tensor, k: [usize; 3]) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    let (od, oh, ow) = (d / k[0], h / k[1], w / k[2]);
    let x = x.narrow(2, 0, od * k[0])?.narrow(3, 0, oh * k[1])?.narrow(4, 0, ow * k[2])?.contiguous()?;
    let x = x.reshape((n * c * od, k[0], oh, k[1], ow, k[2]))?;
    let s = x.sum_keepdim(5)?.sum_keepdim(3)?.sum_keepdim(1)?;
    s.reshape((n, c, od, oh, ow))? / (k[0] * k[1] * k[2]) as f64
}
