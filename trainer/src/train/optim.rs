//! AdamW (PyTorch's `torch.optim.AdamW` update, decoupled weight decay), the warm-up + cosine
//! learning-rate schedule of transformers' `get_cosine_schedule_with_warmup`, and global-norm
//! gradient clipping (`torch.nn.utils.clip_grad_norm_`). The optimiser state is plain named tensors,
//! so checkpoints can hold it and a resumed run continues exactly.

use tch::{Kind, Tensor};

use crate::model::weights::ParamStore;
use crate::{Error, Result};

/// AdamW hyper-parameters (PyTorch's defaults but for the learning rate).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Exponential decay of the first moment.
    pub beta1: f64,
    /// Exponential decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (multiplies the weights by `1 - lr * weight_decay` each step).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW over the trainable parameters of a [`ParamStore`], by name.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    step: i64,
    /// `(parameter name, exp_avg, exp_avg_sq)`, in store order.
    state: Vec<(String, Tensor, Tensor)>,
}

impl AdamW {
    /// Zero moments for every trainable parameter of `store`.
    pub fn new(store: &ParamStore, cfg: AdamWConfig) -> Self {
        let state = store
            .trainable()
            .map(|p| (p.name.clone(), p.tensor.zeros_like().detach(), p.tensor.zeros_like().detach()))
            .collect();
        Self { cfg, step: 0, state }
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients currently held by the parameters
    /// (parameters without a gradient are skipped, moments and weight decay alike, as in PyTorch).
    ///
    /// # Errors
    /// [`Error::ModelInput`] when the store's trainable parameters changed since construction.
    pub fn step(&mut self, store: &ParamStore, lr: f64) -> Result<()> {
        // Checked before anything moves: a refused step changes no parameter, moment or count.
        let trainable: Vec<_> = store.trainable().collect();
        let mismatch = self
            .state
            .iter()
            .enumerate()
            .find(|(i, (name, _, _))| trainable.get(*i).is_none_or(|p| &p.name != name));
        if let Some((_, (name, _, _))) = mismatch {
            return Err(Error::ModelInput(format!("optimiser state and parameters disagree at {name}")));
        }
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| -> Result<()> {
            for ((_, m, v), p) in self.state.iter_mut().zip(&trainable) {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let mut param = p.tensor.shallow_clone();
                if self.cfg.weight_decay != 0.0 {
                    let _ = param.f_mul_scalar_(1.0 - lr * self.cfg.weight_decay)?;
                }
                let _ = m.f_lerp_(&grad, 1.0 - b1)?;
                let _ = v.f_mul_scalar_(b2)?;
                let _ = v.f_add_(&(&grad * &grad * (1.0 - b2)))?;
                let denom = v.f_sqrt()?.f_div_scalar(bias2_sqrt)?.f_add_scalar(self.cfg.eps)?;
                let _ = param.f_sub_(&(m.f_div(&denom)? * step_size))?;
            }
            Ok(())
        })
    }

    /// The state as named tensors (`{param}.exp_avg`, `{param}.exp_avg_sq`, and `step`), to save.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_owned(), Tensor::from_slice(&[self.step]))];
        for (name, m, v) in &self.state {
            out.push((format!("{name}.exp_avg"), m.shallow_clone()));
            out.push((format!("{name}.exp_avg_sq"), v.shallow_clone()));
        }
        out
    }

    /// Restores a state written by [`Self::state_tensors`].
    ///
    /// # Errors
    /// [`Error::MissingTensor`] / [`Error::TensorShape`] when it does not fit these parameters.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let step = tensors.get("step").ok_or_else(|| Error::MissingTensor { name: "step".into() })?;
        if step.numel() != 1 {
            return Err(Error::TensorShape { name: "step".into(), expected: vec![1], found: step.size() });
        }
        let first_step = step.reshape([1]).f_int64_value(&[0])?;
        tch::no_grad(|| -> Result<()> {
            for (name, m, v) in &mut self.state {
                for (suffix, dst) in [("exp_avg", m), ("exp_avg_sq", v)] {
                    let key = format!("{name}.{suffix}");
                    let src = tensors.get(&key).ok_or_else(|| Error::MissingTensor { name: key.clone() })?;
                    if src.size() != dst.size() {
                        return Err(Error::TensorShape {
                            name: key,
                            expected: dst.size(),
                            found: src.size(),
                        });
                    }
                    dst.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        self.step = first_step;
        Ok(())
    }
}

/// Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then half a cosine down to 0 at
/// `total_steps` (transformers' `get_cosine_schedule_with_warmup`, `num_cycles = 0.5`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Learning rate at the end of the warm-up.
    pub peak_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Steps in all.
    pub total_steps: usize,
}

impl CosineSchedule {
    /// The learning rate of optimisation step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        self.peak_lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping (PyTorch: coefficient `max_norm / (norm + 1e-6)`, clamped to 1).
///
/// # Errors
/// [`Error::NonFinite`] when the norm is NaN or infinite (the gradients are left as they are).
pub fn clip_grad_norm(store: &ParamStore, max_norm: f64) -> Result<f64> {
    let grads: Vec<Tensor> = store.trainable().map(|p| p.tensor.grad()).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if !total.is_finite() {
        return Err(Error::NonFinite(format!("gradient norm {total}")));
    }
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    tch::no_grad(|| {
        for mut g in grads {
            let _ = g.f_mul_scalar_(coef);
        }
    });
    Ok(total)
}
