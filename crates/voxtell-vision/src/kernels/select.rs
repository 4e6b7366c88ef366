//! The one place that decides which kernel runs a convolution: a pure function of the layer's
//! geometry, the element type, the requested precision, the CPU's features and the
//! `VOXTELL_CONV_CL` override, so that the choice for every layer of the network can be listed
//! and tested on any machine (see the table in the tests below).
//!
//! The paths, fastest first where they apply (figures in `docs/performance.md`, "conv3d,
//! forward"):
//! - [`ConvPath::DirectChannelsLastBf16`]: bf16 products, f32 sums, on channels-last windows
//!   ([`super::direct_channels_last::run_bf16`]) — only when [`ConvPrecision::Bf16`] is asked
//!   for and the CPU has AVX-512 BF16;
//! - [`ConvPath::DirectChannelsLast`]: f32 on channels-last windows, any stride, best with 32 or
//!   more channels in and out ([`super::direct_channels_last::run`]);
//! - [`ConvPath::DirectNcdhw`]: f32, stride 1, vectorised along W on the NCDHW input, for few
//!   channels ([`super::direct_ncdhw`]);
//! - [`ConvPath::Gemm`]: tiled im2col + GEMM for everything else (f64, 1×1×1 kernels, no
//!   AVX-512, small strided layers) ([`super::conv_gemm`]).

use std::sync::OnceLock;

use candle_core::DType;

use super::ConvGeom;
use super::cpu::CpuFeatures;

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

/// The kernel a convolution runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvPath {
    /// [`super::direct_ncdhw`]: f32, stride 1, AVX-512F.
    DirectNcdhw,
    /// [`super::direct_channels_last::run`]: f32, any stride, AVX-512F.
    DirectChannelsLast,
    /// [`super::direct_channels_last::run_bf16`]: bf16 products, AVX-512 BF16 (forward only).
    DirectChannelsLastBf16,
    /// [`super::conv_gemm`]: im2col + GEMM, any element type, geometry and CPU.
    Gemm,
}

/// `VOXTELL_CONV_CL` as read once per process: `Some(true)` for `1` (the channels-last kernel
/// wherever a direct kernel applies), `Some(false)` for any other value (never for ≥ 32
/// channels; narrow volumes still take it), `None` when unset (the rules below). For
/// benchmarking the two direct kernels against each other.
pub(crate) fn cl_override() -> Option<bool> {
    static OVERRIDE: OnceLock<Option<bool>> = OnceLock::new();
    *OVERRIDE.get_or_init(|| std::env::var_os("VOXTELL_CONV_CL").map(|v| v == "1"))
}

/// What every direct kernel needs whatever the stride: f32, odd kernel sizes larger than
/// 1×1×1, and AVX-512F.
fn direct(g: &ConvGeom, dtype: DType, cpu: CpuFeatures) -> bool {
    dtype == DType::F32 && g.kernel.iter().all(|k| k % 2 == 1) && g.kernel != [1, 1, 1] && cpu.avx512f
}

/// At stride 1, which direct kernel: the channels-last one when both channel counts fill its
/// 32-channel blocks or the volume is too narrow to fill 16-lane vectors along W (why: see
/// `docs/performance.md`, "Choosing the direct kernel").
fn channels_last_stride1(g: &ConvGeom, cl: Option<bool>) -> bool {
    g.input[2] < 16 || cl.unwrap_or(g.c_in >= 32 && g.c_out >= 32)
}

/// Whether a strided layer runs on the channels-last kernel rather than the GEMM path: ≥ 32
/// input and output channels and output rows of ≥ 8 voxels (shorter rows leave most of a tile
/// empty; figures in `docs/performance.md`, "Choosing the direct kernel").
fn channels_last_strided(g: &ConvGeom, cl: Option<bool>) -> bool {
    cl.unwrap_or(g.c_in >= 32 && g.c_out >= 32 && g.output()[2] >= 8)
}

