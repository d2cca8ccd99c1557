//! AdapterHub's classification head: `heads.{name}.1` (Linear H→H), tanh, `heads.{name}.4`
//! (Linear H→labels) on the [CLS] vector, with dropout before each linear layer in training.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use super::mix::RowMix;
use crate::backend::{Activation, Backend, DropKey};
use crate::model::weights::{Tensor, WeightFile};

/// AdapterHub's two-layer classification head on the [CLS] vector.
pub struct ClassificationHead<W> {
    pub name: String,
    pub dense_w: W,
    pub dense_b: W,
    pub out_w: W,
    pub out_b: W,
    pub num_labels: usize,
}

/// Names of the heads stored in a file.
pub fn head_names(file: &WeightFile) -> BTreeSet<String> {
    file.names().filter_map(|n| Some(n.strip_prefix("heads.")?.split('.').next()?.to_string())).collect()
}

impl ClassificationHead<Tensor> {
    pub fn load(file: &WeightFile, name: &str, hidden: usize) -> Result<Self> {
        let p = format!("heads.{name}");
        let out_w = file.tensor_any_shape(&format!("{p}.4.weight"))?;
        if out_w.shape().len() != 2 || out_w.shape()[1] != hidden || out_w.shape()[0] < 2 {
            bail!(
                "{}: `{p}.4.weight` has shape {:?}, expected [labels >= 2, {hidden}]",
                file.path().display(),
                out_w.shape()
            );
        }
        let num_labels = out_w.shape()[0];
        Ok(ClassificationHead {
            name: name.to_string(),
            dense_w: file.tensor(&format!("{p}.1.weight"), &[hidden, hidden])?,
            dense_b: file.tensor(&format!("{p}.1.bias"), &[hidden])?,
            out_b: file.tensor(&format!("{p}.4.bias"), &[num_labels])?,
            out_w,
            num_labels,
        })
    }

    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<ClassificationHead<B::Weight>> {
        self.map(|t| be.weight(t))
    }
}

/// Activations of the head kept for its backward.
pub struct HeadSaved<A> {
    /// [CLS] rows after dropout
    cls: A,
    /// dense layer before tanh
    pre: A,
    /// after tanh and dropout
    hidden: A,
    drop: [Option<DropKey>; 2],
    rows: Vec<usize>,
    total_rows: usize,
}

impl<W> ClassificationHead<W> {
    /// The same structure with every tensor mapped by `f` (to a backend, to gradient buffers).
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<ClassificationHead<V>> {
        Ok(ClassificationHead {
            name: self.name.clone(),
            dense_w: f(&self.dense_w)?,
            dense_b: f(&self.dense_b)?,
            out_w: f(&self.out_w)?,
            out_b: f(&self.out_b)?,
            num_labels: self.num_labels,
        })
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
        let cls = be.gather_rows(hidden, &rows)?;
        let h = be.linear(&cls, &self.dense_w, &self.dense_b, Activation::Tanh, None)?;
        be.linear(&h, &self.out_w, &self.out_b, Activation::Identity, None)
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
        let y = be.linear(cls, &self.dense_w, &self.dense_b, Activation::Identity, None)?;
        let h = be.mix_rows(&y, m, &beta, Activation::Tanh, None)?;
        let y = be.linear(&h, &self.out_w, &self.out_b, Activation::Identity, None)?;
        be.mix_rows(&y, m, &beta, Activation::Identity, None)
    }

    /// Forward of a training step (dropout keys before each linear layer), keeping what
    /// [`ClassificationHead::backward`] needs.
    pub fn forward_train<B: Backend<Weight = W>>(
        &self,
        be: &B,
        hidden: &B::Act,
        batch: usize,
        seq: usize,
        drop: [Option<DropKey>; 2],
    ) -> Result<(B::Act, HeadSaved<B::Act>)> {
        let rows: Vec<usize> = (0..batch).map(|b| b * seq).collect();
        let mut cls = be.gather_rows(hidden, &rows)?;
        if let Some(k) = drop[0] {
            cls = be.dropout(cls, k)?;
        }
        let pre = be.linear(&cls, &self.dense_w, &self.dense_b, Activation::Identity, None)?;
        let mut h = be.activation(&pre, Activation::Tanh)?;
        if let Some(k) = drop[1] {
            h = be.dropout(h, k)?;
        }
        let logits = be.linear(&h, &self.out_w, &self.out_b, Activation::Identity, None)?;
        Ok((logits, HeadSaved { cls, pre, hidden: h, drop, rows, total_rows: batch * seq }))
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
        let (out, dense) = match grads {
            Some(g) => (Some((&mut g.out_w, &mut g.out_b)), Some((&mut g.dense_w, &mut g.dense_b))),
            None => (None, None),
        };
        let mut dh = be.linear_backward(dlogits, &s.hidden, &self.out_w, out, true)?.context("head dx")?;
        if let Some(k) = s.drop[1] {
            dh = be.dropout(dh, k)?;
        }
        let dpre = be.activation_backward(dh, &s.pre, Activation::Tanh)?;
        let mut dcls = be.linear_backward(&dpre, &s.cls, &self.dense_w, dense, true)?.context("head dx")?;
        if let Some(k) = s.drop[0] {
            dcls = be.dropout(dcls, k)?;
        }
        be.scatter_rows(&dcls, &s.rows, s.total_rows)
    }
}
