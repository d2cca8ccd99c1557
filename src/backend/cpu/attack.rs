//! Attack steps on the word-row perturbation δ (the CPU reference of kernels/attack.cu).

use anyhow::{ensure, Result};

use super::Mat;
use crate::backend::{Norm, PgdStep};

/// One projected ascent step, per sequence over its valid rows; pad rows of δ become zero.
pub fn pgd_step(delta: &mut Mat, grad: &Mat, lens: &[usize], seq: usize, step: &PgdStep) -> Result<()> {
    let h = delta.cols;
    ensure!(
        delta.rows == lens.len() * seq,
        "pgd_step: {} rows for {} sequences of {seq}",
        delta.rows,
        lens.len()
    );
    ensure!(lens.iter().all(|&l| l <= seq), "pgd_step: a length exceeds the sequence length {seq}");
    let PgdStep { norm, alpha, eps } = *step;
    for (b, &len) in lens.iter().enumerate() {
        let (start, valid, end) = (b * seq * h, (b * seq + len) * h, (b + 1) * seq * h);
        delta.data[valid..end].fill(0.0);
        let (d, g) = (&mut delta.data[start..valid], &grad.data[start..valid]);
        match norm {
            Norm::Linf => {
                for (d, &g) in d.iter_mut().zip(g) {
                    let s = if g > 0.0 {
                        1.0
                    } else if g < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    *d = (*d + alpha * s).clamp(-eps, eps);
                }
            }
            Norm::L2 => {
                let gnorm = g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                let scale = if gnorm > 0.0 { (alpha as f64 / gnorm) as f32 } else { 0.0 };
                d.iter_mut().zip(g).for_each(|(d, &g)| *d += scale * g);
                let dnorm = d.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                if dnorm > eps as f64 {
                    let shrink = (eps as f64 / dnorm) as f32;
                    d.iter_mut().for_each(|d| *d *= shrink);
                }
            }
        }
    }
    Ok(())
}
