//! Embedding gather (word + position + token type) fused with the embedding LayerNorm; positions
//! as the model family numbers them ([`EmbedSpec`]).

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::layernorm::{layernorm_row, layernorm_row_backward};
use super::{Mat, ROW_CHUNK};
use crate::backend::TokenBatch;
use crate::backend::{EmbedSpec, EmbeddingWeights};
use crate::weights::Tensor;

pub fn embed(
    batch: &TokenBatch,
    w: &EmbeddingWeights<Tensor>,
    spec: EmbedSpec,
    delta: Option<&Mat>,
) -> Result<Mat> {
    let mut out = sums(batch, w, spec, delta)?;
    let eps = spec.eps;
    let (g, b) = (w.ln_gamma.data(), w.ln_beta.data());
    let h = out.cols;
    out.data.par_chunks_mut(h * ROW_CHUNK).for_each(|rows| {
        for row in rows.chunks_mut(h) {
            layernorm_row(row, g, b, eps);
        }
    });
    Ok(out)
}

/// Backward of [`embed`]: the gradient w.r.t. the pre-LayerNorm sum, which is also the gradient
/// w.r.t. the word-embedding rows looked up (and δ); with `grads`, accumulated into the tables too.
pub fn embed_backward(
    dy: &Mat,
    batch: &TokenBatch,
    w: &EmbeddingWeights<Tensor>,
    spec: EmbedSpec,
    delta: Option<&Mat>,
    grads: Option<&mut EmbeddingWeights<Mat>>,
) -> Result<Mat> {
    let x = sums(batch, w, spec, delta)?;
    let eps = spec.eps;
    let h = x.cols;
    ensure!(
        dy.rows == x.rows && dy.cols == h,
        "embed_backward: dy is {}x{}, expected {}x{h}",
        dy.rows,
        dy.cols,
        x.rows
    );
    let g = w.ln_gamma.data();
    let mut dx = Mat::zeros(x.rows, h);
    match grads {
        None => {
            dx.data
                .par_chunks_mut(h * ROW_CHUNK)
                .zip(x.data.par_chunks(h * ROW_CHUNK))
                .zip(dy.data.par_chunks(h * ROW_CHUNK))
                .for_each(|((dx, x), dy)| {
                    for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
                        layernorm_row_backward(dx, x, dy, g, eps, None);
                    }
                });
        }
        Some(gr) => {
            for t in 0..x.rows {
                let r = t * h..(t + 1) * h;
                let (dgamma, dbeta) = (gr.ln_gamma.data.as_mut_slice(), gr.ln_beta.data.as_mut_slice());
                layernorm_row_backward(
                    &mut dx.data[r.clone()],
                    &x.data[r.clone()],
                    &dy.data[r.clone()],
                    g,
                    eps,
                    Some((dgamma, dbeta)),
                );
                let (id, tt) = (batch.ids[t], batch.type_ids[t] as usize);
                let s = spec.positions.row(id, t % batch.seq);
                let d = &dx.data[r];
                for (table, row) in
                    [(&mut gr.word, id as usize), (&mut gr.position, s), (&mut gr.token_type, tt)]
                {
                    table.data[row * h..(row + 1) * h].iter_mut().zip(d).for_each(|(a, b)| *a += b);
                }
            }
        }
    }
    Ok(dx)
}

/// `(word[id] + δ) + position[p] + token_type[tt]` for every token, with the ids validated.
fn sums(
    batch: &TokenBatch,
    w: &EmbeddingWeights<Tensor>,
    spec: EmbedSpec,
    delta: Option<&Mat>,
) -> Result<Mat> {
    let h = w.word.shape()[1];
    let vocab = w.word.shape()[0];
    let max_pos = w.position.shape()[0];
    let n_types = w.token_type.shape()[0];
    ensure!(
        spec.positions.rows_needed(batch.seq) <= max_pos,
        "sequence length {} exceeds the model's {} positions",
        batch.seq,
        max_pos.saturating_sub(spec.positions.rows_needed(0))
    );
    if let Some(&bad) = batch.ids.iter().find(|&&id| id as usize >= vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary ({vocab})");
    }
    if let Some(&bad) = batch.type_ids.iter().find(|&&t| t as usize >= n_types) {
        anyhow::bail!("token type id {bad} is outside the model's {n_types} types");
    }
    if let Some(d) = delta {
        ensure!(
            d.rows == batch.tokens() && d.cols == h,
            "embed: the perturbation is {}x{}, expected {}x{h}",
            d.rows,
            d.cols,
            batch.tokens()
        );
    }
    let (word, pos, typ) = (w.word.data(), w.position.data(), w.token_type.data());
    let mut out = Mat::zeros(batch.tokens(), h);
    out.data.par_chunks_mut(h * ROW_CHUNK).enumerate().for_each(|(c, rows)| {
        for (i, row) in rows.chunks_mut(h).enumerate() {
            let t = c * ROW_CHUNK + i;
            let (id, tt) = (batch.ids[t], batch.type_ids[t] as usize);
            let s = spec.positions.row(id, t % batch.seq);
            let (we, pe, te) = (&word[id as usize * h..][..h], &pos[s * h..][..h], &typ[tt * h..][..h]);
            match delta {
                None => (0..h).for_each(|j| row[j] = we[j] + pe[j] + te[j]),
                Some(d) => {
                    let de = &d.data[t * h..][..h];
                    (0..h).for_each(|j| row[j] = (we[j] + de[j]) + pe[j] + te[j]);
                }
            }
        }
    });
    Ok(out)
}
