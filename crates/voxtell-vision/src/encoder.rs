//! The residual encoder (nnU-Net's ResEnc, "ResEncL" at VoxTell's sizes) and the decoder's
//! stacked conv blocks, built from a plans file's `arch_kwargs` and loaded by the official
//! state-dict keys through candle's `VarBuilder`.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};
use serde::Deserialize;

use crate::error::{Result, VisionError};
use crate::nn::{self, Conv3d, Conv3dConfig, InstanceNorm3d, InstanceNorm3dConfig, LeakyRelu};
use crate::ops;

/// The architecture keys of an nnU-Net plans file
/// (`configurations.<name>.architecture.arch_kwargs`) that the encoder and decoder blocks use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArchKwargs {
    /// Number of resolution stages.
    pub n_stages: usize,
    /// Channels of each stage.
    pub features_per_stage: Vec<usize>,
    /// Convolution class (must be `Conv3d`).
    pub conv_op: String,
    /// Kernel size per stage and axis (odd).
    pub kernel_sizes: Vec<Vec<usize>>,
    /// Stride of each stage's first block, per axis.
    pub strides: Vec<Vec<usize>>,
    /// Residual blocks per stage.
    pub n_blocks_per_stage: Vec<usize>,
    /// Convolutions per decoder stage.
    #[serde(default)]
    pub n_conv_per_stage_decoder: Vec<usize>,
    /// Whether the convolutions (other than 1×1 skip projections) have a bias.
    pub conv_bias: bool,
    /// Normalisation class (must be `InstanceNorm3d`).
    pub norm_op: String,
    /// Normalisation arguments.
    #[serde(default)]
    pub norm_op_kwargs: NormKwargs,
    /// Dropout class (must be null).
    #[serde(default)]
    pub dropout_op: Option<String>,
    /// Activation class (must be `LeakyReLU`).
    pub nonlin: String,
    /// Activation arguments (`negative_slope`, default 0.01).
    #[serde(default)]
    pub nonlin_kwargs: serde_json::Map<String, serde_json::Value>,
}

/// `norm_op_kwargs` of a plans file.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct NormKwargs {
    /// Added to the variance.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Whether the norm has a learned scale and shift.
    #[serde(default)]
    pub affine: bool,
}

fn default_eps() -> f64 {
    1e-5
}

impl Default for NormKwargs {
    fn default() -> Self {
        NormKwargs { eps: default_eps(), affine: false }
    }
}

/// Validated block settings shared by every conv → norm → activation unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSettings {
    /// Bias on the 3×3×3 convolutions.
    pub conv_bias: bool,
    /// InstanceNorm epsilon.
    pub eps: f64,
    /// Whether the InstanceNorm is affine.
    pub affine: bool,
    /// LeakyReLU negative slope.
    pub slope: f64,
}

impl std::str::FromStr for ArchKwargs {
    type Err = VisionError;

    /// Parse `arch_kwargs` given as JSON text.
    fn from_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| VisionError::Plan(format!("arch_kwargs: {e}")))?;
        Self::from_json(&value)
    }
}

fn class_is(path: &str, name: &str) -> bool {
    path.rsplit('.').next() == Some(name)
}

