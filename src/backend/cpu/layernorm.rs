//! Row-wise LayerNorm (biased variance, as torch.nn.LayerNorm).

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::math::sum_lanes;
use super::{Mat, ROW_CHUNK};
use crate::weights::Tensor;

pub fn layernorm(x: &Mat, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Mat> {
    let n = x.cols;
    ensure!(
        gamma.data().len() == n && beta.data().len() == n,
        "layernorm: parameters do not match width {n}"
    );
    let mut out = Mat::zeros(x.rows, n);
    let (g, b) = (gamma.data(), beta.data());
    out.data.par_chunks_mut(n * ROW_CHUNK).zip(x.data.par_chunks(n * ROW_CHUNK)).for_each(|(rows, src)| {
        for (row, src) in rows.chunks_mut(n).zip(src.chunks(n)) {
            layernorm_row_to(row, src, g, b, eps);
        }
    });
    Ok(out)
}

/// Normalises one row in place.
pub fn layernorm_row(row: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let (mean, rstd) = stats(row, eps);
    for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
        *v = (*v - mean) * rstd * g + b;
    }
}

/// Normalises `src` into `dst`.
fn layernorm_row_to(dst: &mut [f32], src: &[f32], g: &[f32], b: &[f32], eps: f32) {
    let (mean, rstd) = stats(src, eps);
    for (((d, v), g), b) in dst.iter_mut().zip(src).zip(g).zip(b) {
        *d = (*v - mean) * rstd * g + b;
    }
}

/// Mean and 1/√(biased variance + eps) of a row.
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len();
    let mean = sum_lanes(n, |i| row[i]) / n as f32;
    let var = sum_lanes(n, |i| (row[i] - mean) * (row[i] - mean)) / n as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Backward of LayerNorm from its input `x`: returns `dx`; accumulates `dγ`, `dβ` when asked.
pub fn layernorm_backward(
    dy: &Mat,
    x: &Mat,
    gamma: &Tensor,
    eps: f32,
    grads: Option<(&mut Mat, &mut Mat)>,
) -> Result<Mat> {
    let n = x.cols;
    ensure!(
        dy.rows == x.rows && dy.cols == n && gamma.data().len() == n,
        "layernorm_backward: dy {}x{}, x {}x{n}, gamma {}",
        dy.rows,
        dy.cols,
        x.rows,
        gamma.data().len()
    );
    let g = gamma.data();
    let mut dx = Mat::zeros(x.rows, n);
    let want = grads.is_some();
    let chunk = n * ROW_CHUNK;
    // per-chunk partial dγ/dβ, added in a fixed order: the result does not depend on scheduling
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .data
        .par_chunks_mut(chunk)
        .zip(x.data.par_chunks(chunk).zip(dy.data.par_chunks(chunk)))
        .map(|(dx, (x, dy))| {
            let mut acc = if want { (vec![0.0f32; n], vec![0.0f32; n]) } else { (vec![], vec![]) };
            for ((dx, x), dy) in dx.chunks_mut(n).zip(x.chunks(n)).zip(dy.chunks(n)) {
                layernorm_row_backward(
                    dx,
                    x,
                    dy,
                    g,
                    eps,
                    want.then_some((acc.0.as_mut_slice(), acc.1.as_mut_slice())),
                );
            }
            acc
        })
        .collect();
    let (mut dg, mut db) = (vec![0.0f32; n], vec![0.0f32; n]);
    if want {
        for (pg, pb) in &partial {
            dg.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
    }
    if let Some((dgamma, dbeta)) = grads {
        ensure!(dgamma.data.len() == n && dbeta.data.len() == n, "layernorm_backward: gradient buffers");
        dgamma.data.iter_mut().zip(&dg).for_each(|(d, s)| *d += s);
        dbeta.data.iter_mut().zip(&db).for_each(|(d, s)| *d += s);
    }
    Ok(dx)
}

/// One row of the LayerNorm backward, with `x̂ = (x − μ)·rstd`:
/// `dx = rstd·(g⊙dy − mean(g⊙dy) − x̂·mean(g⊙dy⊙x̂))`; `dγ += dy⊙x̂`, `dβ += dy`.
pub fn layernorm_row_backward(
    dx: &mut [f32],
    x: &[f32],
    dy: &[f32],
    g: &[f32],
    eps: f32,
    grads: Option<(&mut [f32], &mut [f32])>,
) {
    let len = x.len();
    assert!(dx.len() == len && dy.len() == len && g.len() == len, "layernorm_row_backward: widths");
    let n = len as f32;
    let (mean, rstd) = stats(x, eps);
    let sum_d = sum_lanes(len, |i| g[i] * dy[i]);
    let sum_dx = sum_lanes(len, |i| g[i] * dy[i] * ((x[i] - mean) * rstd));
    let (mean_d, mean_dx) = (sum_d / n, sum_dx / n);
    for i in 0..x.len() {
        let xhat = (x[i] - mean) * rstd;
        dx[i] = rstd * (g[i] * dy[i] - mean_d - xhat * mean_dx);
    }
    if let Some((dg, db)) = grads {
        for i in 0..x.len() {
            dg[i] += dy[i] * (x[i] - mean) * rstd;
            db[i] += dy[i];
        }
    }
}
