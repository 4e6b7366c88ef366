//! The training loss: per prompt channel, binary cross-entropy on the logits plus soft Dice on
//! the sigmoid probabilities (nnU-Net's region loss `DC_and_BCE_loss` with
//! `MemoryEfficientSoftDiceLoss(batch_dice=False, do_bg=True, smooth=1e-5)`), summed 1:1, and
//! deep supervision over the decoder's outputs with normalised weights (nnU-Net's
//! `DeepSupervisionWrapper`), the targets downsampled to each output's size by nearest-exact
//! interpolation (batchgeneratorsv2's `DownsampleSegForDSTransform`).
//!
//! Everything is built from differentiable candle ops, so `loss.backward()` reaches the logits.
//! [`dice_bce_loss`] (and so [`deep_supervision_loss`]) works in f64 whatever the logits' dtype;
//! sums over many elements are taken in blocks (a sum of block sums).

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Deep-supervision weights of the paper: `[1, 1/2, 1/4, 1/8, 1/16]` (normalised before use).
pub const DEFAULT_DS_WEIGHTS: [f64; 5] = [1.0, 0.5, 0.25, 0.125, 0.0625];

/// Smoothing term of nnU-Net's soft Dice.
pub const DEFAULT_SMOOTH: f64 = 1e-5;

/// Elements summed directly before the block sums are summed in turn.
const SUM_BLOCK: usize = 64;

/// Settings of the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of each network output, full resolution first (normalised to sum 1 before use;
    /// outputs beyond the list, and outputs of weight 0, are not evaluated).
    pub ds_weights: Vec<f64>,
    /// Smoothing term of the soft Dice.
    pub smooth: f64,
    /// Weight of the binary cross-entropy.
    pub bce_weight: f64,
    /// Weight of the soft Dice loss.
    pub dice_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            ds_weights: DEFAULT_DS_WEIGHTS.to_vec(),
            smooth: DEFAULT_SMOOTH,
            bce_weight: 1.0,
            dice_weight: 1.0,
        }
    }
}

impl LossConfig {
    /// The deep-supervision weights normalised to sum 1.
    pub fn normalised_weights(&self) -> Result<Vec<f64>> {
        normalise_weights(&self.ds_weights)
    }
}

/// `weights / Σ weights`; the weights must be finite, non-negative and not all 0.
pub fn normalise_weights(weights: &[f64]) -> Result<Vec<f64>> {
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(TrainError::Config(format!(
            "deep-supervision weights {weights:?} must be finite and non-negative"
        )));
    }
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return Err(TrainError::Config(format!("deep-supervision weights {weights:?} must not all be 0")));
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

/// Sum over the last axis, in blocks of [`SUM_BLOCK`] elements and then over the block sums
/// (recursively), keeping the axis out: (…, N) → (…).
fn blocked_sum_last(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if n <= SUM_BLOCK {
        return Ok(x.sum(D::Minus1)?);
    }
    let last = x.rank() - 1;
    let blocks = n / SUM_BLOCK;
    let mut dims = x.dims()[..last].to_vec();
    dims.extend([blocks, SUM_BLOCK]);
    let main = x.narrow(last, 0, blocks * SUM_BLOCK)?.reshape(dims)?.sum(D::Minus1)?;
    let partial = if blocks * SUM_BLOCK < n {
        let rest = x.narrow(last, blocks * SUM_BLOCK, n - blocks * SUM_BLOCK)?.sum_keepdim(last)?;
        Tensor::cat(&[&main, &rest], last)?
    } else {
        main
    };
    blocked_sum_last(&partial)
}

/// Sum over the spatial axes of (B, C, D, H, W): (B, C).
fn spatial_sum(x: &Tensor) -> Result<Tensor> {
    let (b, c, d, h, w) = x.dims5()?;
    blocked_sum_last(&x.reshape((b, c, d * h * w))?)
}

/// Mean of every element: a scalar.
fn blocked_mean(x: &Tensor) -> Result<Tensor> {
    let n = x.elem_count();
    Ok((blocked_sum_last(&x.flatten_all()?)? / n as f64)?)
}

fn check_pair(logits: &Tensor, target: &Tensor, what: &str) -> Result<()> {
    if logits.dims() != target.dims() {
        return Err(TrainError::Config(format!(
            "{what}: logits {:?} and target {:?} differ in shape",
            logits.dims(),
            target.dims()
        )));
    }
    if !matches!(logits.dtype(), DType::F32 | DType::F64) {
        return Err(TrainError::Config(format!(
            "{what}: logits must be f32 or f64, not {:?}",
            logits.dtype()
        )));
    }
    Ok(())
}

