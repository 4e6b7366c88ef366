//! Gradient clipping, SGD and AdamW as PyTorch does them.
//!
//! - [`clip_grad_norm`]: `torch.nn.utils.clip_grad_norm_` — the total L2 norm over all
//!   gradients, and every gradient scaled by `max_norm / (norm + 1e-6)` when that is below 1.
//! - [`Sgd`]: `torch.optim.SGD(momentum, nesterov, weight_decay, dampening=0)`. For each
//!   parameter that has a gradient: `g += wd·w`; the momentum buffer is `g` on the first step and
//!   `μ·buf + g` after; the step direction is `g + μ·buf` (Nesterov) or `buf`; `w −= lr·d`.
//!   Parameters without a gradient are skipped entirely (no decay, no buffer), as PyTorch skips
//!   parameters whose `grad` is `None`.
//! - [`AdamW`]: `torch.optim.AdamW(betas, eps, weight_decay, amsgrad=False)`. For each parameter
//!   that has a gradient, with its own step count `t`: `w −= lr·wd·w` (decoupled decay);
//!   `m = β1·m + (1−β1)·g`; `v = β2·v + (1−β2)·g²`;
//!   `w −= (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)`. Parameters without a gradient are
//!   skipped, as with SGD.
//! - [`Optimizer`]: either of the two, chosen by [`OptimizerConfig`].
//!
//! Gradients are passed by parameter name ([`Gradients`]), so that they can be averaged across
//! workers between the backward pass and the update.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Gradients by parameter name (the checkpoint key), in key order.
pub type Gradients = BTreeMap<String, Tensor>;

/// Added to the norm before dividing, as PyTorch's `clip_grad_norm_`.
const CLIP_EPS: f64 = 1e-6;

/// The total L2 norm of all gradients, `sqrt(Σ_tensors Σ g²)`, accumulated in f64.
pub fn global_grad_norm(grads: &Gradients) -> Result<f64> {
    let mut sum = 0.0f64;
    for g in grads.values() {
        let sq = g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        sum += sq;
    }
    Ok(sum.sqrt())
}

/// Clip the gradients in place to a total L2 norm of at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`): with `scale = max_norm / (norm + 1e-6)`, every gradient is
/// multiplied by `scale` if `scale < 1`. Returns the norm before clipping. A non-finite norm
/// leaves the gradients untouched (the caller decides what to do with the step).
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let scale = max_norm / (norm + CLIP_EPS);
    if scale < 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// Settings of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum `μ` (0 turns momentum off).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// nnU-Net's: momentum 0.99, Nesterov, weight decay 3e-5.
    fn default() -> Self {
        SgdConfig { momentum: 0.99, nesterov: true, weight_decay: 3e-5 }
    }
}

/// A gradient must have its weight's shape.
fn check_shapes(weight: &Tensor, grad: &Tensor) -> Result<()> {
    if weight.dims() != grad.dims() {
        return Err(TrainError::Config(format!(
            "gradient of shape {:?} for a weight of shape {:?}",
            grad.dims(),
            weight.dims()
        )));
    }
    Ok(())
}

/// Every gradient must belong to a parameter (checked before anything is updated).
fn check_names(params: &HashMap<String, Var>, grads: &Gradients) -> Result<()> {
    match grads.keys().find(|k| !params.contains_key(*k)) {
        Some(name) => Err(TrainError::Config(format!("gradient for {name}, which is not a parameter"))),
        None => Ok(()),
    }
}

/// The update both optimisers make: every gradient's name is checked first (nothing is updated
/// when one is not a parameter's), then `update(name, parameter, gradient)` runs for each
/// gradient in key order.
fn update_each(
    params: &HashMap<String, Var>,
    grads: &Gradients,
    mut update: impl FnMut(&String, &Var, &Tensor) -> Result<()>,
) -> Result<()> {
    check_names(params, grads)?;
    for (name, grad) in grads {
        update(name, &params[name], grad)?;
    }
    Ok(())
}

/// Write an optimiser state to a safetensors file, atomically
/// ([`voxtell_fusion::checkpoint::write_tensors`]), replacing an existing file.
fn save_state(state: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    Ok(voxtell_fusion::checkpoint::write_tensors(state, path, true)?)
}