impl ArchKwargs {
    /// Parse the `arch_kwargs` object of a plans file.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let kw: ArchKwargs = serde_json::from_value(value.clone())
            .map_err(|e| VisionError::Plan(format!("arch_kwargs: {e}")))?;
        kw.settings()?;
        Ok(kw)
    }

    /// Read `configurations.<configuration>.architecture.arch_kwargs` from a whole plans file.
    pub fn from_plans(plans: &serde_json::Value, configuration: &str) -> Result<Self> {
        let kw = plans
            .get("configurations")
            .and_then(|c| c.get(configuration))
            .and_then(|c| c.get("architecture"))
            .and_then(|a| a.get("arch_kwargs"))
            .ok_or_else(|| {
                VisionError::Plan(format!("no configurations.{configuration}.architecture.arch_kwargs"))
            })?;
        Self::from_json(kw)
    }

    /// Check that the plan describes what this crate builds, and return the block settings.
    /// Another convolution, norm, activation or a dropout is an error, not a silent default.
    pub fn settings(&self) -> Result<BlockSettings> {
        let bad = |m: String| Err(VisionError::Plan(m));
        if !class_is(&self.conv_op, "Conv3d") {
            return bad(format!("conv_op {} is not supported (Conv3d only)", self.conv_op));
        }
        if !class_is(&self.norm_op, "InstanceNorm3d") {
            return bad(format!("norm_op {} is not supported (InstanceNorm3d only)", self.norm_op));
        }
        if !class_is(&self.nonlin, "LeakyReLU") {
            return bad(format!("nonlin {} is not supported (LeakyReLU only)", self.nonlin));
        }
        if let Some(d) = &self.dropout_op {
            return bad(format!("dropout_op {d} is not supported (null only)"));
        }
        let n = self.n_stages;
        if n == 0 {
            return bad("n_stages is 0".into());
        }
        for (name, len) in [
            ("features_per_stage", self.features_per_stage.len()),
            ("kernel_sizes", self.kernel_sizes.len()),
            ("strides", self.strides.len()),
            ("n_blocks_per_stage", self.n_blocks_per_stage.len()),
        ] {
            if len != n {
                return bad(format!("{name} has {len} entries for {n} stages"));
            }
        }
        for (s, (k, st)) in self.kernel_sizes.iter().zip(&self.strides).enumerate() {
            if k.len() != 3 || k.iter().any(|&v| v % 2 == 0) {
                return bad(format!("kernel_sizes[{s}] = {k:?} must be three odd sizes"));
            }
            if st.len() != 3 || st.contains(&0) {
                return bad(format!("strides[{s}] = {st:?} must be three positive strides"));
            }
        }
        if self.features_per_stage.contains(&0) || self.n_blocks_per_stage.contains(&0) {
            return bad("features_per_stage and n_blocks_per_stage must be positive".into());
        }
        let slope = match self.nonlin_kwargs.get("negative_slope") {
            None => 0.01,
            Some(v) => {
                v.as_f64().ok_or_else(|| VisionError::Plan(format!("negative_slope {v} is not a number")))?
            }
        };
        let eps = self.norm_op_kwargs.eps;
        if eps.is_nan() || eps < 0.0 {
            return bad(format!("norm eps {eps} must be non-negative"));
        }
        Ok(BlockSettings { conv_bias: self.conv_bias, eps, affine: self.norm_op_kwargs.affine, slope })
    }
}

fn arr3(v: &[usize]) -> [usize; 3] {
    [v[0], v[1], v[2]]
}

impl BlockSettings {
    /// The unit of this plan for a `kernel`/`stride` convolution: the plan's conv bias and norm,
    /// followed by its LeakyReLU.
    pub fn unit(&self, kernel: [usize; 3], stride: [usize; 3]) -> ConvNormActConfig {
        ConvNormActConfig {
            kernel,
            conv: Conv3dConfig { stride, bias: self.conv_bias },
            norm: InstanceNorm3dConfig { eps: self.eps, affine: self.affine },
            act: Some(LeakyRelu { negative_slope: self.slope }),
        }
    }
}

/// How a [`ConvNormAct`] is built (change single fields with struct update syntax:
/// `ConvNormActConfig { act: None, ..cfg }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvNormActConfig {
    /// Kernel size per axis (odd).
    pub kernel: [usize; 3],
    /// Convolution options: the stride, and whether it has a bias (1×1 skip projections never
    /// have one).
    pub conv: Conv3dConfig,
    /// Norm options.
    pub norm: InstanceNorm3dConfig,
    /// The activation after the norm, if any.
    pub act: Option<LeakyRelu>,
}

/// nnU-Net's `ConvDropoutNormReLU`: `nn.Conv3d` → `nn.InstanceNorm3d` → optional
/// `nn.LeakyReLU` (keys `conv.weight`, `conv.bias`, `norm.weight`, `norm.bias`).
#[derive(Debug, Clone)]
pub struct ConvNormAct {
    conv: Conv3d,
    norm: InstanceNorm3d,
    act: Option<LeakyRelu>,
}

impl ConvNormAct {
    /// Load a unit with `c_in → c_out` channels as `cfg` says.
    pub fn load(vb: VarBuilder, c_in: usize, c_out: usize, cfg: ConvNormActConfig) -> Result<Self> {
        let conv = nn::conv3d(c_in, c_out, cfg.kernel, cfg.conv, vb.pp("conv"))?;
        let norm = nn::instance_norm3d(c_out, cfg.norm, vb.pp("norm"))?;
        Ok(ConvNormAct { conv, norm, act: cfg.act })
    }