/// `BCEWithLogitsLoss` (mean over all elements), in the stable form
/// `max(x, 0) − x·t + log(1 + exp(−|x|))`. `target` may be any dtype (0/1 values); it is
/// converted to the logits' dtype. At `x = 0` the gradient is `1/2 − t`, as PyTorch's.
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    check_pair(logits, target, "BCE")?;
    let t = target.to_dtype(logits.dtype())?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_elem = ((logits.relu()? - logits.mul(&t)?)? + softplus_neg_abs)?;
    blocked_mean(&per_elem)
}

/// nnU-Net's `MemoryEfficientSoftDiceLoss` with sigmoid, `batch_dice=False`, `do_bg=True`:
/// per (sample, channel) `dc = (2·Σ p·t + smooth) / max(Σ p + Σ t + smooth, 1e-8)` over the
/// spatial axes with `p = sigmoid(logits)`, and the loss `−mean(dc)`. Shapes (B, C, D, H, W).
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor, smooth: f64) -> Result<Tensor> {
    check_pair(logits, target, "soft Dice")?;
    logits.dims5()?;
    let t = target.to_dtype(logits.dtype())?;
    let p = candle_nn::ops::sigmoid(logits)?;
    let intersect = spatial_sum(&p.mul(&t)?)?;
    let sum_pred = spatial_sum(&p)?;
    let sum_gt = spatial_sum(&t)?;
    let numerator = ((intersect * 2.0)? + smooth)?;
    let denominator = ((sum_gt + sum_pred)? + smooth)?.maximum(1e-8)?;
    let dc = numerator.div(&denominator)?;
    Ok(dc.mean_all()?.neg()?)
}

/// `bce_weight · BCE + dice_weight · soft Dice` for one output (B, C, D, H, W). Computed in f64
/// whatever the logits' dtype (the f32 loss and its gradient then carry no rounding of their
/// own beyond the logits'); the result has the logits' dtype.
pub fn dice_bce_loss(logits: &Tensor, target: &Tensor, config: &LossConfig) -> Result<Tensor> {
    let dt = logits.dtype();
    let logits = &logits.to_dtype(DType::F64)?;
    let mut total: Option<Tensor> = None;
    if config.bce_weight != 0.0 {
        total = Some((bce_with_logits(logits, target)? * config.bce_weight)?);
    }
    if config.dice_weight != 0.0 {
        let dice = (soft_dice_loss(logits, target, config.smooth)? * config.dice_weight)?;
        total = Some(match total {
            Some(t) => (t + dice)?,
            None => dice,
        });
    }
    Ok(total.ok_or_else(|| TrainError::Config("both loss weights are 0".into()))?.to_dtype(dt)?)
}

/// Source index of destination index `dst` for PyTorch's `nearest-exact` interpolation from
/// `input` to `output` entries: `min(floor((dst + 0.5) · input / output), input − 1)`, with the
/// scale in f32 as PyTorch computes it.
pub fn nearest_exact_index(dst: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    let src = ((dst as f64 + 0.5) * f64::from(scale)) as f32;
    (src.floor() as usize).min(input.saturating_sub(1))
}

/// Downsample (or resample) a segmentation (B, C, D, H, W) of any dtype to `size` by
/// nearest-exact interpolation (what `DownsampleSegForDSTransform` does). The same size returns
/// the tensor unchanged.
pub fn resize_nearest_exact(target: &Tensor, size: [usize; 3]) -> Result<Tensor> {
    let dims = target.dims5()?;
    let input = [dims.2, dims.3, dims.4];
    if input == size {
        return Ok(target.clone());
    }
    if size.contains(&0) {
        return Err(TrainError::Config(format!("cannot resize a target to size {size:?}")));
    }
    let mut x = target.clone();
    for axis in 0..3 {
        if input[axis] == size[axis] {
            continue;
        }
        let idx: Vec<u32> =
            (0..size[axis]).map(|d| nearest_exact_index(d, input[axis], size[axis]) as u32).collect();
        let idx = Tensor::new(idx.as_slice(), x.device())?;
        x = x.contiguous()?.index_select(&idx, axis + 2)?;
    }
    Ok(x)
}

/// The target of every output: `target` resized to each output's spatial size.
pub fn deep_supervision_targets(target: &Tensor, outputs: &[Tensor]) -> Result<Vec<Tensor>> {
    outputs
        .iter()
        .map(|o| {
            let (_, _, d, h, w) = o.dims5()?;
            resize_nearest_exact(target, [d, h, w])
        })
        .collect()
}

