//! AdamW (torch semantics) and the reductions the optimizer needs.

use anyhow::Result;
use rayon::prelude::*;

use super::Mat;
use crate::backend::{AdamWFactors, AdamWStep};
use crate::weights::Tensor;

const CHUNK: usize = 1 << 14;

pub fn sum_squares(x: &Mat) -> f64 {
    // partial sums collected in order, then added: independent of scheduling
    let partial: Vec<f64> =
        x.data.par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
    partial.iter().sum()
}

/// `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p − (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + ε)`, in torch's order of operations.
pub fn adamw(param: &mut Tensor, grad: &Mat, m: &mut Mat, v: &mut Mat, h: &AdamWStep) -> Result<()> {
    let n = param.data().len();
    crate::backend::shapes::adamw(n, grad.data.len(), m.data.len(), v.data.len())?;
    let AdamWFactors { step_size, bc2_sqrt, decay } = h.factors();
    let p = param.data_mut();
    p.par_chunks_mut(CHUNK)
        .zip(grad.data.par_chunks(CHUNK))
        .zip(m.data.par_chunks_mut(CHUNK))
        .zip(v.data.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let g = g[i] * h.grad_scale;
                p[i] *= decay;
                m[i] += (g - m[i]) * (1.0 - h.beta1);
                v[i] = v[i] * h.beta2 + (1.0 - h.beta2) * g * g;
                let denom = v[i].sqrt() / bc2_sqrt + h.eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
    Ok(())
}