    /// Apply the unit to `x`, taken by value: it is released (unless other handles to it exist,
    /// as in training or where the caller keeps a clone) once the convolution has read it,
    /// before the norm runs; the norm and activation then run in the convolution's output
    /// storage — one activation fewer at the peak.
    pub fn forward(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv.forward(&x)?;
        drop(x);
        self.norm_act(y)
    }

    /// The norm and activation applied to `y`, a fresh output of this unit's convolution (or of
    /// an equivalent computation, as the fusion decoder's split first convolution), normalised
    /// in its own storage when no gradient is tracked.
    pub fn norm_act(&self, y: Tensor) -> candle_core::Result<Tensor> {
        self.norm.forward_act(y, self.act)
    }

    /// The convolution (`conv`).
    pub fn conv(&self) -> &Conv3d {
        &self.conv
    }

    /// The norm (`norm`).
    pub fn norm(&self) -> &InstanceNorm3d {
        &self.norm
    }

    /// The activation after the norm, if any.
    pub fn act(&self) -> Option<LeakyRelu> {
        self.act
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.conv.out_channels()
    }
}

impl Module for ConvNormAct {
    /// [`ConvNormAct::forward`] on a handle to `xs` (which therefore stays alive).
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        ConvNormAct::forward(self, xs.clone())
    }
}

/// nnU-Net's `StackedConvBlocks`: `convs.0 … convs.{n−1}`, only the first strided.
#[derive(Debug, Clone)]
pub struct StackedConvBlocks {
    convs: Vec<ConvNormAct>,
}

impl StackedConvBlocks {
    /// Load `n` units `c_in → c_out` (then `c_out → c_out`), the first as `cfg` says, the others
    /// with stride 1.
    pub fn load(vb: VarBuilder, n: usize, c_in: usize, c_out: usize, cfg: ConvNormActConfig) -> Result<Self> {
        let vb = vb.pp("convs");
        let convs = (0..n)
            .map(|i| {
                let (ci, cfg) = if i == 0 {
                    (c_in, cfg)
                } else {
                    (c_out, ConvNormActConfig { conv: Conv3dConfig { stride: [1, 1, 1], ..cfg.conv }, ..cfg })
                };
                ConvNormAct::load(vb.pp(i), ci, c_out, cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StackedConvBlocks { convs })
    }

    /// The units (`convs.{i}`), in order.
    pub fn units(&self) -> &[ConvNormAct] {
        &self.convs
    }

    /// Apply the blocks in order to `x`, taken by value (released once read; see
    /// [`ConvNormAct::forward`]).
    pub fn forward(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let mut y = x;
        for c in &self.convs {
            y = c.forward(y)?;
        }
        Ok(y)
    }
}

impl Module for StackedConvBlocks {
    /// [`StackedConvBlocks::forward`] on a handle to `xs` (which therefore stays alive).
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        StackedConvBlocks::forward(self, xs.clone())
    }
}

/// nnU-Net's `BasicBlockD` (ResNet-D): `LReLU(conv2(conv1(x)) + skip(x))`, where the skip is
/// identity, or an average pool over the stride followed (when the channels change) by a 1×1
/// convolution without bias and an InstanceNorm (keys `conv1.*`, `conv2.*`, `skip.*`).
#[derive(Debug, Clone)]
pub struct BasicBlockD {
    conv1: ConvNormAct,
    conv2: ConvNormAct,
    pool: Option<[usize; 3]>,
    projection: Option<ConvNormAct>,
    act: Option<LeakyRelu>,
}

impl BasicBlockD {
    /// Load a block `c_in → c_out`. `cfg` is `conv1`'s unit (kernel, stride, bias, norm and the
    /// activation, which also follows the sum); `conv2` is the same at stride 1 without
    /// activation.
    pub fn load(vb: VarBuilder, c_in: usize, c_out: usize, cfg: ConvNormActConfig) -> Result<Self> {
        let stride = cfg.conv.stride;
        let conv1 = ConvNormAct::load(vb.pp("conv1"), c_in, c_out, cfg)?;
        let plain =
            ConvNormActConfig { conv: Conv3dConfig { stride: [1, 1, 1], ..cfg.conv }, act: None, ..cfg };
        let conv2 = ConvNormAct::load(vb.pp("conv2"), c_out, c_out, plain)?;
        let pool = (stride != [1, 1, 1]).then_some(stride);
        let projection = if c_in != c_out {
            let index = usize::from(pool.is_some());
            let one = ConvNormActConfig {
                kernel: [1, 1, 1],
                conv: Conv3dConfig { bias: false, ..plain.conv },
                ..plain
            };
            Some(ConvNormAct::load(vb.pp("skip").pp(index), c_in, c_out, one)?)
        } else {
            None
        };
        Ok(BasicBlockD { conv1, conv2, pool, projection, act: cfg.act })
    }
}

impl Module for BasicBlockD {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // conv1's output is released once conv2 has read it.
        let residual = self.conv2.forward(self.conv1.forward(x.clone())?)?;
        let mut skip = match self.pool {
            Some(k) => ops::avg_pool3d(x, k)?,
            None => x.clone(),
        };
        if let Some(p) = &self.projection {
            skip = p.forward(skip)?;
        }
        match self.act {
            Some(act) => ops::add_leaky_relu(&residual, &skip, act.negative_slope),
            None => residual + skip,
        }
    }
}