/// Read an optimiser state written by [`save_state`].
fn read_state(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| TrainError::file(path, e))
}

/// One SGD update of a single tensor: returns the new weight and the new momentum buffer
/// (`None` without momentum). `buffer` is the previous buffer, `None` on the first step. The
/// arithmetic is done in f64 and rounded once to the weight's dtype (PyTorch rounds after every
/// operation in f32; for f64 weights the two are the same), so f32 weights follow the f64
/// trajectory as closely as f32 allows; the buffer is kept in the weight's dtype.
pub fn sgd_update(
    weight: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    config: &SgdConfig,
    lr: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    check_shapes(weight, grad)?;
    // In f64, rounded once to the weight's dtype at the end.
    let dtype = weight.dtype();
    let w = weight.to_dtype(DType::F64)?;
    let grad = grad.to_dtype(DType::F64)?;
    let mut d = if config.weight_decay != 0.0 { (&grad + (&w * config.weight_decay)?)? } else { grad };
    let mut new_buffer = None;
    if config.momentum != 0.0 {
        let buf = match buffer {
            None => d.copy()?,
            Some(b) => ((b.to_dtype(DType::F64)? * config.momentum)? + &d)?,
        };
        d = if config.nesterov { (&d + (&buf * config.momentum)?)? } else { buf.clone() };
        // Detached: a gradient carries the graph it came from, and a buffer that kept it would
        // hold every earlier step's activations alive through the chain of buffers.
        new_buffer = Some(buf.to_dtype(dtype)?.detach());
    }
    let new_weight = (w - (d * lr)?)?.to_dtype(dtype)?.detach();
    Ok((new_weight, new_buffer))
}

/// Stochastic gradient descent with momentum, Nesterov and weight decay, as `torch.optim.SGD`.
#[derive(Debug, Clone)]
pub struct Sgd {
    config: SgdConfig,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// A fresh optimiser (no momentum buffers yet).
    pub fn new(config: SgdConfig) -> Self {
        Sgd { config, buffers: BTreeMap::new() }
    }

    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// Change the settings (the momentum buffers are kept).
    pub fn set_config(&mut self, config: SgdConfig) {
        self.config = config;
    }

    /// Update every parameter of `params` that has a gradient in `grads` with learning rate
    /// `lr`; the others are left alone. A gradient for a name that is not a parameter is an
    /// error, and nothing is updated then.
    pub fn step(&mut self, params: &HashMap<String, Var>, grads: &Gradients, lr: f64) -> Result<()> {
        update_each(params, grads, |name, var, grad| {
            let (new_weight, new_buffer) =
                sgd_update(var.as_tensor(), grad, self.buffers.get(name), &self.config, lr)?;
            var.set(&new_weight)?;
            if let Some(b) = new_buffer {
                self.buffers.insert(name.clone(), b);
            }
            Ok(())
        })
    }

    /// The momentum buffers by parameter name (parameters that never had a gradient have none).
    pub fn momentum_buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// The state to save for resuming: the momentum buffers by parameter name.
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        self.buffers.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Restore the momentum buffers saved by [`Sgd::state_dict`], converted to `dtype` and moved
    /// to `device`. Existing buffers are replaced.
    pub fn load_state_dict(
        &mut self,
        state: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let mut buffers = BTreeMap::new();
        for (k, v) in state {
            buffers.insert(k, v.to_dtype(dtype)?.to_device(device)?);
        }
        self.buffers = buffers;
        Ok(())
    }

    /// Write the momentum buffers to a safetensors file, atomically, replacing an existing file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_state(&self.state_dict(), path.as_ref())
    }

    /// Read momentum buffers written by [`Sgd::save`].
    pub fn load(&mut self, path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<()> {
        let path = path.as_ref();
        let state = read_state(path)?;
        self.load_state_dict(state, dtype, device)
    }
}