/// The path of a forward convolution. Bf16 takes the bf16 kernel wherever a direct kernel
/// applies, the input has ≥ 8 channels (fewer gain nothing) and the CPU has AVX-512 BF16;
/// everywhere else the f32 choice stands.
pub(crate) fn forward(
    g: &ConvGeom,
    dtype: DType,
    precision: ConvPrecision,
    cpu: CpuFeatures,
    cl: Option<bool>,
) -> ConvPath {
    if !direct(g, dtype, cpu) {
        return ConvPath::Gemm;
    }
    let f32_path = if g.stride == [1, 1, 1] {
        if channels_last_stride1(g, cl) { ConvPath::DirectChannelsLast } else { ConvPath::DirectNcdhw }
    } else if channels_last_strided(g, cl) {
        ConvPath::DirectChannelsLast
    } else {
        return ConvPath::Gemm;
    };
    if precision == ConvPrecision::Bf16 && g.c_in >= 8 && cpu.bf16() {
        ConvPath::DirectChannelsLastBf16
    } else {
        f32_path
    }
}

/// The path of the input gradient of a convolution (always f32 arithmetic for f32): a direct
/// kernel only at stride 1, where the gradient is a convolution of the output gradient with
/// the adjoint kernel (input and output channels swapped).
pub(crate) fn backward_input(g: &ConvGeom, dtype: DType, cpu: CpuFeatures, cl: Option<bool>) -> ConvPath {
    if !direct(g, dtype, cpu) || g.stride != [1, 1, 1] {
        return ConvPath::Gemm;
    }
    let adjoint = ConvGeom { c_in: g.c_out, c_out: g.c_in, ..*g };
    if channels_last_stride1(&adjoint, cl) { ConvPath::DirectChannelsLast } else { ConvPath::DirectNcdhw }
}

