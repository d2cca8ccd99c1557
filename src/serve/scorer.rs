//! What the server and `admix score --stream` run on a batch of texts: the AdpMixup mixture of
//! the adapters chosen at start-up (entropy β over `m ≥ 2` adapters; one adapter as it is).

use anyhow::{ensure, Result};

use crate::backend::{Backend, Device, Precision};
use crate::classifier::Loaded;
use crate::model::mixture::Mixture;
use crate::model::tokenizer::{TextInput, TextTokenizer};
use crate::profile;

/// The result for one text.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub label: usize,
    pub probs: Vec<f32>,
    /// the weight of each adapter in this text's mix
    pub beta: Vec<f32>,
    /// the text was cut to the tokenizer's limit
    pub truncated: bool,
}

/// Scores batches of texts. Implementations own their device state; the server runs one on its
/// batching thread.
pub trait Score: Send {
    fn score(&self, inputs: &[TextInput]) -> Result<Vec<Scored>>;
}

/// The mixture on one backend.
pub struct MixScorer<B: Backend> {
    be: B,
    tokenizer: TextTokenizer,
    mixture: Mixture<B>,
    max_batch: usize,
}

impl<B: Backend> MixScorer<B> {
    /// The loaded adapters mixed by their rule (one adapter: β = 1; a full or head-only model is
    /// refused: the scorer serves adapters).
    pub fn new(be: B, loaded: Loaded, max_batch: usize) -> Result<Self> {
        ensure!(max_batch > 0, "the batch size must be positive");
        let mixture = loaded.mixture_on(&be, &loaded.model.bert()?)?;
        Ok(MixScorer { be, tokenizer: loaded.model.tokenizer, mixture, max_batch })
    }
}

impl<B: Backend + Send> Score for MixScorer<B>
where
    Mixture<B>: Send,
{
    fn score(&self, inputs: &[TextInput]) -> Result<Vec<Scored>> {
        // length-sorted chunks pad less
        let mut out: Vec<Option<Scored>> = vec![None; inputs.len()];
        for chunk in &crate::data::batches::eval_batches(&TextInput::lengths(inputs), self.max_batch) {
            let _range = profile::range("score batch");
            let texts: Vec<TextInput> = chunk.iter().map(|&i| inputs[i].clone()).collect();
            let batch = self.tokenizer.encode(&texts)?;
            let mixed = self.mixture.run(&self.be, &batch)?;
            for (k, &i) in chunk.iter().enumerate() {
                let probs = mixed.probs[k].clone();
                let label = crate::model::classify::argmax(&probs);
                ensure!(probs.iter().all(|p| p.is_finite()), "the model produced a non-finite probability");
                out[i] =
                    Some(Scored { label, probs, beta: mixed.beta[k].clone(), truncated: batch.truncated[k] });
            }
        }
        Ok(out.into_iter().map(|s| s.expect("every input was scored")).collect())
    }
}

/// The loaded classifier's scorer on `device` at `precision` (`None`: the device's own).
pub fn open(
    device: Device,
    precision: Option<Precision>,
    loaded: Loaded,
    max_batch: usize,
) -> Result<Box<dyn Score>> {
    crate::with_backend!(device.open(precision)?, be => Ok(Box::new(MixScorer::new(be, loaded, max_batch)?) as Box<dyn Score>))
}
