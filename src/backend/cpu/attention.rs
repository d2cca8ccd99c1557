//! Multi-head self-attention with key masking: `softmax(QKᵀ/√d + mask)·V` per (sequence, head),
//! and its backward.
//!
//! Only the valid query rows of each sequence are computed; the context of pad rows is zero (pad
//! rows never influence valid ones because their keys are masked), and so is their gradient.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::linear::gemm_strided;
use super::{math, Mat};
use crate::backend::DropKey;

struct Shape {
    batch: usize,
    heads: usize,
    seq: usize,
    /// hidden size H (the context width); qkv rows are 3H wide
    h: usize,
    /// head dimension
    d: usize,
}

fn shape(qkv: &Mat, lens: &[usize], seq: usize, heads: usize) -> Result<Shape> {
    let (h, d) = crate::backend::shapes::attention((qkv.rows, qkv.cols), lens, seq, heads)?;
    Ok(Shape { batch: lens.len(), heads, seq, h, d })
}

/// The attention probabilities `P = softmax(QKᵀ/√d)` of one (sequence, head) over its `len` valid
/// positions, row-major `[len, len]`, before dropout.
fn probabilities(qkv: &Mat, s: &Shape, b: usize, hd: usize, len: usize) -> Vec<f32> {
    let ld = qkv.cols;
    let base = b * s.seq * ld;
    let q = &qkv.data[base + hd * s.d..];
    let k = &qkv.data[base + s.h + hd * s.d..];
    let scale = 1.0 / (s.d as f32).sqrt();
    let mut p = vec![0.0f32; len * len];
    // P = Q·Kᵀ  (Kᵀ[kk][j] = K[j][kk]: row stride 1, column stride ld)
    gemm_strided(len, len, s.d, &mut p, len, false, q, ld, 1, k, 1, ld, false);
    for row in p.chunks_mut(len) {
        math::softmax_scaled_inplace(row, scale);
    }
    p
}

/// Applies dropout to the probabilities of (b, hd) in place, with the element index of the full
/// `[B, heads, S, S]` tensor so that the mask does not depend on `len`.
fn drop_probabilities(p: &mut [f32], s: &Shape, b: usize, hd: usize, len: usize, drop: DropKey) {
    let scale = drop.scale();
    for (i, row) in p.chunks_mut(len).enumerate() {
        let base = (((b * s.heads + hd) * s.seq + i) * s.seq) as u64;
        for (j, v) in row.iter_mut().enumerate() {
            *v = if drop.keep(base + j as u64) { *v * scale } else { 0.0 };
        }
    }
}

/// Writes each task's `[len, d]` block (task = b·heads + head) into `[B*S, width]` at column
/// offset `col(head)`.
fn scatter_blocks(
    out: &mut Mat,
    blocks: Vec<Vec<f32>>,
    s: &Shape,
    width: usize,
    col: impl Fn(usize) -> usize,
) {
    for (task, block) in blocks.into_iter().enumerate() {
        let (b, hd) = (task / s.heads, task % s.heads);
        for (i, row) in block.chunks(s.d).enumerate() {
            let o = (b * s.seq + i) * width + col(hd);
            out.data[o..o + s.d].copy_from_slice(row);
        }
    }
}

pub fn attention(qkv: &Mat, lens: &[usize], seq: usize, heads: usize, drop: Option<DropKey>) -> Result<Mat> {
    let s = shape(qkv, lens, seq, heads)?;
    let ld = qkv.cols;
    let blocks: Vec<Vec<f32>> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|task| {
            let (b, hd) = (task / s.heads, task % s.heads);
            let len = lens[b];
            let mut p = probabilities(qkv, &s, b, hd, len);
            if let Some(drop) = drop {
                drop_probabilities(&mut p, &s, b, hd, len, drop);
            }
            let v = &qkv.data[b * s.seq * ld + 2 * s.h + hd * s.d..];
            let mut ctx = vec![0.0f32; len * s.d];
            gemm_strided(len, s.d, len, &mut ctx, s.d, false, &p, len, 1, v, ld, 1, false);
            ctx
        })
        .collect();
    let mut out = Mat::zeros(s.batch * seq, s.h);
    scatter_blocks(&mut out, blocks, &s, s.h, |hd| hd * s.d);
    Ok(out)
}

/// With `P` the probabilities, `P̃` after dropout and `C = P̃·V`:
/// `dV = P̃ᵀ·dC`, `dP = drop(dC·Vᵀ)`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`,
/// `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`.
pub fn attention_backward(
    dctx: &Mat,
    qkv: &Mat,
    lens: &[usize],
    seq: usize,
    heads: usize,
    drop: Option<DropKey>,
) -> Result<Mat> {
    let s = shape(qkv, lens, seq, heads)?;
    ensure!(
        dctx.rows == qkv.rows && dctx.cols == s.h,
        "attention_backward: dctx is {}x{}, expected {}x{}",
        dctx.rows,
        dctx.cols,
        qkv.rows,
        s.h
    );
    let ld = qkv.cols;
    let (h, d) = (s.h, s.d);
    let scale = 1.0 / (d as f32).sqrt();
    // per task: dQ, dK, dV blocks, each [len, d]
    let blocks: Vec<[Vec<f32>; 3]> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|task| {
            let (b, hd) = (task / s.heads, task % s.heads);
            let len = lens[b];
            let base = b * seq * ld;
            let q = &qkv.data[base + hd * d..];
            let k = &qkv.data[base + h + hd * d..];
            let v = &qkv.data[base + 2 * h + hd * d..];
            let dc = &dctx.data[b * seq * h + hd * d..];
            let p = probabilities(qkv, &s, b, hd, len);
            let mut pd = p.clone();
            if let Some(drop) = drop {
                drop_probabilities(&mut pd, &s, b, hd, len, drop);
            }
            // dV = P̃ᵀ·dC
            let mut dv = vec![0.0f32; len * d];
            gemm_strided(len, d, len, &mut dv, d, false, &pd, 1, len, dc, h, 1, false);
            // dP̃ = dC·Vᵀ, then through the dropout mask
            let mut dp = vec![0.0f32; len * len];
            gemm_strided(len, len, d, &mut dp, len, false, dc, h, 1, v, 1, ld, false);
            if let Some(drop) = drop {
                drop_probabilities(&mut dp, &s, b, hd, len, drop);
            }
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)), folded with the 1/√d of the scores
            for (dp, p) in dp.chunks_mut(len).zip(p.chunks(len)) {
                let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
                dp.iter_mut().zip(p).for_each(|(g, &p)| *g = p * (*g - dot) * scale);
            }
            // dQ = dS·K, dK = dSᵀ·Q
            let mut dq = vec![0.0f32; len * d];
            gemm_strided(len, d, len, &mut dq, d, false, &dp, len, 1, k, ld, 1, false);
            let mut dk = vec![0.0f32; len * d];
            gemm_strided(len, d, len, &mut dk, d, false, &dp, 1, len, q, ld, 1, false);
            [dq, dk, dv]
        })
        .collect();
    let mut dqkv = Mat::zeros(qkv.rows, ld);
    let [mut dq, mut dk, mut dv] = [vec![], vec![], vec![]];
    for [q, k, v] in blocks {
        dq.push(q);
        dk.push(k);
        dv.push(v);
    }
    scatter_blocks(&mut dqkv, dq, &s, ld, |hd| hd * d);
    scatter_blocks(&mut dqkv, dk, &s, ld, |hd| h + hd * d);
    scatter_blocks(&mut dqkv, dv, &s, ld, |hd| 2 * h + hd * d);
    Ok(dqkv)
}
