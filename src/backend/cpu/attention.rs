//! Multi-head self-attention with key masking: `softmax(QKᵀ/√d + mask)·V` per (sequence, head),
//! and its backward.
//!
//! Only the valid query rows of each sequence are computed; the context of pad rows is zero (pad
//! rows never influence valid ones because their keys are masked), and so is their gradient.
//!
//! With bf16 (a [`super::Cpu::bf16`] backend) every product takes bf16 inputs with f32
//! accumulation ([`super::bf16::small`]): `Q`, `K`, `V` and `dC` rounded as the CUDA path holds
//! them, and the probabilities and their gradients rounded where they enter a product, as under
//! PyTorch's bf16 autocast (the CUDA kernels keep those in f32). Softmaxes, sums and dropout
//! stay f32.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::bf16::small;
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
/// positions, row-major `[len, len]`, before dropout; with `bf16`, `Q·Kᵀ` from bf16 inputs.
fn probabilities(qkv: &Mat, s: &Shape, b: usize, hd: usize, len: usize, bf16: bool) -> Vec<f32> {
    let ld = qkv.cols;
    let base = b * s.seq * ld;
    let q = &qkv.data[base + hd * s.d..];
    let k = &qkv.data[base + s.h + hd * s.d..];
    let mut p = vec![0.0f32; len * len];
    if bf16 {
        small::gemm(&mut p, &small::rows(q, len, s.d, ld), &small::packed_rows(k, len, s.d, ld));
    } else {
        // P = Q·Kᵀ  (Kᵀ[kk][j] = K[j][kk]: row stride 1, column stride ld)
        gemm_strided(len, len, s.d, &mut p, len, false, q, ld, 1, k, 1, ld, false);
    }
    let scale = 1.0 / (s.d as f32).sqrt();
    for row in p.chunks_mut(len) {
        math::softmax_scaled_inplace(row, scale);
    }
    p
}

