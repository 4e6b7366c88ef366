//! Fresh weights for a new model, drawn as the official classes initialise them: convolutions
//! and transposed convolutions Kaiming-normal (a = 1e-2) with zero bias, norms weight 1 and bias
//! 0 — except the second norm of every residual block, zeroed — Linear weights and biases uniform
//! in ±1/sqrt(fan_in) (PyTorch's defaults), attention input projections Xavier-uniform, the
//! attention biases (`in_proj_bias`, `out_proj.bias`) and all other biases 0.
//!
//! The draws are reproducible: each tensor's values come from a generator seeded by the run's
//! seed and the tensor's name (SplitMix64, Box–Muller for normals), so the same seed gives the
//! same weights whatever order the tensors are created in.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};

/// A `VarBuilder` backend that creates every requested tensor with the rules above.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreshWeights {
    /// Seed of the draws.
    pub seed: u64,
}

impl FreshWeights {
    /// A `VarBuilder` handing out fresh weights drawn with seed 0.
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        Self::seeded(0).into_var_builder(dtype, device)
    }

    /// Fresh weights drawn with `seed`.
    pub fn seeded(seed: u64) -> Self {
        FreshWeights { seed }
    }

    /// A `VarBuilder` handing out these weights.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// The generator of one tensor: the seed mixed with the name's FNV-1a hash.
    fn stream(&self, name: &str) -> SplitMix {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut g = SplitMix(self.seed ^ h.rotate_left(17));
        g.next();
        g
    }

    fn uniform(&self, name: &str, lo: f64, hi: f64, s: Shape, dev: &Device) -> candle_core::Result<Tensor> {
        let mut g = self.stream(name);
        let v: Vec<f64> = (0..s.elem_count()).map(|_| lo + (hi - lo) * g.unit()).collect();
        Tensor::from_vec(v, s, dev)
    }

    fn normal(&self, name: &str, std: f64, s: Shape, dev: &Device) -> candle_core::Result<Tensor> {
        let mut g = self.stream(name);
        let n = s.elem_count();
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            // Box–Muller: two normals from two uniforms in (0, 1].
            let (u1, u2) = (1.0 - g.unit(), g.unit());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            v.push(std * r * t.cos());
            v.push(std * r * t.sin());
        }
        v.truncate(n);
        Tensor::from_vec(v, s, dev)
    }
}

/// SplitMix64 (Steele, Lea and Flood): small, fast, and good enough for initial weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl SimpleBackend for FreshWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let t = match (leaf, dims.len()) {
            ("weight", 5) => {
                let fan_in = (dims[1] * dims[2] * dims[3] * dims[4]) as f64;
                let gain = (2.0 / (1.0 + 1e-4f64)).sqrt();
                self.normal(name, gain / fan_in.sqrt(), s, dev)?
            }
            ("weight", 2) => {
                let b = 1.0 / (dims[1] as f64).sqrt();
                self.uniform(name, -b, b, s, dev)?
            }
            ("in_proj_weight", 2) => {
                let b = (6.0 / (dims[0] + dims[1]) as f64).sqrt();
                self.uniform(name, -b, b, s, dev)?
            }
            ("weight", 1) if name.contains(".conv2.norm.") => Tensor::zeros(s, DType::F64, dev)?,
            ("weight", 1) => Tensor::ones(s, DType::F64, dev)?,
            // A Linear bias (candle_nn::linear asks with PyTorch's bound ±1/sqrt(fan_in)); the
            // attention's output projection bias is zeroed by nn.MultiheadAttention.
            ("bias", 1) if !name.ends_with("out_proj.bias") => match hint {
                Init::Uniform { lo, up } => self.uniform(name, lo, up, s, dev)?,
                _ => Tensor::zeros(s, DType::F64, dev)?,
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_weights_in_any_order() {
        let a = FreshWeights::seeded(7);
        let b = FreshWeights::seeded(7);
        let c = FreshWeights::seeded(8);
        let get = |f: &FreshWeights, n: &str| {
            f.get(Shape::from((4, 2, 3, 3, 3)), n, Init::Const(0.0), DType::F64, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let x1 = get(&a, "encoder.stem.convs.0.conv.weight");
        let _ = get(&b, "something.else.weight");
        let x2 = get(&b, "encoder.stem.convs.0.conv.weight");
        assert_eq!(x1, x2);
        assert_ne!(x1, get(&c, "encoder.stem.convs.0.conv.weight"));
        assert_ne!(x1, get(&a, "encoder.stem.convs.1.conv.weight"));
        // Kaiming normal: std = sqrt(2 / (1 + 1e-4)) / sqrt(fan_in), fan_in = 54.
        let big = a
            .get(Shape::from((64, 6, 3, 3, 3)), "w.weight", Init::Const(0.0), DType::F64, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = big.len() as f64;
        let mean = big.iter().sum::<f64>() / n;
        let std = (big.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = (2.0f64 / 1.0001).sqrt() / 162f64.sqrt();
        assert!(mean.abs() < 0.01 && (std / want - 1.0).abs() < 0.05, "{mean} {std} {want}");
    }
}
