//! What this CPU can do, as far as the convolution paths care: the features, detected once and
//! handed to [`super::select`] as a plain value (so that the choice can be tested for any
//! CPU), and the tokens that prove a feature to the kernels whose SIMD code needs it (so that
//! each `unsafe` call to a `#[target_feature]` function is justified where it is made).

use std::sync::OnceLock;

/// The instruction-set extensions the convolution paths depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CpuFeatures {
    /// AVX-512 Foundation: every direct kernel.
    pub avx512f: bool,
    /// AVX-512 BF16 (`vdpbf16ps`): the bf16 channels-last kernel (with AVX-512F).
    pub avx512bf16: bool,
}

impl CpuFeatures {
    /// Ask the CPU (`is_x86_feature_detected!`); nothing on other architectures.
    pub fn detect() -> Self {
        CpuFeatures { avx512f: Avx512::detect().is_some(), avx512bf16: Avx512Bf16::detect().is_some() }
    }

    /// This CPU's features, detected on first use.
    pub fn get() -> Self {
        static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
        *FEATURES.get_or_init(Self::detect)
    }

    /// Whether the bf16 channels-last kernel can run: AVX-512F and AVX-512 BF16.
    pub fn bf16(self) -> bool {
        self.avx512f && self.avx512bf16
    }
}

/// Proof that this CPU has AVX-512F: [`Avx512::detect`] is the only way to get one, and it
/// checks first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The token, where the CPU has AVX-512F.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Avx512(()));
        }
        None
    }

    /// The token for a path [`super::select`] chose: it chooses an AVX-512 path only where
    /// [`CpuFeatures::get`] found AVX-512F, so this does not fail on a consistent CPU.
    pub fn expect() -> Self {
        Self::detect().expect("an AVX-512 convolution path was chosen on a CPU without AVX-512F")
    }
}

/// Proof that this CPU has AVX-512F and AVX-512 BF16: [`Avx512Bf16::detect`] is the only way
/// to get one, and it checks both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512Bf16(());

impl Avx512Bf16 {
    /// The token, where the CPU has AVX-512F and AVX-512 BF16.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            return Some(Avx512Bf16(()));
        }
        None
    }

    /// The token for a path [`super::select`] chose (see [`Avx512::expect`]).
    pub fn expect() -> Self {
        Self::detect().expect("a bf16 convolution path was chosen on a CPU without AVX-512 BF16")
    }
}
