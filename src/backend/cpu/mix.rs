//! The per-row blend of a stacked projection (per-sample adapter mixing, docs/mixup.md).

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::{activation::apply_activation, Mat, ROW_CHUNK};
use crate::backend::Activation;

/// Checks the shapes of a `mix_rows` call and returns `n`, the width of one projection.
pub fn check_mix(
    rows: usize,
    cols: usize,
    m: usize,
    beta: usize,
    residual: Option<(usize, usize)>,
) -> Result<usize> {
    ensure!(m > 0 && cols % m == 0, "mix_rows: {cols} columns do not split into {m} projections");
    ensure!(beta == rows * m, "mix_rows: {beta} mixing weights for {rows} rows of {m} projections");
    let n = cols / m;
    if let Some((r, c)) = residual {
        ensure!(r == rows && c == n, "mix_rows: residual {r}x{c}, expected {rows}x{n}");
    }
    Ok(n)
}

/// `act(Σᵢ beta[r,i]·y[r, i·n + j]) + residual[r, j]`.
pub fn mix_rows(y: &Mat, m: usize, beta: &[f32], act: Activation, residual: Option<&Mat>) -> Result<Mat> {
    let n = check_mix(y.rows, y.cols, m, beta.len(), residual.map(|r| (r.rows, r.cols)))?;
    let mut out = Mat::zeros(y.rows, n);
    out.data.par_chunks_mut(ROW_CHUNK * n).enumerate().for_each(|(c, chunk)| {
        for (k, o) in chunk.chunks_mut(n).enumerate() {
            let r = c * ROW_CHUNK + k;
            let yr = y.row(r);
            for (i, &b) in beta[r * m..(r + 1) * m].iter().enumerate() {
                for (o, v) in o.iter_mut().zip(&yr[i * n..(i + 1) * n]) {
                    *o += b * v;
                }
            }
            apply_activation(act, o);
            if let Some(res) = residual {
                for (o, v) in o.iter_mut().zip(res.row(r)) {
                    *o += v;
                }
            }
        }
    });
    Ok(out)
}
