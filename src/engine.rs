//! The inference engine: tokenizer + encoder (+ adapter + head) on one backend, and
//! [`run_batches`], which runs any per-batch function over many texts in length-sorted batches.

use anyhow::{bail, Result};

use crate::adapter::{Adapter, ClassificationHead};
use crate::backend::Backend;
use crate::backend::TokenBatch;
use crate::model::bert::Bert;
use crate::model::classify::{ensure_finite, prediction, Prediction};
use crate::model::tokenizer::{TextInput, TextTokenizer};
use crate::model::ModelDir;
use crate::weights::Tensor;

pub struct Engine<B: Backend> {
    pub backend: B,
    pub tokenizer: TextTokenizer,
    pub bert: Bert<B::Weight>,
    pub adapter: Option<Adapter<B::Weight>>,
    pub head: Option<ClassificationHead<B::Weight>>,
}

impl<B: Backend> Engine<B> {
    pub fn new(
        backend: B,
        model: ModelDir,
        adapter: Option<Adapter<Tensor>>,
        head: Option<ClassificationHead<Tensor>>,
    ) -> Result<Self> {
        let bert = model.bert()?.to_backend(&backend)?;
        let adapter = adapter.map(|a| a.to_backend(&backend)).transpose()?;
        let head = head.map(|h| h.to_backend(&backend)).transpose()?;
        Ok(Engine { backend, tokenizer: model.tokenizer, bert, adapter, head })
    }

    pub fn tokenize(&self, inputs: &[TextInput]) -> Result<TokenBatch> {
        if inputs.is_empty() {
            bail!("no inputs");
        }
        self.tokenizer.encode(inputs)
    }

    /// Last hidden state `[B*S, H]` of a token batch.
    pub fn encode(&self, batch: &TokenBatch) -> Result<B::Act> {
        self.bert.encode(&self.backend, batch, self.adapter.as_ref(), |_, _| {})
    }

    /// L2-normalised mean-pooled sentence embeddings, one row per input.
    pub fn embed_batch(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let hidden = self.encode(batch)?;
        let pooled = self.backend.mean_pool_l2(&hidden, &batch.lens, batch.seq)?;
        let (_, cols, data) = self.backend.download(&pooled)?;
        ensure_finite(&data, "embedding")?;
        Ok(data.chunks(cols).map(|r| r.to_vec()).collect())
    }

    /// Logits `[B][labels]` of the classification head.
    pub fn logits_batch(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let Some(head) = &self.head else { bail!("no classification head loaded") };
        let cls = self.bert.encode_cls(&self.backend, batch, self.adapter.as_ref(), None)?;
        let logits = head.forward(&self.backend, &cls, batch.batch, 1)?;
        let (_, cols, data) = self.backend.download(&logits)?;
        ensure_finite(&data, "logit")?;
        Ok(data.chunks(cols).map(|r| r.to_vec()).collect())
    }

    pub fn classify_batch(&self, batch: &TokenBatch) -> Result<Vec<Prediction>> {
        Ok(self.logits_batch(batch)?.into_iter().map(prediction).collect())
    }
}

/// Runs `f` over `inputs` in length-sorted batches of `batch_size` (less padding) with a progress
/// bar, and returns the results in input order with the number of inputs `tokenizer` truncated.
pub fn run_batches<T>(
    tokenizer: &TextTokenizer,
    inputs: &[TextInput],
    batch_size: usize,
    mut f: impl FnMut(&TokenBatch) -> Result<Vec<T>>,
) -> Result<(Vec<T>, usize)> {
    if inputs.is_empty() {
        bail!("no inputs");
    }
    let bar = indicatif::ProgressBar::new(inputs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} texts {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let mut results: Vec<Option<T>> = (0..inputs.len()).map(|_| None).collect();
    let mut truncated = 0;
    for chunk in &crate::data::batches::eval_batches(&TextInput::lengths(inputs), batch_size.max(1)) {
        let texts: Vec<TextInput> = chunk.iter().map(|&i| inputs[i].clone()).collect();
        let batch = tokenizer.encode(&texts)?;
        truncated += batch.truncated.iter().filter(|&&t| t).count();
        for (&i, r) in chunk.iter().zip(f(&batch)?) {
            results[i] = Some(r);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((results.into_iter().map(|r| r.expect("every input was processed")).collect(), truncated))
}