/// The path of the convolution of `upsample_conv3d_add` when it is fused with the upsampling
/// (`g`: the stride-1 convolution of the upsampled f32 volume), or `None` to compose
/// transposed convolution and convolution instead. Fused only where the convolution would take
/// the channels-last kernel anyway, ≥ 32 channels in and out: for fewer, its 32-channel blocks
/// run mostly empty and the W-vectorised kernel of the composition is faster (the demo model,
/// 8…64 channels, took 8.3 s fused against 5.8 s composed). The override does not apply.
pub(crate) fn upsample_fused(g: &ConvGeom, precision: ConvPrecision, cpu: CpuFeatures) -> Option<ConvPath> {
    if !direct(g, DType::F32, cpu) || g.stride != [1, 1, 1] || g.c_in < 32 || g.c_out < 32 {
        return None;
    }
    Some(if precision == ConvPrecision::Bf16 && cpu.bf16() && g.c_in >= 8 {
        ConvPath::DirectChannelsLastBf16
    } else {
        ConvPath::DirectChannelsLast
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use ConvPath::{DirectChannelsLast as Cl, DirectChannelsLastBf16 as Bf16, DirectNcdhw as Ncdhw, Gemm};

    const NONE: CpuFeatures = CpuFeatures { avx512f: false, avx512bf16: false };
    const AVX512: CpuFeatures = CpuFeatures { avx512f: true, avx512bf16: false };
    const AVX512_BF16: CpuFeatures = CpuFeatures { avx512f: true, avx512bf16: true };

    /// `(c_in, c_out, input size, kernel size, stride)` of a cubic convolution.
    type Layer = (usize, usize, usize, usize, usize);
    /// `(channels below, channels c, upsampled size)` of a decoder upsampling.
    type Upsampling = (usize, usize, usize);

    /// A convolution of one 192³ patch: `c_in → c_out` on an `n³` input.
    fn conv(c_in: usize, c_out: usize, n: usize, k: usize, s: usize) -> ConvGeom {
        ConvGeom {
            batch: 1,
            c_in,
            c_out,
            input: [n; 3],
            kernel: [k; 3],
            stride: [s; 3],
            padding: [(k - 1) / 2; 3],
        }
    }

    /// Every convolution of VoxTell's network (ResEncL, features 32, 64, 128, 256, 320, 320,
    /// 3×3×3 kernels, strides 1, 2, 2, 2, 2, 2, blocks 1, 3, 4, 6, 6, 6; decoder one convolution
    /// per stage, fusion heads 32) on a 192³ patch, each distinct geometry once, with its path
    /// on an AVX-512 CPU: forward in f32, forward at [`ConvPrecision::Bf16`] with AVX-512 BF16,
    /// and the input gradient. The paths are those of the code before `select` existed
    /// (`ops::conv_forward` with `direct::{applies, channels_last, strided_channels_last}`).
    #[rustfmt::skip]
    const NETWORK: &[(&str, Layer, [ConvPath; 3])] = &[
        // (layer, (c_in, c_out, input size, kernel, stride), [f32, bf16, input gradient])
        ("encoder.stem.convs.0",                      (1, 32, 192, 3, 1),    [Ncdhw, Ncdhw, Ncdhw]),
        ("encoder.stages.0 conv1, conv2",             (32, 32, 192, 3, 1),   [Cl, Bf16, Cl]),
        ("encoder.stages.1.blocks.0.conv1 (stride 2)", (32, 64, 192, 3, 2),  [Cl, Bf16, Gemm]),
        ("encoder.stages.1.blocks.0.skip.1 (1×1)",    (32, 64, 96, 1, 1),    [Gemm, Gemm, Gemm]),
        ("encoder.stages.1 other convs",              (64, 64, 96, 3, 1),    [Cl, Bf16, Cl]),
        ("encoder.stages.2.blocks.0.conv1 (stride 2)", (64, 128, 96, 3, 2),  [Cl, Bf16, Gemm]),
        ("encoder.stages.2.blocks.0.skip.1 (1×1)",    (64, 128, 48, 1, 1),   [Gemm, Gemm, Gemm]),
        ("encoder.stages.2 other convs",              (128, 128, 48, 3, 1),  [Cl, Bf16, Cl]),
        ("encoder.stages.3.blocks.0.conv1 (stride 2)", (128, 256, 48, 3, 2), [Cl, Bf16, Gemm]),
        ("encoder.stages.3.blocks.0.skip.1 (1×1)",    (128, 256, 24, 1, 1),  [Gemm, Gemm, Gemm]),
        ("encoder.stages.3 other convs",              (256, 256, 24, 3, 1),  [Cl, Bf16, Cl]),
        ("encoder.stages.4.blocks.0.conv1 (stride 2)", (256, 320, 24, 3, 2), [Cl, Bf16, Gemm]),
        ("encoder.stages.4.blocks.0.skip.1 (1×1)",    (256, 320, 12, 1, 1),  [Gemm, Gemm, Gemm]),
        ("encoder.stages.4 other convs",              (320, 320, 12, 3, 1),  [Cl, Bf16, Cl]),
        // Rows of 6 output voxels: under half a tile, so the GEMM path.
        ("encoder.stages.5.blocks.0.conv1 (stride 2)", (320, 320, 12, 3, 2), [Gemm, Gemm, Gemm]),
        ("encoder.stages.5 other convs",              (320, 320, 6, 3, 1),   [Cl, Bf16, Cl]),
        // Decoder stage i: first convolution on [upsampled, skip] (2c → c), or its skip half
        // alone (c → c) when the prompts share it; then the 1×1 deep-supervision seg layer
        // (c + 32 heads → 1; stages 0–3).
        ("decoder.stages.0.convs.0 (12³)",            (640, 320, 12, 3, 1),  [Cl, Bf16, Cl]),
        ("decoder.stages.0 skip half",                (320, 320, 12, 3, 1),  [Cl, Bf16, Cl]),
        ("decoder.seg_layers.0",                      (352, 1, 12, 1, 1),    [Gemm, Gemm, Gemm]),
        ("decoder.stages.1.convs.0 (24³)",            (512, 256, 24, 3, 1),  [Cl, Bf16, Cl]),
        ("decoder.stages.1 skip half",                (256, 256, 24, 3, 1),  [Cl, Bf16, Cl]),
        ("decoder.seg_layers.1",                      (288, 1, 24, 1, 1),    [Gemm, Gemm, Gemm]),
        ("decoder.stages.2.convs.0 (48³)",            (256, 128, 48, 3, 1),  [Cl, Bf16, Cl]),
        ("decoder.stages.2 skip half",                (128, 128, 48, 3, 1),  [Cl, Bf16, Cl]),
        ("decoder.seg_layers.2",                      (160, 1, 48, 1, 1),    [Gemm, Gemm, Gemm]),
        ("decoder.stages.3.convs.0 (96³)",            (128, 64, 96, 3, 1),   [Cl, Bf16, Cl]),
        ("decoder.stages.3 skip half",                (64, 64, 96, 3, 1),    [Cl, Bf16, Cl]),
        ("decoder.seg_layers.3",                      (96, 1, 96, 1, 1),     [Gemm, Gemm, Gemm]),
        ("decoder.stages.4.convs.0 (192³)",           (64, 32, 192, 3, 1),   [Cl, Bf16, Cl]),
        ("decoder.stages.4 skip half",                (32, 32, 192, 3, 1),   [Cl, Bf16, Cl]),
    ];

    /// The decoder's `transpconvs` (kernel == stride 2, `below → c`) run on the transposed-
    /// convolution kernel, or fused into the stage's first convolution (`c → c` on the upsampled
    /// volume, the up half of the split weight) by `upsample_conv3d_add`: with its path at f32
    /// and at bf16 (AVX-512 BF16), or composed (`None`).
    #[rustfmt::skip]
    const UPSAMPLING: &[(&str, Upsampling, [Option<ConvPath>; 2])] = &[
        // (layer, (below, c, upsampled size), [f32, bf16])
        ("decoder.transpconvs.0 (6³ → 12³)",   (320, 320, 12), [Some(Cl), Some(Bf16)]),
        ("decoder.transpconvs.1 (12³ → 24³)",  (352, 256, 24), [Some(Cl), Some(Bf16)]),
        ("decoder.transpconvs.2 (24³ → 48³)",  (288, 128, 48), [Some(Cl), Some(Bf16)]),
        ("decoder.transpconvs.3 (48³ → 96³)",  (160, 64, 96),  [Some(Cl), Some(Bf16)]),
        ("decoder.transpconvs.4 (96³ → 192³)", (96, 32, 192),  [Some(Cl), Some(Bf16)]),
    ];

    #[test]
    fn every_voxtell_convolution_takes_its_path() {
        for &(layer, (ci, co, n, k, s), [f32_path, bf16_path, grad_path]) in NETWORK {
            let g = conv(ci, co, n, k, s);
            let fwd = |p, cpu| forward(&g, DType::F32, p, cpu, None);
            assert_eq!(fwd(ConvPrecision::F32, AVX512_BF16), f32_path, "{layer}: f32");
            assert_eq!(fwd(ConvPrecision::F32, AVX512), f32_path, "{layer}: f32 without BF16");
            assert_eq!(fwd(ConvPrecision::Bf16, AVX512_BF16), bf16_path, "{layer}: bf16");
            // Without the BF16 unit, bf16 falls back to the f32 choice.
            assert_eq!(fwd(ConvPrecision::Bf16, AVX512), f32_path, "{layer}: bf16 without BF16");
            // Without AVX-512, and for f64, everything is GEMM.
            for p in [ConvPrecision::F32, ConvPrecision::Bf16] {
                assert_eq!(fwd(p, NONE), Gemm, "{layer}: no AVX-512");
                assert_eq!(forward(&g, DType::F64, p, AVX512_BF16, None), Gemm, "{layer}: f64");
            }
            assert_eq!(backward_input(&g, DType::F32, AVX512_BF16, None), grad_path, "{layer}: gradient");
            assert_eq!(backward_input(&g, DType::F32, NONE, None), Gemm, "{layer}: gradient, no AVX-512");
            assert_eq!(backward_input(&g, DType::F64, AVX512_BF16, None), Gemm, "{layer}: f64 gradient");
        }
        for &(layer, (_below, c, n), [f32_path, bf16_path]) in UPSAMPLING {
            let g = conv(c, c, n, 3, 1);
            assert_eq!(upsample_fused(&g, ConvPrecision::F32, AVX512_BF16), f32_path, "{layer}: f32");
            assert_eq!(upsample_fused(&g, ConvPrecision::Bf16, AVX512_BF16), bf16_path, "{layer}: bf16");
            assert_eq!(upsample_fused(&g, ConvPrecision::Bf16, AVX512), f32_path, "{layer}: no BF16");
            assert_eq!(upsample_fused(&g, ConvPrecision::F32, NONE), None, "{layer}: no AVX-512");
        }
    }

    /// The rules at their edges: channel counts, narrow volumes, short strided rows, the bf16
    /// channel minimum, kernels, and `VOXTELL_CONV_CL` forcing either kernel.
    #[test]
    fn the_rules_at_their_edges() {
        let f = |g: &ConvGeom, cl| forward(g, DType::F32, ConvPrecision::F32, AVX512_BF16, cl);
        let b = |g: &ConvGeom| forward(g, DType::F32, ConvPrecision::Bf16, AVX512_BF16, None);
        // Stride 1: 32 channels in and out, or a volume narrower than 16 along W.
        assert_eq!(f(&conv(31, 32, 64, 3, 1), None), Ncdhw);
        assert_eq!(f(&conv(32, 31, 64, 3, 1), None), Ncdhw);
        assert_eq!(f(&conv(8, 8, 15, 3, 1), None), Cl);
        assert_eq!(f(&conv(8, 8, 16, 3, 1), None), Ncdhw);
        assert_eq!(backward_input(&conv(31, 32, 64, 3, 1), DType::F32, AVX512, None), Ncdhw);
        // Strided: 32 channels in and out and output rows of ≥ 8; else GEMM, also in bf16.
        assert_eq!(f(&conv(32, 32, 16, 3, 2), None), Cl);
        assert_eq!(f(&conv(32, 32, 14, 3, 2), None), Gemm);
        assert_eq!(b(&conv(32, 32, 14, 3, 2)), Gemm);
        assert_eq!(f(&conv(16, 32, 64, 3, 2), None), Gemm);
        // bf16 from 8 input channels, on either direct kernel's geometry.
        assert_eq!(b(&conv(7, 32, 64, 3, 1)), Ncdhw);
        assert_eq!(b(&conv(8, 16, 64, 3, 1)), Bf16);
        // Kernels: odd and larger than 1×1×1.
        let mut g = conv(32, 32, 64, 3, 1);
        g.kernel = [1, 3, 3];
        g.padding = [0, 1, 1];
        assert_eq!(f(&g, None), Cl);
        g.kernel = [2, 3, 3];
        assert_eq!(f(&g, None), Gemm);
        // The override: `1` takes channels-last wherever a direct kernel applies, anything else
        // only for narrow volumes; never for 1×1×1 kernels or without AVX-512.
        assert_eq!(f(&conv(8, 8, 64, 3, 1), Some(true)), Cl);
        assert_eq!(f(&conv(64, 64, 64, 3, 1), Some(false)), Ncdhw);
        assert_eq!(f(&conv(64, 64, 15, 3, 1), Some(false)), Cl);
        assert_eq!(f(&conv(8, 8, 64, 3, 2), Some(true)), Cl);
        assert_eq!(f(&conv(320, 320, 12, 3, 2), Some(true)), Cl);
        assert_eq!(f(&conv(64, 64, 64, 3, 2), Some(false)), Gemm);
        assert_eq!(f(&conv(64, 64, 64, 1, 1), Some(true)), Gemm);
        assert_eq!(forward(&conv(8, 8, 64, 3, 1), DType::F32, ConvPrecision::F32, NONE, Some(true)), Gemm);
        assert_eq!(backward_input(&conv(64, 64, 64, 3, 1), DType::F32, AVX512, Some(false)), Ncdhw);
        // The fused upsampling: 32 channels in and out, whatever the override.
        assert_eq!(upsample_fused(&conv(31, 32, 64, 3, 1), ConvPrecision::F32, AVX512), None);
        assert_eq!(upsample_fused(&conv(32, 31, 64, 3, 1), ConvPrecision::F32, AVX512), None);
        assert_eq!(upsample_fused(&conv(32, 32, 64, 1, 1), ConvPrecision::F32, AVX512), None);
    }
}
