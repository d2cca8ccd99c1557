//! AdamW with torch semantics, the linear warmup + decay schedule of Hugging Face's
//! `get_linear_schedule_with_warmup`, and gradient-norm clipping as `clip_grad_norm_`.

use anyhow::{bail, Result};

use crate::backend::{AdamWStep, Backend};
use crate::model::classify::Param;

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// parameters whose name contains one of these get no weight decay
    pub no_decay: Vec<String>,
    /// clip the global gradient norm to this (none when `None`)
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            no_decay: vec!["bias".into(), "LayerNorm.weight".into()],
            max_grad_norm: Some(1.0),
        }
    }
}

/// Learning-rate factor at optimizer step `step` (0-based): linear warmup from 0 over `warmup`
/// steps, then linear decay to 0 at `total`.
pub fn linear_schedule(step: u64, warmup: u64, total: u64) -> f32 {
    if step < warmup {
        return step as f32 / warmup.max(1) as f32;
    }
    ((total.saturating_sub(step)) as f32 / total.saturating_sub(warmup).max(1) as f32).max(0.0)
}

/// AdamW moments of every parameter, and the step count.
pub struct AdamW<A> {
    pub cfg: AdamWConfig,
    m: Vec<A>,
    v: Vec<A>,
    /// optimizer steps taken
    pub step: u64,
}

/// What one optimizer step saw.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// global gradient norm before clipping
    pub grad_norm: f32,
    pub lr: f32,
}

impl<A> AdamW<A> {
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW { cfg, m: vec![], v: vec![], step: 0 }
    }

    /// Updates every parameter from its gradient with learning rate `lr`.
    pub fn update<B: Backend<Act = A>>(
        &mut self,
        be: &B,
        params: Vec<Param<'_, B>>,
        lr: f32,
    ) -> Result<StepStats> {
        self.update_scaled(be, params, lr, 1.0)
    }

    /// [`AdamW::update`] with the gradient buffers holding `1/mult` times the gradient (FreeLB
    /// sums K passes: `mult = 1/K`); clipping sees the scaled gradient.
    pub fn update_scaled<B: Backend<Act = A>>(
        &mut self,
        be: &B,
        params: Vec<Param<'_, B>>,
        lr: f32,
        mult: f32,
    ) -> Result<StepStats> {
        let _range = crate::profile::range("optimizer");
        if self.m.is_empty() {
            for p in &params {
                self.m.push(be.zeros_like(p.weight)?);
                self.v.push(be.zeros_like(p.weight)?);
            }
        }
        if self.m.len() != params.len() {
            bail!("optimizer state has {} tensors, the model {}", self.m.len(), params.len());
        }
        let mut sq = 0.0f64;
        for p in &params {
            sq += be.sum_squares(p.grad)?;
        }
        let grad_norm = sq.sqrt() as f32 * mult;
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm}");
        }
        let grad_scale = mult
            * match self.cfg.max_grad_norm {
                Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
                None => 1.0,
            };
        self.step += 1;
        for ((p, m), v) in params.into_iter().zip(&mut self.m).zip(&mut self.v) {
            let decay = !self.cfg.no_decay.iter().any(|s| p.name.contains(s.as_str()));
            let h = AdamWStep {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay: if decay { self.cfg.weight_decay } else { 0.0 },
                step: self.step,
                grad_scale,
            };
            be.adamw(p.weight, p.grad, m, v, &h)?;
        }
        Ok(StepStats { grad_norm, lr })
    }

    /// The moments, in parameter order (for checkpoints).
    pub fn moments(&self) -> (&[A], &[A]) {
        (&self.m, &self.v)
    }

    /// Restores moments saved by a checkpoint.
    pub fn restore(&mut self, m: Vec<A>, v: Vec<A>, step: u64) {
        self.m = m;
        self.v = v;
        self.step = step;
    }
}
