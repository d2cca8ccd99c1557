//! Row-wise LayerNorm (biased variance, as torch.nn.LayerNorm).

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::{Mat, ROW_CHUNK};
use crate::model::weights::Tensor;

pub fn layernorm(x: &Mat, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Mat> {
    let n = x.cols;
    ensure!(
        gamma.data().len() == n && beta.data().len() == n,
        "layernorm: parameters do not match width {n}"
    );
    let mut out = x.clone();
    let (g, b) = (gamma.data(), beta.data());
    out.data.par_chunks_mut(n * ROW_CHUNK).for_each(|rows| {
        for row in rows.chunks_mut(n) {
            layernorm_row(row, g, b, eps);
        }
    });
    Ok(out)
}

/// Normalises one row in place.
pub fn layernorm_row(row: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
        *v = (*v - mean) * rstd * g + b;
    }
}
