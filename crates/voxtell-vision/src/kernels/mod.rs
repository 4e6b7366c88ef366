//! CPU kernels on plain slices (NCDHW, row-major). The candle operations in [`crate::ops`] are
//! thin drivers around these; the scalar oracles they are tested against live in
//! [`crate::reference`].

pub(crate) mod conv_gemm;
pub(crate) mod direct;
pub(crate) mod direct_cl;
pub(crate) mod pointwise;

/// An element type the kernels run on: f32 (fast paths) or f64 (parity runs).
pub(crate) trait Elem:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
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

/// Number of worker threads the kernels split work into (rayon's pool).
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
