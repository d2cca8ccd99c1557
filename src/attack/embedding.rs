//! Embedding-space attacks (white-box, continuous): FGSM / FGM, K-step PGD with an L2 or L∞ ball
//! per sequence, and FreeLB's accumulation of parameter gradients over the ascent for training.
//!
//! The perturbation δ acts on the word-embedding rows of the valid positions (pads stay zero), in
//! evaluation mode (no dropout) for attacks; δ lives on the backend in [`Backend::zeros`]'
//! precision (f32 on every backend) and each step is one [`Backend::pgd_step`].

use anyhow::{ensure, Context, Result};

use crate::backend::TokenBatch;
use crate::backend::{Backend, Norm, PgdStep};
use crate::model::bert::DropoutPlan;
use crate::model::classify::Model;
use crate::rng::Rng;

/// A projected gradient ascent on the word embeddings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pgd {
    pub norm: Norm,
    /// ball radius ε
    pub eps: f32,
    /// step size α
    pub alpha: f32,
    /// ascent steps K
    pub steps: usize,
    /// δ⁰ drawn from the ball (else δ⁰ = 0)
    pub random_start: bool,
}

impl Pgd {
    /// FGSM (L∞) or FGM (L2): one step of size ε from δ = 0.
    pub fn fgsm(norm: Norm, eps: f32) -> Pgd {
        Pgd { norm, eps, alpha: eps, steps: 1, random_start: false }
    }

    fn step(&self) -> PgdStep {
        PgdStep { norm: self.norm, alpha: self.alpha, eps: self.eps }
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.eps.is_finite() && self.eps > 0.0,
            "the attack radius ε must be positive (got {})",
            self.eps
        );
        ensure!(
            self.alpha.is_finite() && self.alpha > 0.0,
            "the step size α must be positive (got {})",
            self.alpha
        );
        ensure!(self.steps >= 1, "an embedding attack needs at least one step");
        Ok(())
    }
}

/// δ⁰ on the host, `[B*S, H]`: zero, or drawn from the ball on valid rows — L∞: `U(−ε, ε)` per
/// element; L2: a uniform direction with radius `ε·u^{1/d}` (`d` = perturbed values of the row).
pub fn start(batch: &TokenBatch, h: usize, cfg: &Pgd, rng: &mut Rng) -> Vec<f32> {
    let mut d = vec![0f32; batch.tokens() * h];
    if !cfg.random_start {
        return d;
    }
    for (b, &len) in batch.lens.iter().enumerate() {
        let row = &mut d[b * batch.seq * h..(b * batch.seq + len) * h];
        match cfg.norm {
            Norm::Linf => {
                row.iter_mut().for_each(|x| *x = ((2.0 * rng.uniform() - 1.0) * cfg.eps as f64) as f32)
            }
            Norm::L2 => {
                let g: Vec<f64> = (0..row.len()).map(|_| rng.normal()).collect();
                let n = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-30);
                let r = cfg.eps as f64 * rng.uniform().powf(1.0 / row.len().max(1) as f64);
                row.iter_mut().zip(&g).for_each(|(x, g)| *x = (g / n * r) as f32);
            }
        }
    }
    d
}

/// ‖δ_b‖ of every sequence in `norm`, over its valid rows.
pub fn norms(delta: &[f32], batch: &TokenBatch, h: usize, norm: Norm) -> Vec<f32> {
    batch
        .lens
        .iter()
        .enumerate()
        .map(|(b, &len)| {
            let row = &delta[b * batch.seq * h..(b * batch.seq + len) * h];
            match norm {
                Norm::Linf => row.iter().fold(0f32, |m, x| m.max(x.abs())),
                Norm::L2 => row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32,
            }
        })
        .collect()
}

/// The result of an embedding attack on a batch.
pub struct Perturbed<A> {
    pub delta: A,
    /// logits at `e + δᴷ`, `[B][labels]`
    pub logits: Vec<Vec<f32>>,
}

/// PGD (or FGSM with [`Pgd::fgsm`]) on a batch against its gold `labels`: K gradient passes and a
/// final forward at `e + δᴷ`.
pub fn pgd<B: Backend>(
    be: &B,
    model: &Model<B>,
    batch: &TokenBatch,
    labels: &[u32],
    cfg: &Pgd,
    rng: &mut Rng,
) -> Result<Perturbed<B::Act>> {
    cfg.check()?;
    let h = model.bert.cfg.hidden_size;
    let mut delta = be.upload_state(batch.tokens(), h, &start(batch, h, cfg, rng))?;
    for k in 0..cfg.steps {
        let _range = crate::profile::range("attack step: pgd");
        let out =
            model.input_gradient(be, batch, labels, Some(&delta)).with_context(|| format!("PGD step {k}"))?;
        let g = out.input_grad.context("no input gradient")?;
        be.pgd_step(&mut delta, &g, &batch.lens, batch.seq, &cfg.step())?;
    }
    let (_, cols, logits) = be.download(&model.logits_perturbed(be, batch, Some(&delta))?)?;
    Ok(Perturbed { delta, logits: logits.chunks(cols).map(|r| r.to_vec()).collect() })
}

/// FreeLB's gradients for one training batch: K ascent steps on δ (from [`start`]), the parameter
/// gradients of the loss at every `e + δᵏ`, `k = 0 … K−1`, *accumulated* into the model's buffers
/// (their sum: step the optimizer with `grad_scale = 1/K` for FreeLB's mean). Returns the mean
/// loss over the K passes.
pub fn freelb_accumulate<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    batch: &TokenBatch,
    labels: &[u32],
    plan: Option<DropoutPlan>,
    cfg: &Pgd,
    rng: &mut Rng,
) -> Result<f32> {
    cfg.check()?;
    let h = model.bert.cfg.hidden_size;
    let mut delta = be.upload_state(batch.tokens(), h, &start(batch, h, cfg, rng))?;
    let mut loss = 0.0;
    for k in 0..cfg.steps {
        let _range = crate::profile::range("freelb ascent step");
        let out = model
            .forward_backward_perturbed(be, batch, labels, plan, Some(&delta), true)
            .with_context(|| format!("FreeLB step {k}"))?;
        loss += out.loss / cfg.steps as f32;
        if k + 1 < cfg.steps {
            be.pgd_step(
                &mut delta,
                &out.input_grad.context("no input gradient")?,
                &batch.lens,
                batch.seq,
                &cfg.step(),
            )?;
        }
    }
    Ok(loss)
}
