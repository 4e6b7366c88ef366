//! The 3-D operations as candle tensors in and out (NCDHW), with gradients.
//!
//! On the CPU each operation is a candle custom op whose forward runs the kernels of
//! [`crate::kernels`] and whose backward is built from further custom ops, so candle's
//! `backward()` trains through them; f32 and f64 are supported. On other devices (CUDA, Metal)
//! the same functions run [`crate::composed`], built from candle's own ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, bail};

use crate::composed;
use crate::kernels::direct_cl::{self, Input, Upsample};
use crate::kernels::pointwise::{self, TransposeGeom};
use crate::kernels::{ConvGeom, Elem, conv_gemm, direct};

type Result<T> = candle_core::Result<T>;

/// Borrow the contiguous data of a storage as a slice of `T`.
fn slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

fn dims5(shape: &[usize], what: &str) -> Result<[usize; 5]> {
    match shape {
        &[n, c, d, h, w] => Ok([n, c, d, h, w]),
        _ => bail!("{what}: expected a 5-D (N, C, D, H, W) tensor, got shape {shape:?}"),
    }
}

/// Run `f` on f32 or f64 data and wrap the result.
macro_rules! dispatch {
    ($storage:expr, $name:expr, |$t:ident| $body:expr) => {
        match $storage.dtype() {
            DType::F32 => {
                type $t = f32;
                CpuStorage::F32($body)
            }
            DType::F64 => {
                type $t = f64;
                CpuStorage::F64($body)
            }
            other => bail!("{}: unsupported dtype {other:?} (f32 and f64 are supported)", $name),
        }
    };
}

/// `a` followed by `b`, reusing `a`'s allocation.
fn concat<T>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    a.extend(b);
    a
}

