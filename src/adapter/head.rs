//! AdapterHub's classification head on the [CLS] vector: `heads.{name}.1` (Linear H→H), the
//! activation, `heads.{name}.4` (Linear H→labels) by default; `layers` linear layers in general
//! (modules 1, 4, 7, …), with dropout before each linear layer in training.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};

use super::mix::RowMix;
use crate::backend::{Activation, Backend, DropKey};
use crate::weights::{Tensor, WeightFile};

/// One linear layer `y = x·Wᵀ + b`.
pub struct Dense<W> {
    pub w: W,
    pub b: W,
}

/// AdapterHub's classification head on the [CLS] vector: `hidden` H→H layers, each followed by
/// `activation`, then `out` (H→labels). AdapterHub's default (and what admix trains) is one hidden
/// layer with tanh (`layers: 2` in `head_config.json`).
pub struct ClassificationHead<W> {
    pub name: String,
    pub hidden: Vec<Dense<W>>,
    pub out: Dense<W>,
    pub activation: Activation,
    pub num_labels: usize,
}

/// The most linear layers a head may have (each has its own dropout site in training).
pub const MAX_HEAD_LAYERS: usize = 8;

/// Names of the heads stored in a file.
pub fn head_names(file: &WeightFile) -> BTreeSet<String> {
    file.names().filter_map(|n| Some(n.strip_prefix("heads.")?.split('.').next()?.to_string())).collect()
}

/// AdapterHub's module index of linear layer `i` of a head (`Dropout, Linear, Activation` per
/// hidden layer, then `Dropout, Linear`): 1, 4, 7, …
pub fn linear_module(i: usize) -> usize {
    3 * i + 1
}

impl ClassificationHead<Tensor> {
    /// AdapterHub's default head: two linear layers with tanh between them.
    pub fn load(file: &WeightFile, name: &str, hidden: usize) -> Result<Self> {
        Self::load_with(file, name, hidden, 2, Activation::Tanh)
    }

    /// A head of `layers` linear layers (`head_config.json`'s `layers`) with `activation` between
    /// them; a file whose tensors say otherwise is an error.
    pub fn load_with(
        file: &WeightFile,
        name: &str,
        hidden: usize,
        layers: usize,
        activation: Activation,
    ) -> Result<Self> {
        let p = format!("heads.{name}");
        if layers == 0 || layers > MAX_HEAD_LAYERS {
            bail!("head `{name}` has {layers} layers; admix runs heads of 1 to {MAX_HEAD_LAYERS} layers");
        }
        // every tensor of the head must be one of its layers' (no layer is silently ignored)
        let expected: BTreeSet<String> = (0..layers)
            .flat_map(|i| ["weight", "bias"].map(|k| format!("{p}.{}.{k}", linear_module(i))))
            .collect();
        let prefix = format!("{p}.");
        if let Some(extra) = file.names().find(|n| n.starts_with(&prefix) && !expected.contains(*n)) {
            bail!(
                "{}: head `{name}` has tensor `{extra}`, which a {layers}-layer classification head does not have",
                file.path().display()
            );
        }
        let last = format!("{p}.{}.weight", linear_module(layers - 1));
        let out_w = file.tensor_any_shape(&last)?;
        if out_w.shape().len() != 2 || out_w.shape()[1] != hidden || out_w.shape()[0] < 2 {
            bail!(
                "{}: `{last}` has shape {:?}, expected [labels >= 2, {hidden}]",
                file.path().display(),
                out_w.shape()
            );
        }
        let num_labels = out_w.shape()[0];
        let dense = |i: usize| -> Result<Dense<Tensor>> {
            let m = linear_module(i);
            Ok(Dense {
                w: file.tensor(&format!("{p}.{m}.weight"), &[hidden, hidden])?,
                b: file.tensor(&format!("{p}.{m}.bias"), &[hidden])?,
            })
        };
        Ok(ClassificationHead {
            name: name.to_string(),
            hidden: (0..layers - 1).map(dense).collect::<Result<_>>()?,
            out: Dense {
                b: file.tensor(&format!("{p}.{}.bias", linear_module(layers - 1)), &[num_labels])?,
                w: out_w,
            },
            activation,
            num_labels,
        })
    }

    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<ClassificationHead<B::Weight>> {
        self.map(|t| be.weight(t))
    }
}

/// Activations of the head kept for its backward.
pub struct HeadSaved<A> {
    /// the input of each linear layer (after its dropout)
    inputs: Vec<A>,
    /// each hidden layer's output before its activation
    pre: Vec<A>,
    drop: Vec<Option<DropKey>>,
    rows: Vec<usize>,
    total_rows: usize,
}

impl<W> Dense<W> {
    fn map<V>(&self, f: &mut impl FnMut(&W) -> Result<V>) -> Result<Dense<V>> {
        Ok(Dense { w: f(&self.w)?, b: f(&self.b)? })
    }
}

