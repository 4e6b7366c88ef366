//! Fresh weights for a new model, drawn as the official classes initialise them: convolutions
//! and transposed convolutions Kaiming-normal (a = 1e-2) with zero bias, norms weight 1 and bias
//! 0 — except the second norm of every residual block, zeroed — Linear weights uniform in
//! ±1/sqrt(fan_in), attention input projections Xavier-uniform, other biases 0.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};

/// A `VarBuilder` backend that creates every requested tensor with the rules above.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreshWeights;

impl FreshWeights {
    /// A `VarBuilder` handing out fresh weights.
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(FreshWeights), dtype, device.clone())
    }
}

fn uniform(bound: f64, s: Shape, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::rand(-bound, bound, s, dev)
}

impl SimpleBackend for FreshWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let t = match (leaf, dims.len()) {
            ("weight", 5) => {
                let fan_in = (dims[1] * dims[2] * dims[3] * dims[4]) as f64;
                let gain = (2.0 / (1.0 + 1e-4f64)).sqrt();
                Tensor::randn(0.0, gain / fan_in.sqrt(), s, dev)?
            }
            ("weight", 2) => uniform(1.0 / (dims[1] as f64).sqrt(), s, dev)?,
            ("in_proj_weight", 2) => uniform((6.0 / (dims[0] + dims[1]) as f64).sqrt(), s, dev)?,
            ("weight", 1) if name.contains(".conv2.norm.") => Tensor::zeros(s, DType::F64, dev)?,
            ("weight", 1) => Tensor::ones(s, DType::F64, dev)?,
            _ => Tensor::zeros(s, DType::F64, dev)?,
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("fresh weight {name}: the shape must be given")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}