/// Settings of [`AdamW`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moment estimates.
    pub betas: [f64; 2],
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (`w −= lr·wd·w` before the Adam step).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's: betas (0.9, 0.999), eps 1e-8, weight decay 1e-2.
    fn default() -> Self {
        AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// The moment estimates of one parameter.
#[derive(Debug, Clone)]
struct Moments {
    /// First moment `m`.
    exp_avg: Tensor,
    /// Second moment `v`.
    exp_avg_sq: Tensor,
    /// Steps this parameter has taken.
    step: u64,
}

/// One AdamW update of a single tensor: returns the new weight and moments. Computed in f64
/// and rounded once to the weight's dtype (moments are kept in the weight's dtype).
fn adamw_update(
    weight: &Tensor,
    grad: &Tensor,
    moments: Option<&Moments>,
    config: &AdamWConfig,
    lr: f64,
) -> Result<(Tensor, Moments)> {
    check_shapes(weight, grad)?;
    let dtype = weight.dtype();
    let [b1, b2] = config.betas;
    let mut w = weight.to_dtype(DType::F64)?;
    let g = grad.to_dtype(DType::F64)?;
    if config.weight_decay != 0.0 {
        w = (&w * (1.0 - lr * config.weight_decay))?;
    }
    let (m, v, step) = match moments {
        None => ((&g * (1.0 - b1))?, (g.sqr()? * (1.0 - b2))?, 1),
        Some(s) => (
            ((s.exp_avg.to_dtype(DType::F64)? * b1)? + (&g * (1.0 - b1))?)?,
            ((s.exp_avg_sq.to_dtype(DType::F64)? * b2)? + (g.sqr()? * (1.0 - b2))?)?,
            s.step + 1,
        ),
    };
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let correction1 = 1.0 - b1.powi(t);
    let correction2 = 1.0 - b2.powi(t);
    let denom = ((v.sqrt()? / correction2.sqrt())? + config.eps)?;
    let new_weight = (w - (m.div(&denom)? * (lr / correction1))?)?.to_dtype(dtype)?.detach();
    let moments =
        Moments { exp_avg: m.to_dtype(dtype)?.detach(), exp_avg_sq: v.to_dtype(dtype)?.detach(), step };
    Ok((new_weight, moments))
}

/// AdamW with decoupled weight decay, as `torch.optim.AdamW` (no AMSGrad).
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimiser (no moments yet).
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, moments: BTreeMap::new() }
    }

    /// The settings.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Update every parameter of `params` that has a gradient in `grads` with learning rate
    /// `lr`; the others are left alone. A gradient for a name that is not a parameter is an
    /// error, and nothing is updated then.
    pub fn step(&mut self, params: &HashMap<String, Var>, grads: &Gradients, lr: f64) -> Result<()> {
        update_each(params, grads, |name, var, grad| {
            let (w, m) = adamw_update(var.as_tensor(), grad, self.moments.get(name), &self.config, lr)?;
            var.set(&w)?;
            self.moments.insert(name.clone(), m);
            Ok(())
        })
    }

    /// The first moments by parameter name.
    pub fn first_moments(&self) -> BTreeMap<String, Tensor> {
        self.moments.iter().map(|(k, m)| (k.clone(), m.exp_avg.clone())).collect()
    }

    /// The state to save: `exp_avg.{name}`, `exp_avg_sq.{name}` and `step.{name}` (the step
    /// count as a one-element f64 tensor).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, m) in &self.moments {
            out.insert(format!("exp_avg.{k}"), m.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{k}"), m.exp_avg_sq.clone());
            out.insert(format!("step.{k}"), Tensor::new(&[m.step as f64], &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restore the state saved by [`AdamW::state_dict`], moments converted to `dtype` and moved
    /// to `device`. A parameter with only part of its state is an error.
    pub fn load_state_dict(
        &mut self,
        state: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let mut moments = BTreeMap::new();
        for (key, step) in &state {
            let Some(name) = key.strip_prefix("step.") else { continue };
            let missing = |what: &str| {
                TrainError::Config(format!("AdamW state of {name} has a step count but no {what}"))
            };
            let get = |what: &str| -> Result<Tensor> {
                Ok(state
                    .get(&format!("{what}.{name}"))
                    .ok_or_else(|| missing(what))?
                    .to_dtype(dtype)?
                    .to_device(device)?)
            };
            let count = step.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let step = match count.as_slice() {
                [c] if *c >= 1.0 && c.fract() == 0.0 => *c as u64,
                _ => return Err(TrainError::Config(format!("AdamW step count of {name} is {count:?}"))),
            };
            moments.insert(
                name.to_string(),
                Moments { exp_avg: get("exp_avg")?, exp_avg_sq: get("exp_avg_sq")?, step },
            );
        }
        if let Some(k) = state.keys().find(|k| {
            let name = ["exp_avg.", "exp_avg_sq.", "step."].iter().find_map(|p| k.strip_prefix(p));
            name.is_none_or(|n| !moments.contains_key(n))
        }) {
            return Err(TrainError::Config(format!(
                "AdamW state entry {k} does not belong to a parameter's state"
            )));
        }
        self.moments = moments;
        Ok(())
    }
}

/// Which optimiser, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// [`Sgd`].
    Sgd(SgdConfig),
    /// [`AdamW`].
    AdamW(AdamWConfig),
}

impl Default for OptimizerConfig {
    /// nnU-Net's SGD.
    fn default() -> Self {
        OptimizerConfig::Sgd(SgdConfig::default())
    }
}

/// SGD or AdamW behind one interface.
#[derive(Debug, Clone)]
pub enum Optimizer {
    /// Stochastic gradient descent.
    Sgd(Sgd),
    /// AdamW.
    AdamW(AdamW),
}

impl Optimizer {
    /// A fresh optimiser of the configured kind.
    pub fn new(config: OptimizerConfig) -> Self {
        match config {
            OptimizerConfig::Sgd(c) => Optimizer::Sgd(Sgd::new(c)),
            OptimizerConfig::AdamW(c) => Optimizer::AdamW(AdamW::new(c)),
        }
    }

    /// The settings.
    pub fn config(&self) -> OptimizerConfig {
        match self {
            Optimizer::Sgd(o) => OptimizerConfig::Sgd(*o.config()),
            Optimizer::AdamW(o) => OptimizerConfig::AdamW(*o.config()),
        }
    }

    /// Change the settings. The state is kept when the kind stays the same and dropped when
    /// it changes.
    pub fn set_config(&mut self, config: OptimizerConfig) {
        match (&mut *self, config) {
            (Optimizer::Sgd(o), OptimizerConfig::Sgd(c)) => o.set_config(c),
            (Optimizer::AdamW(o), OptimizerConfig::AdamW(c)) => o.config = c,
            (_, c) => *self = Optimizer::new(c),
        }
    }

    /// One update; see [`Sgd::step`] and [`AdamW::step`].
    pub fn step(&mut self, params: &HashMap<String, Var>, grads: &Gradients, lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.step(params, grads, lr),
            Optimizer::AdamW(o) => o.step(params, grads, lr),
        }
    }

    /// The momentum buffers (SGD) or first moments (AdamW) by parameter name.
    pub fn momentum_buffers(&self) -> BTreeMap<String, Tensor> {
        match self {
            Optimizer::Sgd(o) => o.momentum_buffers().clone(),
            Optimizer::AdamW(o) => o.first_moments(),
        }
    }

    /// Every state tensor, by name (for saving).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        match self {
            Optimizer::Sgd(o) => Ok(o.state_dict()),
            Optimizer::AdamW(o) => o.state_dict(),
        }
    }

    /// Restore a state saved by [`Optimizer::state_dict`] of the same kind.
    pub fn load_state_dict(
        &mut self,
        state: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.load_state_dict(state, dtype, device),
            Optimizer::AdamW(o) => o.load_state_dict(state, dtype, device),
        }
    }

    /// Write the state to a safetensors file, atomically, replacing an existing file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_state(&self.state_dict()?, path.as_ref())
    }

    /// Read a state written by [`Optimizer::save`].
    pub fn load(&mut self, path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<()> {
        let path = path.as_ref();
        let state = read_state(path)?;
        self.load_state_dict(state, dtype, device).map_err(|e| TrainError::file(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_matches_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f64, -2.0], &dev)?;
        let params: HashMap<String, Var> = [("w".to_string(), w.clone())].into();
        let cfg = SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 0.1 };
        let mut opt = Sgd::new(cfg);
        let g1 = Tensor::new(&[0.5f64, 0.25], &dev)?;
        let grads: Gradients = [("w".to_string(), g1)].into();
        opt.step(&params, &grads, 0.1)?;
        // d = g + 0.1 w = [0.6, 0.05]; buf = d; nesterov: d + 0.9 buf = 1.9 d.
        let w1 = [1.0 - 0.1 * 1.9 * 0.6, -2.0 - 0.1 * 1.9 * 0.05];
        close(&w.as_tensor().to_vec1::<f64>()?, &w1, 1e-15);
        opt.step(&params, &grads, 0.1)?;
        let d2 = [0.5 + 0.1 * w1[0], 0.25 + 0.1 * w1[1]];
        let buf2 = [0.9 * 0.6 + d2[0], 0.9 * 0.05 + d2[1]];
        let w2 = [w1[0] - 0.1 * (d2[0] + 0.9 * buf2[0]), w1[1] - 0.1 * (d2[1] + 0.9 * buf2[1])];
        close(&w.as_tensor().to_vec1::<f64>()?, &w2, 1e-15);
        close(&opt.momentum_buffers()["w"].to_vec1::<f64>()?, &buf2, 1e-15);
        Ok(())
    }

    #[test]
    fn plain_momentum_and_skipped_params() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f64], &dev)?;
        let b = Var::new(&[3.0f64], &dev)?;
        let params: HashMap<String, Var> =
            [("a".to_string(), a.clone()), ("b".to_string(), b.clone())].into();
        let mut opt = Sgd::new(SgdConfig { momentum: 0.5, nesterov: false, weight_decay: 0.0 });
        let grads: Gradients = [("a".to_string(), Tensor::new(&[2.0f64], &dev)?)].into();
        opt.step(&params, &grads, 1.0)?;
        opt.step(&params, &grads, 1.0)?;
        // buf: 2, then 0.5·2 + 2 = 3; w: 1 − 2 − 3 = −4.
        assert_eq!(a.as_tensor().to_vec1::<f64>()?, vec![-4.0]);
        assert_eq!(b.as_tensor().to_vec1::<f64>()?, vec![3.0]);
        assert!(!opt.momentum_buffers().contains_key("b"));
        let bad: Gradients = [("c".to_string(), Tensor::new(&[1.0f64], &dev)?)].into();
        assert!(opt.step(&params, &bad, 1.0).is_err());
        Ok(())
    }

    #[test]
    fn clipping() -> Result<()> {
        let dev = Device::Cpu;
        let mut grads: Gradients = [
            ("a".to_string(), Tensor::new(&[3.0f64], &dev)?),
            ("b".to_string(), Tensor::new(&[0.0f64, 4.0], &dev)?),
        ]
        .into();
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert_eq!(norm, 5.0);
        let s = 1.0 / (5.0 + 1e-6);
        close(&grads["a"].to_vec1::<f64>()?, &[3.0 * s], 1e-15);
        close(&grads["b"].to_vec1::<f64>()?, &[0.0, 4.0 * s], 1e-15);
        // Below the limit: untouched.
        let norm = clip_grad_norm(&mut grads, 12.0)?;
        assert!((norm - 5.0 * s).abs() < 1e-15);
        close(&grads["a"].to_vec1::<f64>()?, &[3.0 * s], 0.0);
        Ok(())
    }

    #[test]
    fn state_round_trip() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f32, 2.0], &dev)?;
        let params: HashMap<String, Var> = [("a".to_string(), a)].into();
        let mut opt = Sgd::new(SgdConfig::default());
        let grads: Gradients = [("a".to_string(), Tensor::new(&[0.5f32, -0.5], &dev)?)].into();
        opt.step(&params, &grads, 0.01)?;
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tempdir", e))?;
        let path = dir.path().join("optim.safetensors");
        opt.save(&path)?;
        let mut other = Sgd::new(SgdConfig::default());
        other.load(&path, DType::F32, &dev)?;
        assert_eq!(
            other.momentum_buffers()["a"].to_vec1::<f32>()?,
            opt.momentum_buffers()["a"].to_vec1::<f32>()?
        );
        Ok(())
    }
}
