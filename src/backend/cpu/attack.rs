//! Attack steps on the word-row perturbation δ (the CPU reference of kernels/attack.cu).

use anyhow::{ensure, Result};

use super::Mat;
use crate::backend::{Norm, PgdStep, TopkFlips};

/// One projected ascent step, per sequence over its valid rows; pad rows of δ become zero.
pub fn pgd_step(delta: &mut Mat, grad: &Mat, lens: &[usize], seq: usize, step: &PgdStep) -> Result<()> {
    let h = delta.cols;
    check_pgd(delta.rows, lens, seq)?;
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

/// HotFlip's masked top-k (the CPU reference of `hotflip_topk_bf16`).
pub fn topk_flips(prod: &Mat, q: &TopkFlips) -> Result<Vec<Vec<(u32, f32)>>> {
    check_topk(prod.rows, prod.cols, q)?;
    let vocab = prod.cols;
    Ok((0..q.sites)
        .map(|s| {
            let (gains, dots) = (prod.row(s), prod.row(q.sites + s));
            let mut best: Vec<(u32, f32)> = Vec::with_capacity(q.k + 1);
            for v in 0..vocab {
                if !q.allowed[v] || v as u32 == q.old[s] || dots[v] / (q.old_norm[s] * q.norms[v]) < q.min_cos
                {
                    continue;
                }
                let g = gains[v] - q.base[s];
                if best.len() == q.k && g <= best[q.k - 1].1 {
                    continue;
                }
                // v grows: an equal gain goes after the ones already kept (ties to the smaller v)
                let at = best.partition_point(|&(_, b)| b >= g);
                best.insert(at, (v as u32, g));
                best.truncate(q.k);
            }
            best
        })
        .collect())
}

/// The shapes a top-k query must have against a `[rows, vocab]` product.
pub fn check_topk(rows: usize, vocab: usize, q: &TopkFlips) -> Result<()> {
    ensure!(rows == 2 * q.sites, "topk_flips: {rows} rows for {} sites (want 2 per site)", q.sites);
    ensure!(
        q.base.len() == q.sites && q.old.len() == q.sites && q.old_norm.len() == q.sites,
        "topk_flips: per-site inputs must have {} entries",
        q.sites
    );
    ensure!(
        q.norms.len() == vocab && q.allowed.len() == vocab,
        "topk_flips: vocabulary inputs must have {vocab} entries"
    );
    ensure!(
        (1..=crate::backend::TOPK_MAX).contains(&q.k),
        "topk_flips: k = {} outside 1..={}",
        q.k,
        crate::backend::TOPK_MAX
    );
    Ok(())
}

/// The batch layout a PGD step must agree with: `rows = sequences · seq`, lengths within `seq`.
pub fn check_pgd(rows: usize, lens: &[usize], seq: usize) -> Result<()> {
    ensure!(rows == lens.len() * seq, "pgd_step: {rows} rows for {} sequences of {seq}", lens.len());
    ensure!(lens.iter().all(|&l| l <= seq), "pgd_step: a length exceeds the sequence length {seq}");
    Ok(())
}
