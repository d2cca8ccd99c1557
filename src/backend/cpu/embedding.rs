//! Embedding gather (word + position + token type) fused with the embedding LayerNorm.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::layernorm::layernorm_row;
use super::{Mat, ROW_CHUNK};
use crate::backend::EmbeddingWeights;
use crate::model::tokenizer::TokenBatch;
use crate::model::weights::Tensor;

pub fn embed(batch: &TokenBatch, w: &EmbeddingWeights<Tensor>, eps: f32) -> Result<Mat> {
    let h = w.word.shape()[1];
    let vocab = w.word.shape()[0];
    let max_pos = w.position.shape()[0];
    let n_types = w.token_type.shape()[0];
    ensure!(batch.seq <= max_pos, "sequence length {} exceeds the model's {max_pos} positions", batch.seq);
    if let Some(&bad) = batch.ids.iter().find(|&&id| id as usize >= vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary ({vocab})");
    }
    if let Some(&bad) = batch.type_ids.iter().find(|&&t| t as usize >= n_types) {
        anyhow::bail!("token type id {bad} is outside the model's {n_types} types");
    }
    let (word, pos, typ) = (w.word.data(), w.position.data(), w.token_type.data());
    let (g, b) = (w.ln_gamma.data(), w.ln_beta.data());
    let mut out = Mat::zeros(batch.tokens(), h);
    out.data.par_chunks_mut(h * ROW_CHUNK).enumerate().for_each(|(c, rows)| {
        for (i, row) in rows.chunks_mut(h).enumerate() {
            let t = c * ROW_CHUNK + i;
            let (id, tt, s) = (batch.ids[t] as usize, batch.type_ids[t] as usize, t % batch.seq);
            let (we, pe, te) = (&word[id * h..][..h], &pos[s * h..][..h], &typ[tt * h..][..h]);
            for j in 0..h {
                row[j] = we[j] + pe[j] + te[j];
            }
            layernorm_row(row, g, b, eps);
        }
    });
    Ok(out)
}
