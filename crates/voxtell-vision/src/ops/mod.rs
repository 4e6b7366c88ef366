//! The 3-D operations as candle tensors in and out (NCDHW), with gradients.
//!
//! On the CPU each operation is a candle custom op whose forward runs the kernels of
//! [`crate::kernels`] and whose backward is built from further custom ops, so candle's
//! `backward()` trains through them; f32 and f64 are supported. On other devices (CUDA, Metal)
//! the same functions run [`crate::composed`], built from candle's own ops.
//!
//! One file per kind of op, each reproducing a PyTorch module of the official network:
//! `conv` (`nn.Conv3d`, with the decoder's fused forms), `conv_transpose`
//! (`nn.ConvTranspose3d`), `norm` (`nn.InstanceNorm3d`), `activation` (`nn.LeakyReLU`) and
//! `pool` (`nn.AvgPool3d`). This file holds what they share: the storage helpers, the f32/f64
//! dispatch, the driver that runs an op of any arity as a candle custom op, and the
//! convolution precision.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, bail};

use crate::kernels::Elem;
use crate::kernels::cpu::CpuFeatures;

mod activation;
mod conv;
mod conv_transpose;
mod norm;
mod pool;

pub use activation::{add_leaky_relu, leaky_relu};
pub use conv::{bias_grad, conv3d, conv3d_add, upsample_conv3d_add};
pub use conv_transpose::conv_transpose3d;
pub use norm::{instance_norm3d, instance_norm3d_act, instance_norm3d_act_in_place};
pub use pool::avg_pool3d;

pub(crate) type Result<T> = candle_core::Result<T>;

/// Borrow the contiguous data of a storage as a slice of `T`.
pub(crate) fn slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// The five sizes of an (N, C, D, H, W) shape, or an error naming `what`.
pub(crate) fn dims5(shape: &[usize], what: &str) -> Result<[usize; 5]> {
    match shape {
        &[n, c, d, h, w] => Ok([n, c, d, h, w]),
        _ => bail!("{what}: expected a 5-D (N, C, D, H, W) tensor, got shape {shape:?}"),
    }
}

/// Run `f` on f32 or f64 data and wrap the result.
macro_rules! dispatch {
    ($storage:expr, $name:expr, |$t:ident| $body:expr) => {
        match candle_core::backend::BackendStorage::dtype($storage) {
            candle_core::DType::F32 => {
                type $t = f32;
                candle_core::CpuStorage::F32($body)
            }
            candle_core::DType::F64 => {
                type $t = f64;
                candle_core::CpuStorage::F64($body)
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?} (f32 and f64 are supported)", $name),
        }
    };
}

/// `a` followed by `b`, reusing `a`'s allocation.
pub(crate) fn concat<T>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    a.extend(b);
    a
}

pub(crate) fn out_len(s: &CpuStorage) -> usize {
    match s {
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        _ => 0,
    }
}
pub(crate) use dispatch;

/// A CPU op on one, two or three tensors, written once whatever its arity: [`Op`] runs it as
/// candle's [`CustomOp1`], [`CustomOp2`] or [`CustomOp3`] by the number of tensors it is
/// applied to. An op whose last tensors are optional (a convolution's bias; a norm's weight and
/// bias) is so one type for both forms, and the ops that only run inside another op's backward
/// need no gradient.
pub(crate) trait CpuOp {
    /// The op's name, then its name with the optional tensors (the same twice where it has
    /// none).
    const NAMES: [&'static str; 2];

    /// The forward pass on the storages of the tensors, in order (optional ones last).
    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)>;

    /// The gradients of the tensors, in the order of `inputs`. By default none: such an op is
    /// only applied with `apply_op*_no_bwd`.
    fn grads(&self, inputs: &[&Tensor], _res: &Tensor, _grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::name_of(inputs.len()) })
    }

    /// The name for `n` tensors: `n = 3` is the form with the optional tensors.
    fn name_of(n: usize) -> &'static str {
        Self::NAMES[usize::from(n == 3)]
    }
}

/// The storages of an op of exactly `N` tensors, or an error naming the op.
pub(crate) fn arity<'a, const N: usize>(
    inputs: &[(&'a CpuStorage, &'a Layout)],
    op: &str,
) -> Result<[(&'a CpuStorage, &'a Layout); N]> {
    match inputs.try_into() {
        Ok(all) => Ok(all),
        Err(_) => bail!("{op}: expected {N} tensors, got {}", inputs.len()),
    }
}