/// The residual encoder: a stem (`stem.convs.0`) and `n_stages` stages of [`BasicBlockD`]
/// (`stages.{s}.blocks.{b}`), returning every stage's output (the skips).
#[derive(Debug, Clone)]
pub struct ResidualEncoder {
    stem: StackedConvBlocks,
    stages: Vec<Vec<BasicBlockD>>,
    strides: Vec<[usize; 3]>,
    channels: Vec<usize>,
}

impl ResidualEncoder {
    /// Build from a plan and load the weights under `vb` (e.g. `vb.pp("encoder")` for a VoxTell
    /// checkpoint). Every weight's shape is checked against the plan.
    pub fn load(vb: VarBuilder, kw: &ArchKwargs, input_channels: usize) -> Result<Self> {
        let s = kw.settings()?;
        let f = &kw.features_per_stage;
        let stem_unit = s.unit(arr3(&kw.kernel_sizes[0]), [1, 1, 1]);
        let stem = StackedConvBlocks::load(vb.pp("stem"), 1, input_channels, f[0], stem_unit)?;
        let mut stages = Vec::with_capacity(kw.n_stages);
        let mut c_in = f[0];
        for (st, &c_out) in f.iter().enumerate() {
            let vbs = vb.pp("stages").pp(st).pp("blocks");
            let kernel = arr3(&kw.kernel_sizes[st]);
            let mut blocks = Vec::with_capacity(kw.n_blocks_per_stage[st]);
            for b in 0..kw.n_blocks_per_stage[st] {
                let (ci, stride) = if b == 0 { (c_in, arr3(&kw.strides[st])) } else { (c_out, [1, 1, 1]) };
                blocks.push(BasicBlockD::load(vbs.pp(b), ci, c_out, s.unit(kernel, stride))?);
            }
            stages.push(blocks);
            c_in = c_out;
        }
        Ok(ResidualEncoder {
            stem,
            stages,
            strides: kw.strides.iter().map(|v| arr3(v)).collect(),
            channels: f.clone(),
        })
    }

    /// Run the encoder on `x` (N, C, D, H, W) and return the output of every stage.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut y = self.stem.forward(x.clone())?;
        let mut skips = Vec::with_capacity(self.stages.len());
        for blocks in &self.stages {
            for b in blocks {
                y = y.apply(b)?;
            }
            skips.push(y.clone());
        }
        Ok(skips)
    }

    /// Channels of each stage's output.
    pub fn channels(&self) -> &[usize] {
        &self.channels
    }

    /// Cumulative downsampling factor of each stage's output relative to the input.
    pub fn strides(&self) -> Vec<[usize; 3]> {
        let mut acc = [1, 1, 1];
        self.strides
            .iter()
            .map(|s| {
                for a in 0..3 {
                    acc[a] *= s[a];
                }
                acc
            })
            .collect()
    }
}
