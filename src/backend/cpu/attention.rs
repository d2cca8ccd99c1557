//! Multi-head self-attention with key masking: `softmax(QKᵀ/√d + mask)·V` per (sequence, head).
//!
//! Only the valid query rows of each sequence are computed; the context of pad rows is zero (pad
//! rows never influence valid ones because their keys are masked).

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::linear::gemm_strided;
use super::{math, Mat};

pub fn attention(qkv: &Mat, lens: &[usize], seq: usize, heads: usize) -> Result<Mat> {
    let batch = lens.len();
    ensure!(qkv.rows == batch * seq, "attention: {} rows for {batch} sequences of {seq}", qkv.rows);
    ensure!(
        qkv.cols % 3 == 0 && (qkv.cols / 3) % heads == 0,
        "attention: {} columns for {heads} heads",
        qkv.cols
    );
    let h = qkv.cols / 3;
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let ld = qkv.cols;
    // one task per (sequence, head); each returns its [len, d] context block
    let blocks: Vec<Vec<f32>> = (0..batch * heads)
        .into_par_iter()
        .map(|task| {
            let (b, hd) = (task / heads, task % heads);
            let len = lens[b];
            let base = b * seq * ld;
            let q = &qkv.data[base + hd * d..];
            let k = &qkv.data[base + h + hd * d..];
            let v = &qkv.data[base + 2 * h + hd * d..];
            let mut scores = vec![0.0f32; len * len];
            // scores = Q·Kᵀ  (Kᵀ[kk][j] = K[j][kk]: row stride 1, column stride ld)
            gemm_strided(len, len, d, &mut scores, len, false, q, ld, 1, k, 1, ld, false);
            for row in scores.chunks_mut(len) {
                row.iter_mut().for_each(|s| *s *= scale);
                math::softmax_inplace(row);
            }
            let mut ctx = vec![0.0f32; len * d];
            gemm_strided(len, d, len, &mut ctx, d, false, &scores, len, 1, v, ld, 1, false);
            ctx
        })
        .collect();
    let mut out = Mat::zeros(batch * seq, h);
    for (task, block) in blocks.into_iter().enumerate() {
        let (b, hd) = (task / heads, task % heads);
        for (i, row) in block.chunks(d).enumerate() {
            let o = (b * seq + i) * h + hd * d;
            out.data[o..o + d].copy_from_slice(row);
        }
    }
    Ok(out)
}
