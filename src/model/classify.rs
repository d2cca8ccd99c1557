//! A classifier on a backend: [`Model`] (the encoder, an optional adapter and a head, with their
//! gradient buffers for training and for gradient attacks), the [`Classify`] contract that attacks
//! and evaluation query (a [`Model`], or a system such as [`super::mixture::Mixture`]), and
//! turning logits into a [`Prediction`].

use anyhow::{bail, ensure, Result};

use crate::adapter::{Adapter, ClassificationHead};
use crate::backend::Backend;
use crate::backend::TokenBatch;
use crate::model::bert::{Bert, DropoutPlan, EncoderGrads};

/// Gradient buffers, `None` where the weights are frozen.
struct Grads<A> {
    bert: Option<Bert<A>>,
    adapter: Option<Adapter<A>>,
    head: ClassificationHead<A>,
}

pub struct Model<B: Backend> {
    pub bert: Bert<B::Weight>,
    pub adapter: Option<Adapter<B::Weight>>,
    pub head: ClassificationHead<B::Weight>,
    grads: Grads<B::Act>,
}

/// What one forward + backward pass produced.
pub struct StepOutput<A> {
    /// mean cross-entropy over the batch
    pub loss: f32,
    pub logits: A,
    /// gradient w.r.t. the word-embedding rows looked up, when asked for
    pub input_grad: Option<A>,
}

/// One trainable tensor with its gradient.
pub struct Param<'a, B: Backend> {
    pub name: String,
    pub weight: &'a mut B::Weight,
    pub grad: &'a mut B::Act,
}

impl<B: Backend> Model<B> {
    /// `full`: every encoder weight is trained too (full fine-tuning); otherwise the encoder is
    /// frozen and the adapter (if any) and head are trained.
    pub fn new(
        be: &B,
        bert: Bert<B::Weight>,
        adapter: Option<Adapter<B::Weight>>,
        head: ClassificationHead<B::Weight>,
        full: bool,
    ) -> Result<Self> {
        let zeros = |w: &B::Weight| be.zeros_like(w);
        let grads = Grads {
            bert: if full { Some(bert.map(zeros)?) } else { None },
            adapter: adapter.as_ref().map(|a| a.map(zeros)).transpose()?,
            head: head.map(zeros)?,
        };
        Ok(Model { bert, adapter, head, grads })
    }

    pub fn is_full(&self) -> bool {
        self.grads.bert.is_some()
    }

    /// Sets every gradient buffer to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        for p in self.params() {
            be.fill_zero(p.grad)?;
        }
        Ok(())
    }

    /// Logits of a batch in evaluation mode (no dropout, nothing kept).
    pub fn logits(&self, be: &B, batch: &TokenBatch) -> Result<B::Act> {
        self.logits_perturbed(be, batch, None)
    }

    /// Logits with the word-embedding rows perturbed by `delta` (`[B*S, H]`, see
    /// [`Backend::embed`]), in evaluation mode.
    pub fn logits_perturbed(&self, be: &B, batch: &TokenBatch, delta: Option<&B::Act>) -> Result<B::Act> {
        let cls = self.bert.encode_cls(be, batch, self.adapter.as_ref(), delta)?;
        self.head.forward(be, &cls, batch.batch, 1)
    }

    /// Forward and backward on one batch: the loss, and the gradients *accumulated* into the
    /// buffers (call [`Model::zero_grads`] first for a fresh step).
    pub fn forward_backward(
        &mut self,
        be: &B,
        batch: &TokenBatch,
        labels: &[u32],
        plan: Option<DropoutPlan>,
        want_input_grad: bool,
    ) -> Result<StepOutput<B::Act>> {
        self.forward_backward_perturbed(be, batch, labels, plan, None, want_input_grad)
    }

    /// [`Model::forward_backward`] at the word rows perturbed by `delta` (FreeLB's ascent steps).
    pub fn forward_backward_perturbed(
        &mut self,
        be: &B,
        batch: &TokenBatch,
        labels: &[u32],
        plan: Option<DropoutPlan>,
        delta: Option<&B::Act>,
        want_input_grad: bool,
    ) -> Result<StepOutput<B::Act>> {
        let Model { bert, adapter, head, grads } = self;
        pass(be, (bert, adapter.as_ref(), head), batch, labels, plan, delta, Some(grads), want_input_grad)
    }

    /// The loss and its gradient w.r.t. the (perturbed) word-embedding rows alone, in evaluation
    /// mode: what an embedding-space or HotFlip attack needs. No parameter gradient is computed.
    pub fn input_gradient(
        &self,
        be: &B,
        batch: &TokenBatch,
        labels: &[u32],
        delta: Option<&B::Act>,
    ) -> Result<StepOutput<B::Act>> {
        pass(be, (&self.bert, self.adapter.as_ref(), &self.head), batch, labels, None, delta, None, true)
    }

    /// Every trainable tensor with its gradient, in a fixed order: encoder (full fine-tuning),
    /// adapter, head.
    pub fn params(&mut self) -> Vec<Param<'_, B>> {
        let mut weights = vec![];
        let mut grads = vec![];
        let prefix = self.bert.cfg.family().prefix();
        if let Some(g) = self.grads.bert.as_mut() {
            weights.extend(self.bert.named_mut());
            grads.extend(g.named_mut());
        }
        if let (Some(a), Some(g)) = (self.adapter.as_mut(), self.grads.adapter.as_mut()) {
            weights.extend(prefixed(prefix, a.named_mut()));
            grads.extend(prefixed(prefix, g.named_mut()));
        }
        weights.extend(self.head.named_mut());
        grads.extend(self.grads.head.named_mut());
        weights
            .into_iter()
            .zip(grads)
            .map(|((name, weight), (_, grad))| Param { name, weight, grad })
            .collect()
    }
}