/// A [`CpuOp`] as a candle custom op.
pub(crate) struct Op<O>(pub O);

/// The `n`-th gradient of a list (`None` past its end).
fn take(grads: &mut [Option<Tensor>], n: usize) -> Option<Tensor> {
    grads.get_mut(n).and_then(Option::take)
}

impl<O: CpuOp> CustomOp1 for Op<O> {
    fn name(&self) -> &'static str {
        O::name_of(1)
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.fwd(&[(s, l)])
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut g = self.0.grads(&[x], res, grad)?;
        Ok(take(&mut g, 0))
    }
}

impl<O: CpuOp> CustomOp2 for Op<O> {
    fn name(&self) -> &'static str {
        O::name_of(2)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.fwd(&[(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.grads(&[a, b], res, grad)?;
        Ok((take(&mut g, 0), take(&mut g, 1)))
    }
}

impl<O: CpuOp> CustomOp3 for Op<O> {
    fn name(&self) -> &'static str {
        O::name_of(3)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.fwd(&[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.grads(&[a, b, c], res, grad)?;
        Ok((take(&mut g, 0), take(&mut g, 1), take(&mut g, 2)))
    }
}

/// An op of an input, a weight and an optional bias (a convolution, a transposed convolution),
/// run as one [`CpuOp`] for both forms by [`Weighted`]; the bias gradient is [`bias_grad`].
pub(crate) trait WeightedOp {
    /// The op's name without and with the bias.
    const NAMES: [&'static str; 2];

    /// The forward pass on contiguous data.
    fn run<T: Elem>(&self, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T>;

    /// The output's shape.
    fn shape(&self) -> Shape;

    /// The gradients of the input and of the weight.
    fn input_weight_grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// A [`WeightedOp`] as a [`CpuOp`]: input and weight, then the bias when given.
pub(crate) struct Weighted<W>(pub W);

impl<W: WeightedOp> CpuOp for Weighted<W> {
    const NAMES: [&'static str; 2] = W::NAMES;

    fn fwd(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let name = Self::name_of(inputs.len());
        let &[(s1, l1), (s2, l2), ref bias @ ..] = inputs else { bail!("{name}: expected input and weight") };
        let out = dispatch!(s1, name, |T| self.0.run::<T>(
            slice(s1, l1, "input")?,
            slice(s2, l2, "weight")?,
            bias.first().map(|&(s3, l3)| slice(s3, l3, "bias")).transpose()?
        ));
        Ok((out, self.0.shape()))
    }

    fn grads(&self, inputs: &[&Tensor], _res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (gx, gw) = self.0.input_weight_grads(inputs[0], inputs[1], grad)?;
        let mut all = vec![Some(gx), Some(gw)];
        if inputs.len() == 3 {
            all.push(Some(bias_grad(grad)?));
        }
        Ok(all)
    }
}

/// The precision the convolutions of a thread run at (defined beside the path selection,
/// which takes it as an input).
pub use crate::kernels::select::ConvPrecision;

thread_local! {
    static CONV_PRECISION: std::cell::Cell<ConvPrecision> = const { std::cell::Cell::new(ConvPrecision::F32) };
}

/// Whether this CPU runs [`ConvPrecision::Bf16`] convolutions in bf16 (AVX-512 BF16); where
/// not, they fall back to f32.
pub fn bf16_supported() -> bool {
    CpuFeatures::get().bf16()
}

/// The convolution precision in effect on this thread (see [`with_conv_precision`]).
pub fn conv_precision() -> ConvPrecision {
    CONV_PRECISION.with(|c| c.get())
}

/// Run `f` with the convolutions this thread starts using `precision`; the previous setting is
/// restored afterwards (also when `f` panics). Scoped to the calling thread, so two models in
/// one process can run at different precisions.
///
/// ```
/// use voxtell_vision::ops::{ConvPrecision, conv_precision, with_conv_precision};
/// let inside = with_conv_precision(ConvPrecision::Bf16, conv_precision);
/// assert_eq!(inside, ConvPrecision::Bf16);
/// assert_eq!(conv_precision(), ConvPrecision::F32);
/// ```
pub fn with_conv_precision<R>(precision: ConvPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(ConvPrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            CONV_PRECISION.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CONV_PRECISION.with(|c| c.replace(precision)));
    f()
}
