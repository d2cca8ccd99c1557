//! Tokenized examples and how they are grouped into batches: dynamic padding (to the longest in
//! the batch), length-bucketed training batches with seeded shuffling, length-sorted evaluation.

use anyhow::{bail, Result};

use crate::model::ModelDir;

use crate::backend::TokenBatch;
use crate::data::Example;
use crate::model::tokenizer::{TextInput, TextTokenizer};
use crate::rng::Rng;

/// One tokenized, unpadded example.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub label: u32,
}

/// Tokenizes examples (truncated to the tokenizer's max length). Returns them and how many were
/// truncated.
pub fn encode(tok: &TextTokenizer, examples: &[Example]) -> Result<(Vec<Encoded>, usize)> {
    if examples.is_empty() {
        bail!("no examples");
    }
    let mut out = Vec::with_capacity(examples.len());
    let mut truncated = 0;
    for chunk in examples.chunks(1024) {
        let inputs: Vec<TextInput> =
            chunk.iter().map(|e| TextInput { text: e.text.clone(), pair: e.pair.clone() }).collect();
        for ((ids, type_ids, cut), e) in tok.encode_rows(&inputs)?.into_iter().zip(chunk) {
            truncated += cut as usize;
            out.push(Encoded { ids, type_ids, label: e.label as u32 });
        }
    }
    Ok((out, truncated))
}

/// A padded batch of the examples at `idx`, and their labels.
pub fn make_batch(data: &[Encoded], idx: &[usize], pad_id: u32) -> (TokenBatch, Vec<u32>) {
    let rows: Vec<(Vec<u32>, Vec<u32>)> =
        idx.iter().map(|&i| (data[i].ids.clone(), data[i].type_ids.clone())).collect();
    (TokenBatch::from_rows(&rows, pad_id), idx.iter().map(|&i| data[i].label).collect())
}

/// Training batches of one epoch: shuffle (seeded by `seed` and `epoch`), sort windows of 50
/// batches by length so each batch holds similar lengths (little padding), then shuffle the
/// batch order. The same seed and epoch give the same batches.
pub fn epoch_batches(lens: &[usize], batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ (0xE90C_u64 << 32) ^ epoch as u64);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    rng.shuffle(&mut order);
    for window in order.chunks_mut(batch_size * 50) {
        window.sort_by_key(|&i| lens[i]);
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
    rng.shuffle(&mut batches);
    batches
}

/// Evaluation batches: sorted by length (least padding), in a fixed order.
pub fn eval_batches(lens: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

/// Tokenizes a split (an empty one is an error) and notes how many examples were truncated.
pub fn encode_split(model: &ModelDir, examples: &[Example], what: &str) -> Result<Vec<Encoded>> {
    if examples.is_empty() {
        bail!("the {what} split is empty");
    }
    let (enc, truncated) = encode(&model.tokenizer, examples)?;
    if truncated > 0 {
        eprintln!(
            "note: {truncated} {what} example(s) longer than {} tokens were truncated",
            model.tokenizer.max_len()
        );
    }
    Ok(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_batches_cover_every_example_once_and_are_seeded() {
        let lens: Vec<usize> = (0..1000).map(|i| (i * 37) % 61 + 3).collect();
        let a = epoch_batches(&lens, 32, 42, 0);
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_batches(&lens, 32, 42, 0));
        assert_ne!(a, epoch_batches(&lens, 32, 42, 1));
        // bucketing: padding is far below that of random batches
        let pad = |bs: &[Vec<usize>]| -> usize {
            bs.iter()
                .map(|b| {
                    b.iter().map(|&i| lens[i]).max().unwrap() * b.len()
                        - b.iter().map(|&i| lens[i]).sum::<usize>()
                })
                .sum()
        };
        let random: Vec<Vec<usize>> = (0..1000).collect::<Vec<_>>().chunks(32).map(|c| c.to_vec()).collect();
        assert!(pad(&a) * 5 < pad(&random), "{} vs {}", pad(&a), pad(&random));
    }
}
