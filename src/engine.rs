//! The inference engine: tokenizer + encoder (+ adapter + head) on one backend.

use anyhow::{bail, Result};

use crate::adapter::{Adapter, ClassificationHead};
use crate::backend::cpu::Cpu;
use crate::backend::cuda::Cuda;
use crate::backend::TokenBatch;
use crate::backend::{Backend, Device};
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

/// An engine on whichever backend `--device` chose.
pub enum AnyEngine {
    Cpu(Engine<Cpu>),
    Cuda(Engine<Cuda>),
}

macro_rules! dispatch {
    ($self:ident, $e:ident => $body:expr) => {
        match $self {
            AnyEngine::Cpu($e) => $body,
            AnyEngine::Cuda($e) => $body,
        }
    };
}

impl AnyEngine {
    pub fn new(
        device: Device,
        model: ModelDir,
        adapter: Option<Adapter<Tensor>>,
        head: Option<ClassificationHead<Tensor>>,
    ) -> Result<Self> {
        Ok(match device.cuda_backend()? {
            None => AnyEngine::Cpu(Engine::new(Cpu, model, adapter, head)?),
            Some(cuda) => AnyEngine::Cuda(Engine::new(cuda, model, adapter, head)?),
        })
    }

    pub fn tokenize(&self, inputs: &[TextInput]) -> Result<TokenBatch> {
        dispatch!(self, e => e.tokenize(inputs))
    }

    pub fn embed_batch(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        dispatch!(self, e => e.embed_batch(batch))
    }

    pub fn classify_batch(&self, batch: &TokenBatch) -> Result<Vec<Prediction>> {
        dispatch!(self, e => e.classify_batch(batch))
    }

    /// Labels of the classification head, if one is loaded.
    pub fn num_labels(&self) -> Option<usize> {
        dispatch!(self, e => e.head.as_ref().map(|h| h.num_labels))
    }

    /// Token limit of the tokenizer.
    pub fn max_len(&self) -> usize {
        dispatch!(self, e => e.tokenizer.max_len())
    }
}