/// Applies dropout to the probabilities of (b, hd) in place, with the element index of the full
/// `[B, heads, S, S]` tensor so that the mask does not depend on `len`.
fn drop_probabilities(p: &mut [f32], s: &Shape, b: usize, hd: usize, len: usize, drop: DropKey) {
    for (i, row) in p.chunks_mut(len).enumerate() {
        super::dropout::apply(row, (((b * s.heads + hd) * s.seq + i) * s.seq) as u64, drop);
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

pub fn attention(
    qkv: &Mat,
    lens: &[usize],
    seq: usize,
    heads: usize,
    drop: Option<DropKey>,
    bf16: bool,
) -> Result<Mat> {
    let s = shape(qkv, lens, seq, heads)?;
    let ld = qkv.cols;
    let blocks: Vec<Vec<f32>> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|task| {
            let (b, hd) = (task / s.heads, task % s.heads);
            let len = lens[b];
            let mut p = probabilities(qkv, &s, b, hd, len, bf16);
            if let Some(drop) = drop {
                drop_probabilities(&mut p, &s, b, hd, len, drop);
            }
            let v = &qkv.data[b * s.seq * ld + 2 * s.h + hd * s.d..];
            let mut ctx = vec![0.0f32; len * s.d];
            if bf16 {
                small::gemm(&mut ctx, &small::rows(&p, len, len, len), &small::packed_cols(v, len, s.d, ld));
            } else {
                gemm_strided(len, s.d, len, &mut ctx, s.d, false, &p, len, 1, v, ld, 1, false);
            }
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
    bf16: bool,
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
            let p = probabilities(qkv, &s, b, hd, len, bf16);
            let mut pd = p.clone();
            if let Some(drop) = drop {
                drop_probabilities(&mut pd, &s, b, hd, len, drop);
            }
            let mut dv = vec![0.0f32; len * d];
            let mut dp = vec![0.0f32; len * len];
            if bf16 {
                // dV = P̃ᵀ·dC, dP̃ = dC·Vᵀ
                small::gemm(&mut dv, &small::cols(&pd, len, len, len), &small::packed_cols(dc, len, d, h));
                small::gemm(&mut dp, &small::rows(dc, len, d, h), &small::packed_rows(v, len, d, ld));
            } else {
                gemm_strided(len, d, len, &mut dv, d, false, &pd, 1, len, dc, h, 1, false);
                gemm_strided(len, len, d, &mut dp, len, false, dc, h, 1, v, 1, ld, false);
            }
            // through the dropout mask
            if let Some(drop) = drop {
                drop_probabilities(&mut dp, &s, b, hd, len, drop);
            }
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)), folded with the 1/√d of the scores
            for (dp, p) in dp.chunks_mut(len).zip(p.chunks(len)) {
                let dot = math::sum_lanes(len, |i| dp[i] * p[i]);
                dp.iter_mut().zip(p).for_each(|(g, &p)| *g = p * (*g - dot) * scale);
            }
            // dQ = dS·K, dK = dSᵀ·Q
            let mut dq = vec![0.0f32; len * d];
            let mut dk = vec![0.0f32; len * d];
            if bf16 {
                let ds = small::rows(&dp, len, len, len);
                small::gemm(&mut dq, &ds, &small::packed_cols(k, len, d, ld));
                let ds = small::cols(&dp, len, len, len);
                small::gemm(&mut dk, &ds, &small::packed_cols(q, len, d, ld));
            } else {
                gemm_strided(len, d, len, &mut dq, d, false, &dp, len, 1, k, ld, 1, false);
                gemm_strided(len, d, len, &mut dk, d, false, &dp, 1, len, q, ld, 1, false);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values uniform in [-2, 2).
    fn rng(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| ((r.uniform() * 2.0 - 1.0) * 2.0) as f32).collect()
    }

    fn round(x: f32) -> f64 {
        half::bf16::from_f32(x).to_f32() as f64
    }

    /// The documented bf16 numerics in f64: bf16 `Q`, `K`, `V`; exact scores; the softmax; `P`
    /// (after dropout) rounded to bf16; exact `P·V`. Pad rows zero.
    fn reference(qkv: &Mat, lens: &[usize], seq: usize, heads: usize, drop: Option<DropKey>) -> Vec<f64> {
        let h = qkv.cols / 3;
        let d = h / heads;
        let at = |r: usize, c: usize| round(qkv.data[r * qkv.cols + c]);
        let mut out = vec![0.0f64; lens.len() * seq * h];
        for (b, &len) in lens.iter().enumerate() {
            for hd in 0..heads {
                for i in 0..len {
                    let s: Vec<f64> = (0..len)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|c| at(b * seq + i, hd * d + c) * at(b * seq + j, h + hd * d + c))
                                .sum();
                            dot / (d as f64).sqrt()
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - max).exp()).sum();
                    for (j, v) in s.iter().enumerate() {
                        let mut p = ((v - max).exp() / z) as f32;
                        if let Some(drop) = drop {
                            let e = (((b * heads + hd) * seq + i) * seq + j) as u64;
                            p = if drop.keep(e) { p * drop.scale() } else { 0.0 };
                        }
                        let p = round(p);
                        for c in 0..d {
                            out[(b * seq + i) * h + hd * d + c] += p * at(b * seq + j, 2 * h + hd * d + c);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn bf16_attention_follows_its_documented_numerics() {
        if !super::super::bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // head dimensions on and off the 16/32-wide paths, lengths off the 8-row tiles, pad rows
        for (lens, seq, heads, d, drop) in [
            (vec![5, 37, 1], 40, 3, 12, None),
            (vec![128, 70], 128, 2, 32, None),
            (vec![19, 33], 33, 2, 48, Some(DropKey::new(0.1, 7, 3, 1))),
        ] {
            let h = heads * d;
            let rows = lens.len() * seq;
            let qkv = Mat { rows, cols: 3 * h, data: rng(rows * 3 * h, seq as u64) };
            let got = attention(&qkv, &lens, seq, heads, drop, true).unwrap();
            let want = reference(&qkv, &lens, seq, heads, drop);
            let f32 = attention(&qkv, &lens, seq, heads, drop, false).unwrap();
            let err = got.data.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
            let off_f32 = got.data.iter().zip(&f32.data).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
            // |V| ≤ 2: an f32 rounding of a probability that lands on a bf16 tie moves it one bf16
            // step (2⁻⁸ relative); the scores' f32 accumulation is below 1e-6
            assert!(err < 2e-3, "lens {lens:?} d {d}: bf16 attention off its reference by {err:.2e}");
            assert!(off_f32 > 0.0 && off_f32 < 0.1, "lens {lens:?} d {d}: bf16 vs f32 {off_f32:.2e}");
            for (b, &len) in lens.iter().enumerate() {
                assert!(
                    got.data[(b * seq + len) * h..(b + 1) * seq * h].iter().all(|&v| v == 0.0),
                    "pad rows"
                );
            }
        }
    }

    #[test]
    fn bf16_attention_backward_is_the_f32_one_within_bf16s_precision() {
        if !super::super::bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (lens, seq, heads, d, drop) in
            [(vec![5, 37, 1], 40, 3, 12, None), (vec![19, 33], 33, 2, 48, Some(DropKey::new(0.1, 7, 3, 1)))]
        {
            let h = heads * d;
            let rows = lens.len() * seq;
            let qkv = Mat { rows, cols: 3 * h, data: rng(rows * 3 * h, 1 + seq as u64) };
            let dctx = Mat { rows, cols: h, data: rng(rows * h, 2 + seq as u64) };
            let got = attention_backward(&dctx, &qkv, &lens, seq, heads, drop, true).unwrap();
            let want = attention_backward(&dctx, &qkv, &lens, seq, heads, drop, false).unwrap();
            // per block of dQKV (q, k, v columns of each head): relative Frobenius difference
            for part in 0..3 {
                let pick = |m: &Mat| -> Vec<f64> {
                    m.data
                        .chunks(3 * h)
                        .flat_map(|r| r[part * h..(part + 1) * h].iter().map(|&v| v as f64))
                        .collect()
                };
                let (g, w) = (pick(&got), pick(&want));
                let diff: f64 = g.iter().zip(&w).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
                let norm: f64 = w.iter().map(|w| w.powi(2)).sum::<f64>().sqrt();
                assert!(norm > 0.0 && diff > 0.0, "lens {lens:?}: part {part} is zero or not bf16");
                assert!(diff < 1e-2 * norm, "lens {lens:?} d {d}: part {part} off by {:.2e}", diff / norm);
            }
            for (b, &len) in lens.iter().enumerate() {
                assert!(
                    got.data[(b * seq + len) * 3 * h..(b + 1) * seq * 3 * h].iter().all(|&v| v == 0.0),
                    "pad rows"
                );
            }
        }
    }
}
