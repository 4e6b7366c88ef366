//! CPU kernels on plain slices (NCDHW, row-major). The candle operations in [`crate::ops`] are
//! thin drivers around these; the scalar oracles they are tested against live in the
//! `reference` module (cargo feature `reference`, enabled for this crate's tests).
//!
//! - Convolution: [`select`] decides which of [`direct_ncdhw`], [`direct_channels_last`] (f32 or
//!   bf16 products) and [`conv_gemm`] runs a layer, from the CPU's features ([`cpu`]).
//! - [`conv_transpose`]: the transposed convolution with kernel == stride.
//! - [`norm`]: instance normalisation and the per-channel sums of a bias gradient.
//! - [`pool`]: average pooling; [`pointwise`]: leaky ReLU and element-wise sums.

pub(crate) mod conv_gemm;
pub(crate) mod conv_transpose;
pub(crate) mod cpu;
pub(crate) mod direct_channels_last;
pub(crate) mod direct_ncdhw;
pub(crate) mod norm;
pub(crate) mod pointwise;
pub(crate) mod pool;
pub(crate) mod select;

use std::any::TypeId;

use candle_core::DType;

/// An element type the kernels run on: f32 (fast paths) or f64 (parity runs); also the scalar
/// type of the `reference` implementations (re-exported there).
pub trait Elem:
    Copy
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// The candle element type of `Self` (what [`select`] decides by).
    const DTYPE: DType;
    /// Converts from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Square root (used by the `reference` implementations only).
    #[cfg_attr(not(feature = "reference"), allow(dead_code))]
    fn sqrt(self) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const DTYPE: DType = DType::F32;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const DTYPE: DType = DType::F64;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Geometry of one 3-D convolution: shapes, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    /// Input spatial size (D, H, W).
    pub input: [usize; 3],
    /// Kernel size (kd, kh, kw).
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

impl ConvGeom {
    /// Output spatial size: `(n + 2p − k) / s + 1` per axis.
    pub fn output(&self) -> [usize; 3] {
        std::array::from_fn(|a| (self.input[a] + 2 * self.padding[a] - self.kernel[a]) / self.stride[a] + 1)
    }

    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Rows of the im2col matrix (and columns of the weight matrix): `c_in · taps`.
    pub fn k(&self) -> usize {
        self.c_in * self.taps()
    }

    pub fn in_voxels(&self) -> usize {
        self.input.iter().product()
    }

    pub fn out_voxels(&self) -> usize {
        self.output().iter().product()
    }
}

/// The weights of a `c_out × c_in × taps` kernel `w`, or of its adjoint (`adjoint`: output and
/// input channels swapped, taps reversed — the kernel of the input gradient of a stride-1
/// convolution), visited as `(out, in, tap, value)` in the packed kernel's channel numbering.
pub(crate) fn for_each_weight(
    w: &[f32],
    c_out: usize,
    c_in: usize,
    taps: usize,
    adjoint: bool,
    mut visit: impl FnMut(usize, usize, usize, f32),
) {
    let (n_out, n_in) = if adjoint { (c_in, c_out) } else { (c_out, c_in) };
    for o in 0..n_out {
        for i in 0..n_in {
            for t in 0..taps {
                let v = if adjoint {
                    w[(i * c_in + o) * taps + taps - 1 - t]
                } else {
                    w[(o * c_in + i) * taps + t]
                };
                visit(o, i, t, v);
            }
        }
    }
}

/// The threading of a GEMM of `m × k` by `k × n`: rayon's pool from 2¹⁸ multiply-adds, else
/// the calling thread.
pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(threads()) } else { gemm::Parallelism::None }
}

/// Number of worker threads the kernels split work into (rayon's pool).
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `s` as the f32 slice it is: the direct kernels run on f32 only, and [`select`] sends nothing
/// else there. Panics when `T` is not f32.
pub(crate) fn as_f32<T: 'static>(s: &[T]) -> &[f32] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>());
    // SAFETY: T is f32 (checked above); same layout, same length.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) }
}

/// A direct kernel's f32 output as the `Vec<T>` it is (the allocation reused). Panics when `T`
/// is not f32.
pub(crate) fn into_t<T: 'static>(v: Vec<f32>) -> Vec<T> {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>());
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: T is f32 (checked above): the allocation, length and capacity are reused as is.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// A strided matrix operand of [`matmul`]: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub ptr: *const T,
    /// Column stride (between elements of a row).
    pub cs: isize,
    /// Row stride.
    pub rs: isize,
}

/// `dst = lhs · rhs` (`m × k` by `k × n`), or `dst += lhs · rhs` when `accumulate`, on the
/// `gemm` crate; `dst` has unit column stride and row stride `dst_rs`, and `par` the GEMM's
/// threading. One call shape for every GEMM of the kernels (`read_dst = accumulate`, alpha 1 or
/// 0 as read, beta 1, nothing conjugated).
///
/// # Safety
/// `dst` must address `m` rows of `n` writable elements at row stride `dst_rs` that no other
/// thread touches and that do not overlap `lhs` or `rhs`; `lhs` and `rhs` must address
/// `m × k` and `k × n` readable elements at their strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: gemm::Parallelism,
) {
    let alpha = if accumulate { T::ONE } else { T::ZERO };
    // SAFETY: the caller's contract above is exactly what `gemm` requires of its pointers.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            alpha,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}
