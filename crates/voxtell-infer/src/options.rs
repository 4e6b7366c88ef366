//! The settings of a prediction ([`PredictOptions`]). A leaf: the memory plan reads its budget
//! from them, the predictor and the batch runner take them.

use voxtell_vision::ops::ConvPrecision;

use crate::sliding::Accumulate;

/// Settings of a prediction.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Tile step as a fraction of the patch (0.5 officially: tiles overlap by half).
    pub step_size: f64,
    /// Accumulator precision ([`Accumulate::F16`] reproduces the official numerics).
    pub accumulate: Accumulate,
    /// Memory the prediction's working set may use (accumulators, network activations,
    /// outputs; not the model weights), in bytes. `None`: 80 % of the memory available when the
    /// prediction starts. This is host memory; on a GPU the activations live in device memory,
    /// which this budget does not see.
    pub max_memory: Option<u64>,
    /// Keep the blended logits in the result ([`Masks::logits`], [`Masks::probabilities`]).
    pub keep_logits: bool,
    /// Arithmetic of the network's stride-1 convolutions on the CPU: f32 (the default, the
    /// official numerics) or bf16 products with f32 sums where the CPU has AVX-512 BF16
    /// (faster; masks agree with f32 on most but not all voxels — docs/performance.md). Other
    /// devices ignore it.
    pub precision: ConvPrecision,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            step_size: 0.5,
            accumulate: Accumulate::F16,
            max_memory: None,
            keep_logits: false,
            precision: ConvPrecision::F32,
        }
    }
}