impl<W> ClassificationHead<W> {
    /// The same structure with every tensor mapped by `f` (to a backend, to gradient buffers).
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<ClassificationHead<V>> {
        Ok(ClassificationHead {
            name: self.name.clone(),
            hidden: self.hidden.iter().map(|d| d.map(&mut f)).collect::<Result<_>>()?,
            out: self.out.map(&mut f)?,
            activation: self.activation,
            num_labels: self.num_labels,
        })
    }

    /// Linear layers in all (AdapterHub's `layers`).
    pub fn layers(&self) -> usize {
        self.hidden.len() + 1
    }

    /// Logits `[B, labels]` from the last hidden state `[B*S, H]` ([CLS] = first token).
    pub fn forward<B: Backend<Weight = W>>(
        &self,
        be: &B,
        hidden: &B::Act,
        batch: usize,
        seq: usize,
    ) -> Result<B::Act> {
        let rows: Vec<usize> = (0..batch).map(|b| b * seq).collect();
        let mut h = be.gather_rows(hidden, &rows)?;
        for d in &self.hidden {
            h = be.linear(&h, &d.w, &d.b, self.activation, None)?;
        }
        be.linear(&h, &self.out.w, &self.out.b, Activation::Identity, None)
    }

    /// Logits `[B, labels]` of `m` stacked heads ([`super::mix::stack_heads`]) mixed per sample
    /// by `mix`, from the [CLS] rows `[B, H]`.
    pub fn forward_mixed<B: Backend<Weight = W>>(
        &self,
        be: &B,
        cls: &B::Act,
        mix: &RowMix,
    ) -> Result<B::Act> {
        let (m, beta) = (mix.m, mix.per_row(0..mix.batch()));
        let mut h = None;
        for d in &self.hidden {
            let y = be.linear(h.as_ref().unwrap_or(cls), &d.w, &d.b, Activation::Identity, None)?;
            h = Some(be.mix_rows(&y, m, &beta, self.activation, None)?);
        }
        let y = be.linear(h.as_ref().unwrap_or(cls), &self.out.w, &self.out.b, Activation::Identity, None)?;
        be.mix_rows(&y, m, &beta, Activation::Identity, None)
    }

    /// Forward of a training step (`drop[i]`: the dropout before linear layer `i`), keeping what
    /// [`ClassificationHead::backward`] needs.
    pub fn forward_train<B: Backend<Weight = W>>(
        &self,
        be: &B,
        hidden: &B::Act,
        batch: usize,
        seq: usize,
        drop: Vec<Option<DropKey>>,
    ) -> Result<(B::Act, HeadSaved<B::Act>)> {
        ensure!(
            drop.len() == self.layers(),
            "{} dropout keys for a head of {} layers",
            drop.len(),
            self.layers()
        );
        let rows: Vec<usize> = (0..batch).map(|b| b * seq).collect();
        let mut x = be.gather_rows(hidden, &rows)?;
        let (mut inputs, mut pre) = (vec![], vec![]);
        for (d, key) in self.hidden.iter().zip(&drop) {
            if let Some(k) = *key {
                x = be.dropout(x, k)?;
            }
            let p = be.linear(&x, &d.w, &d.b, Activation::Identity, None)?;
            inputs.push(x);
            x = be.activation(&p, self.activation)?;
            pre.push(p);
        }
        if let Some(k) = drop[self.hidden.len()] {
            x = be.dropout(x, k)?;
        }
        let logits = be.linear(&x, &self.out.w, &self.out.b, Activation::Identity, None)?;
        inputs.push(x);
        Ok((logits, HeadSaved { inputs, pre, drop, rows, total_rows: batch * seq }))
    }

    /// Backward from the logits' gradient: accumulates into `grads` (when trainable) and returns
    /// the gradient of the last hidden state `[B*S, H]`.
    pub fn backward<B: Backend<Weight = W>>(
        &self,
        be: &B,
        s: &HeadSaved<B::Act>,
        dlogits: &B::Act,
        grads: Option<&mut ClassificationHead<B::Act>>,
    ) -> Result<B::Act> {
        let n = self.hidden.len();
        let (mut g_hidden, g_out) = match grads {
            Some(g) => (
                g.hidden.iter_mut().map(|d| Some((&mut d.w, &mut d.b))).collect(),
                Some((&mut g.out.w, &mut g.out.b)),
            ),
            None => ((0..n).map(|_| None).collect::<Vec<_>>(), None),
        };
        let mut dx =
            be.linear_backward(dlogits, &s.inputs[n], &self.out.w, g_out, true)?.context("head dx")?;
        if let Some(k) = s.drop[n] {
            dx = be.dropout(dx, k)?;
        }
        for i in (0..n).rev() {
            let dpre = be.activation_backward(dx, &s.pre[i], self.activation)?;
            dx = be
                .linear_backward(&dpre, &s.inputs[i], &self.hidden[i].w, g_hidden[i].take(), true)?
                .context("head dx")?;
            if let Some(k) = s.drop[i] {
                dx = be.dropout(dx, k)?;
            }
        }
        be.scatter_rows(&dx, &s.rows, s.total_rows)
    }
}