fn out_len(s: &CpuStorage) -> usize {
    match s {
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// conv3d

/// The arithmetic of the forward pass of 3-D convolutions on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPrecision {
    /// f32 products and sums (the default; what the official code does on the CPU).
    #[default]
    F32,
    /// Inputs and weights rounded to bf16 (nearest even), products summed in f32 by the CPU's
    /// bf16 dot product (`vdpbf16ps`, AVX-512 BF16); the bias, outputs and everything outside
    /// these convolutions stay f32. About twice the arithmetic rate of f32; ~3 significant
    /// digits per product. Falls back to f32 where the CPU lacks the instruction, for other
    /// element types and for layers it does not cover (1×1×1 kernels, fewer than 8 input
    /// channels, strided layers with fewer than 32 input or output channels). Gradients are
    /// always computed in f32.
    Bf16,
}

thread_local! {
    static CONV_PRECISION: std::cell::Cell<ConvPrecision> = const { std::cell::Cell::new(ConvPrecision::F32) };
}

/// Whether this CPU runs [`ConvPrecision::Bf16`] convolutions in bf16 (AVX-512 BF16); where
/// not, they fall back to f32.
pub fn bf16_supported() -> bool {
    direct_cl::bf16_available()
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

/// 3-D convolution with zero padding `(k − 1) / 2`, dilation 1, groups 1. `x`: (N, Cin, D, H, W);
/// `weight`: (Cout, Cin, kd, kh, kw) with odd kernel sizes; `bias`: (Cout); `stride` per axis.
pub fn conv3d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: [usize; 3]) -> Result<Tensor> {
    let geom = conv_geom(x.dims(), weight.dims(), bias.map(|b| b.dims()), stride)?;
    if !x.device().is_cpu() {
        return composed::conv3d(x, weight, bias, stride);
    }
    let op = Conv3d { geom, bf16: conv_precision() == ConvPrecision::Bf16 };
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
    let op = Conv3dAdd { conv: Conv3d { geom, bf16: conv_precision() == ConvPrecision::Bf16 }, repeat };
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
    // Fused only where the convolution would take the channels-last kernel anyway (≥ 32
    // channels in and out): for fewer channels its 32-channel blocks run mostly empty, and the
    // W-vectorised kernel of the composition is faster (the demo model, 8…64 channels, took
    // 8.3 s fused against 5.8 s for its evaluation).
    if !direct::applies::<f32>(&geom) || cu < 32 || geom.c_out < 32 {
        return composed();
    }
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
    let bf16 = conv_precision() == ConvPrecision::Bf16 && bf16_supported() && cu >= 8;
    let mut out = if bf16 {
        direct_cl::run_bf16(input, ws, None, &geom)
    } else {
        direct_cl::run(input, ws, None, &geom, geom.c_out, cu, false)
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

impl CustomOp3 for Conv3dAdd {
    fn name(&self) -> &'static str {
        "voxtell-conv3d-add"
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
        let g = &self.conv.geom;
        let sample = g.c_out * g.out_voxels();
        let out = dispatch!(s1, CustomOp3::name(self), |T| {
            let mut out = conv_forward::<T>(
                slice(s1, l1, "conv3d input")?,
                slice(s2, l2, "conv3d weight")?,
                None,
                g,
                self.conv.bf16,
            );
            pointwise::add_repeated(&mut out, slice(s3, l3, "conv3d addend")?, sample, self.repeat);
            out
        });
        Ok((out, out_shape(g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        addend: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.conv.grads(x, w, grad)?;
        let mut dims = addend.dims().to_vec();
        dims.insert(1, self.repeat);
        let ga = grad.reshape(dims)?.sum(1)?;
        Ok((Some(gx), Some(gw), Some(ga)))
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

fn conv_forward<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, g: &ConvGeom, bf16: bool) -> Vec<T> {
    if bf16 && let Some(out) = direct::forward_bf16(x, w, b, g) {
        return out;
    }
    if let Some(out) = direct::forward(x, w, b, g) {
        return out;
    }
    conv_gemm::forward(x, w, b, g)
}

fn out_shape(g: &ConvGeom) -> Shape {
    let [d, h, w] = g.output();
    Shape::from((g.batch, g.c_out, d, h, w))
}

struct Conv3d {
    geom: ConvGeom,
    /// Forward in bf16 products where a kernel covers it ([`ConvPrecision::Bf16`]).
    bf16: bool,
}

impl Conv3d {
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let gx = w.apply_op2_no_bwd(&grad, &Conv3dGradInput { geom: self.geom })?;
        let gw = x.apply_op2_no_bwd(&grad, &Conv3dGradWeight { geom: self.geom })?;
        Ok((gx, gw))
    }
}

impl CustomOp2 for Conv3d {
    fn name(&self) -> &'static str {
        "voxtell-conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let out = dispatch!(s1, CustomOp2::name(self), |T| conv_forward::<T>(
            slice(s1, l1, "conv3d input")?,
            slice(s2, l2, "conv3d weight")?,
            None,
            g,
            self.bf16
        ));
        Ok((out, out_shape(g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp3 for Conv3d {
    fn name(&self) -> &'static str {
        "voxtell-conv3d-bias"
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
        let g = &self.geom;
        let out = dispatch!(s1, CustomOp3::name(self), |T| conv_forward::<T>(
            slice(s1, l1, "conv3d input")?,
            slice(s2, l2, "conv3d weight")?,
            Some(slice(s3, l3, "conv3d bias")?),
            g,
            self.bf16
        ));
        Ok((out, out_shape(g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        Ok((Some(gx), Some(gw), Some(bias_grad(grad)?)))
    }
}

struct Conv3dGradInput {
    geom: ConvGeom,
}

impl CustomOp2 for Conv3dGradInput {
    fn name(&self) -> &'static str {
        "voxtell-conv3d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let out = dispatch!(s1, self.name(), |T| {
            let (w, gout) = (slice::<T>(s1, l1, "weight")?, slice::<T>(s2, l2, "grad")?);
            direct::backward_input(w, gout, g).unwrap_or_else(|| conv_gemm::backward_input(w, gout, g))
        });
        let [d, h, w] = g.input;
        Ok((out, Shape::from((g.batch, g.c_in, d, h, w))))
    }
}

struct Conv3dGradWeight {
    geom: ConvGeom,
}

impl CustomOp2 for Conv3dGradWeight {
    fn name(&self) -> &'static str {
        "voxtell-conv3d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let out = dispatch!(s1, self.name(), |T| {
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

// ---------------------------------------------------------------------------------------------
// conv_transpose3d

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
    let op = ConvTranspose(TransposeGeom { batch: n, c_in: ci, c_out: co, input: [d, h, w], stride });
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

#[derive(Clone, Copy)]
struct ConvTranspose(TransposeGeom);

impl ConvTranspose {
    fn shape(&self) -> Shape {
        let g = &self.0;
        let ([d, h, w], s) = (g.input, g.stride);
        Shape::from((g.batch, g.c_out, d * s[0], h * s[1], w * s[2]))
    }

    fn run<T: Elem>(&self, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        pointwise::conv_transpose(x, w, b, &self.0)
    }

    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let both = x.apply_op3_no_bwd(w, &grad, &ConvTransposeGrad { op: *self })?;
        let gx = both.narrow(0, 0, x.elem_count())?.reshape(x.shape())?;
        let gw = both.narrow(0, x.elem_count(), w.elem_count())?.reshape(w.shape())?;
        Ok((gx, gw))
    }
}

impl CustomOp2 for ConvTranspose {
    fn name(&self) -> &'static str {
        "voxtell-conv-transpose3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, CustomOp2::name(self), |T| self.run::<T>(
            slice(s1, l1, "input")?,
            slice(s2, l2, "weight")?,
            None
        ));
        Ok((out, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp3 for ConvTranspose {
    fn name(&self) -> &'static str {
        "voxtell-conv-transpose3d-bias"
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
        let out = dispatch!(s1, CustomOp3::name(self), |T| self.run::<T>(
            slice(s1, l1, "input")?,
            slice(s2, l2, "weight")?,
            Some(slice(s3, l3, "bias")?)
        ));
        Ok((out, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        Ok((Some(gx), Some(gw), Some(bias_grad(grad)?)))
    }
}

/// Both gradients of the transposed convolution in one pass, concatenated flat:
/// `[grad_input…, grad_weight…]`.
struct ConvTransposeGrad {
    op: ConvTranspose,
}

impl CustomOp3 for ConvTransposeGrad {
    fn name(&self) -> &'static str {
        "voxtell-conv-transpose3d-grad"
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
        let o = self.op.0;
        let out = dispatch!(s1, self.name(), |T| {
            let (gx, gw) = pointwise::conv_transpose_backward::<T>(
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

// ---------------------------------------------------------------------------------------------
// instance_norm3d

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
    let op = InstanceNorm { eps, slope };
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
            pointwise::instance_norm_in_place(x, c, vox, w, b, op.eps, op.slope);
        }
        match s {
            CpuStorage::F32(v) => run(&mut v[a..b], c, vox, self),
            CpuStorage::F64(v) => run(&mut v[a..b], c, vox, self),
            other => bail!("instance_norm3d: unsupported dtype {:?}", other.dtype()),
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
            Some(slope) => res.apply_op2_no_bwd(&grad, &LeakyReluGrad { slope }),
            None => Ok(grad),
        }
    }
}

fn plane_dims(l: &Layout) -> Result<(usize, usize)> {
    let [_, c, d, h, w] = dims5(l.dims(), "instance_norm3d input")?;
    Ok((c, d * h * w))
}

impl CustomOp1 for InstanceNorm {
    fn name(&self) -> &'static str {
        "voxtell-instance-norm3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (c, vox) = plane_dims(l)?;
        let out = dispatch!(s, CustomOp1::name(self), |T| pointwise::instance_norm::<T>(
            slice(s, l, "input")?,
            c,
            vox,
            None,
            None,
            self.eps,
            self.slope
        ));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = self.norm_grad(res, grad)?;
        Ok(Some(x.apply_op2_no_bwd(&grad, &InstanceNormGrad { eps: self.eps })?))
    }
}

impl CustomOp3 for InstanceNorm {
    fn name(&self) -> &'static str {
        "voxtell-instance-norm3d-affine"
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
        let (c, vox) = plane_dims(l1)?;
        let out = dispatch!(s1, CustomOp3::name(self), |T| pointwise::instance_norm::<T>(
            slice(s1, l1, "input")?,
            c,
            vox,
            Some(slice(s2, l2, "weight")?),
            Some(slice(s3, l3, "bias")?),
            self.eps,
            self.slope
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.norm_grad(res, grad)?;
        let all = x.apply_op3_no_bwd(w, &grad, &InstanceNormAffineGrad { eps: self.eps })?;
        let (n, c) = (x.elem_count(), w.elem_count());
        let gx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        Ok((Some(gx), Some(all.narrow(0, n, c)?), Some(all.narrow(0, n + c, c)?)))
    }
}

/// Gradient of the non-affine instance norm with respect to its input.
struct InstanceNormGrad {
    eps: f64,
}

impl CustomOp2 for InstanceNormGrad {
    fn name(&self) -> &'static str {
        "voxtell-instance-norm3d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, vox) = plane_dims(l1)?;
        let out = dispatch!(s1, self.name(), |T| pointwise::instance_norm_backward::<T>(
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

impl CustomOp3 for InstanceNormAffineGrad {
    fn name(&self) -> &'static str {
        "voxtell-instance-norm3d-affine-grad"
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
        let (c, vox) = plane_dims(l1)?;
        let out = dispatch!(s1, self.name(), |T| {
            let (gx, affine) = pointwise::instance_norm_backward::<T>(
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

// ---------------------------------------------------------------------------------------------
// leaky_relu, avg_pool3d

/// The gradient of a per-channel bias from the output gradient (N, C, D, H, W): the sum over
/// the batch and the voxels, shape (C). On the CPU one parallel pass (candle's `sum` over
/// non-trailing axes runs on one thread with strided reads); see
/// [`pointwise::channel_sums`] for the summation order.
pub fn bias_grad(grad: &Tensor) -> Result<Tensor> {
    dims5(grad.dims(), "bias gradient")?;
    if !grad.device().is_cpu() {
        return grad.sum((0, 2, 3, 4));
    }
    grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)
}

struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "voxtell-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let [_, c, d, h, w] = dims5(l.dims(), "bias gradient")?;
        let out = dispatch!(s, self.name(), |T| pointwise::channel_sums::<T>(
            slice(s, l, "gradient")?,
            c,
            d * h * w
        ));
        Ok((out, Shape::from(c)))
    }
}

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

struct LeakyReluGrad {
    slope: f64,
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
    x.contiguous()?.apply_op1(AvgPool { planes: n * c, input: [d, h, w], kernel })
}

#[derive(Clone, Copy)]
struct AvgPool {
    planes: usize,
    input: [usize; 3],
    kernel: [usize; 3],
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "voxtell-avg-pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s, self.name(), |T| pointwise::avg_pool::<T>(
            slice(s, l, "input")?,
            self.planes,
            self.input,
            self.kernel
        ));
        let dims = l.dims();
        let [od, oh, ow] = pointwise::pooled(self.input, self.kernel);
        Ok((out, Shape::from((dims[0], dims[1], od, oh, ow))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&AvgPoolGrad { pool: *self })?))
    }
}

struct AvgPoolGrad {
    pool: AvgPool,
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "voxtell-avg-pool3d-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.pool;
        let out = dispatch!(s, self.name(), |T| pointwise::avg_pool_backward::<T>(
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