/// One forward + backward pass of a classifier; parameter gradients accumulate into `grads` when
/// given.
#[allow(clippy::too_many_arguments)]
fn pass<B: Backend>(
    be: &B,
    (bert, adapter, head): (&Bert<B::Weight>, Option<&Adapter<B::Weight>>, &ClassificationHead<B::Weight>),
    batch: &TokenBatch,
    labels: &[u32],
    plan: Option<DropoutPlan>,
    delta: Option<&B::Act>,
    grads: Option<&mut Grads<B::Act>>,
    want_input_grad: bool,
) -> Result<StepOutput<B::Act>> {
    ensure!(labels.len() == batch.batch, "{} labels for a batch of {}", labels.len(), batch.batch);
    // the head reads only the [CLS] rows: the last layer computes just those (after attention)
    let _range = crate::profile::range("forward + backward");
    let (cls, tape) = bert.forward_train(be, batch, adapter, delta, plan, true)?;
    let head_range = crate::profile::range("head + loss");
    let keys = (0..head.layers() as u64).map(|i| plan.and_then(|p| p.head(i))).collect();
    let (logits, head_saved) = head.forward_train(be, &cls, batch.batch, 1, keys)?;
    drop(cls);
    let (loss, dlogits) = be.cross_entropy(&logits, labels)?;
    if !loss.is_finite() {
        bail!("the loss is {loss}");
    }
    let (head_grads, encoder_grads) = match grads {
        Some(Grads { bert: gb, adapter: ga, head: gh }) => {
            (Some(gh), EncoderGrads { bert: gb.as_mut(), adapter: ga.as_mut() })
        }
        None => (None, EncoderGrads { bert: None, adapter: None }),
    };
    let dlast = head.backward(be, &head_saved, &dlogits, head_grads)?;
    drop(head_range);
    let input_grad = bert.backward(be, batch, adapter, &tape, dlast, encoder_grads, want_input_grad)?;
    Ok(StepOutput { loss, logits, input_grad })
}

/// A classifier as attacks and evaluation see it: a token batch in, class probabilities out. A
/// single model ([`Model`]), or a system of several, such as an AdpMixup mixture with per-input β
/// ([`super::mixture::Mixture`]), which an adaptive attack queries as a whole.
pub trait Classify<B: Backend> {
    fn probs(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Vec<f32>>>;
}

impl<B: Backend> Classify<B> for Model<B> {
    fn probs(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let (_, cols, logits) = be.download(&self.logits(be, batch)?)?;
        ensure_finite(&logits, "logit")?;
        Ok(logits.chunks(cols).map(|l| prediction(l.to_vec()).probs).collect())
    }
}

/// Class probabilities and the predicted label of one input.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub label: usize,
    pub logits: Vec<f32>,
    pub probs: Vec<f32>,
}

/// Refuses a model output that holds NaN or ±inf (weights or inputs that overflow): such a result
/// only looks valid.
pub fn ensure_finite(values: &[f32], what: &str) -> Result<()> {
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        bail!("the model produced a non-finite {what} ({v})");
    }
    Ok(())
}

/// Softmax probabilities and argmax of a logit vector.
pub fn prediction(logits: Vec<f32>) -> Prediction {
    let probs = crate::adapter::mix::softmax(&logits);
    Prediction { label: argmax(&probs), logits, probs }
}

/// The index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| if p > best.1 { (i, p) } else { best })
        .0
}

/// `named` with `prefix` before every name.
fn prefixed<T>(prefix: &'static str, named: Vec<(String, T)>) -> impl Iterator<Item = (String, T)> {
    named.into_iter().map(move |(n, t)| (format!("{prefix}{n}"), t))
}