/// `Σ_i w_i · loss(outputs[i], targets[i])` with the weights of `config` normalised to sum 1,
/// skipping outputs of weight 0 (and beyond the weight list). `targets[i]` must have the shape
/// of `outputs[i]`; see [`deep_supervision_targets`].
pub fn deep_supervision_loss(outputs: &[Tensor], targets: &[Tensor], config: &LossConfig) -> Result<Tensor> {
    let weights = config.normalised_weights()?;
    if weights.len() > outputs.len() {
        return Err(TrainError::Config(format!(
            "{} deep-supervision weights for {} network outputs",
            weights.len(),
            outputs.len()
        )));
    }
    if targets.len() < weights.len() {
        return Err(TrainError::Config(format!(
            "{} targets for {} weighted network outputs",
            targets.len(),
            weights.len()
        )));
    }
    let mut total: Option<Tensor> = None;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let l = (dice_bce_loss(&outputs[i], &targets[i], config)? * w)?;
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
    }
    total.ok_or_else(|| TrainError::Config("no output has a non-zero weight".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nearest_exact_indices() {
        // Halving: centres 0.5·2 = 1, 1.5·2 = 3 → odd source voxels.
        let idx: Vec<usize> = (0..4).map(|d| nearest_exact_index(d, 8, 4)).collect();
        assert_eq!(idx, vec![1, 3, 5, 7]);
        let idx: Vec<usize> = (0..2).map(|d| nearest_exact_index(d, 32, 2)).collect();
        assert_eq!(idx, vec![8, 24]);
        let idx: Vec<usize> = (0..3).map(|d| nearest_exact_index(d, 5, 3)).collect();
        assert_eq!(idx, vec![0, 2, 4]);
        assert_eq!(nearest_exact_index(0, 4, 4), 0);
    }

    #[test]
    fn bce_matches_direct_formula() -> Result<()> {
        let x = Tensor::new(&[-30.0f64, -2.0, -0.1, 0.0, 0.3, 4.0, 40.0], &Device::Cpu)?;
        let t = Tensor::new(&[0u8, 1, 0, 1, 1, 0, 1], &Device::Cpu)?;
        let got = bce_with_logits(&x, &t)?.to_scalar::<f64>()?;
        let xs = x.to_vec1::<f64>()?;
        let ts = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let want: f64 = xs
            .iter()
            .zip(ts)
            .map(|(&x, t)| {
                let p = 1.0 / (1.0 + (-x).exp());
                -(t * p.max(1e-300).ln() + (1.0 - t) * (1.0 - p).max(1e-300).ln())
            })
            .sum::<f64>()
            / 7.0;
        // The direct formula loses precision at |x| = 40; compare loosely there.
        assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn bce_gradient_is_sigmoid_minus_target() -> Result<()> {
        let x = candle_core::Var::new(&[-3.0f64, 0.0, 0.0, 2.5], &Device::Cpu)?;
        let t = Tensor::new(&[0.0f64, 0.0, 1.0, 1.0], &Device::Cpu)?;
        let loss = bce_with_logits(x.as_tensor(), &t)?;
        let g = loss.backward()?.get(x.as_tensor()).cloned().ok_or(TrainError::Config("no grad".into()))?;
        let g = g.to_vec1::<f64>()?;
        for (i, (&xv, tv)) in [-3.0f64, 0.0, 0.0, 2.5].iter().zip([0.0, 0.0, 1.0, 1.0]).enumerate() {
            let want = (1.0 / (1.0 + (-xv).exp()) - tv) / 4.0;
            assert!((g[i] - want).abs() < 1e-15, "{i}: {} vs {want}", g[i]);
        }
        Ok(())
    }

    #[test]
    fn dice_by_hand() -> Result<()> {
        // One sample, two channels, 1×1×2 voxels.
        let x = Tensor::new(&[0.0f64, 2.0, -1.0, 1.0], &Device::Cpu)?.reshape((1, 2, 1, 1, 2))?;
        let t = Tensor::new(&[1u8, 1, 0, 0], &Device::Cpu)?.reshape((1, 2, 1, 1, 2))?;
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let s2 = 1e-5;
        let dc0 = (2.0 * (s(0.0) + s(2.0)) + s2) / (s(0.0) + s(2.0) + 2.0 + s2);
        let dc1 = s2 / (s(-1.0) + s(1.0) + s2);
        let want = -(dc0 + dc1) / 2.0;
        let got = soft_dice_loss(&x, &t, s2)?.to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn blocked_sum_is_a_sum() -> Result<()> {
        let v: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let t = Tensor::new(v.as_slice(), &Device::Cpu)?.reshape((2, 500))?;
        let got = blocked_sum_last(&t)?.to_vec1::<f64>()?;
        let want: Vec<f64> = v.chunks(500).map(|c| c.iter().sum()).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn weights_normalise() -> Result<()> {
        let w = normalise_weights(&DEFAULT_DS_WEIGHTS)?;
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!((w[0] - 16.0 / 31.0).abs() < 1e-15);
        assert!(normalise_weights(&[0.0, 0.0]).is_err());
        assert!(normalise_weights(&[1.0, -1.0]).is_err());
        Ok(())
    }
}
