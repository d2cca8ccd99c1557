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
fn linear_module(i: usize) -> usize {
    3 * i + 1
}

/// One tensor of a head: the catalogue that loading, random init, `map` and the optimizer's and
/// checkpoints' names walk (as [`super::BottleneckPart`] is the bottleneck's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadPart {
    /// the linear layer (0-based; the last is the output layer)
    pub layer: usize,
    /// the bias (else the weight)
    pub bias: bool,
}

impl HeadPart {
    /// Every tensor of a head of `layers` linear layers, in order: each layer's weight, then its bias.
    pub fn all(layers: usize) -> impl Iterator<Item = HeadPart> {
        (0..layers).flat_map(|layer| [false, true].map(|bias| HeadPart { layer, bias }))
    }

    /// The AdapterHub name under `heads.{name}.`: `1.weight`, `1.bias`, `4.weight`, …
    pub fn name(self) -> String {
        format!("{}.{}", linear_module(self.layer), if self.bias { "bias" } else { "weight" })
    }

    /// The shape in a head of `layers` linear layers on a model of `hidden`, with `labels` outputs.
    pub fn shape(self, layers: usize, hidden: usize, labels: usize) -> Vec<usize> {
        let out = if self.layer + 1 == layers { labels } else { hidden };
        if self.bias {
            vec![out]
        } else {
            vec![out, hidden]
        }
    }
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
        let full = |part: HeadPart| format!("{p}.{}", part.name());
        let expected: BTreeSet<String> = HeadPart::all(layers).map(full).collect();
        let prefix = format!("{p}.");
        if let Some(extra) = file.names().find(|n| n.starts_with(&prefix) && !expected.contains(*n)) {
            bail!(
                "{}: head `{name}` has tensor `{extra}`, which a {layers}-layer classification head does not have",
                file.path().display()
            );
        }
        let last = full(HeadPart { layer: layers - 1, bias: false });
        let out_w = file.tensor_any_shape(&last)?;
        if out_w.shape().len() != 2 || out_w.shape()[1] != hidden || out_w.shape()[0] < 2 {
            bail!(
                "{}: `{last}` has shape {:?}, expected [labels >= 2, {hidden}]",
                file.path().display(),
                out_w.shape()
            );
        }
        let labels = out_w.shape()[0];
        Self::build(name, layers, activation, labels, |part| {
            file.tensor(&full(part), &part.shape(layers, hidden, labels))
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

impl<W> ClassificationHead<W> {
    /// A head of `layers` linear layers made tensor by tensor, in [`HeadPart::all`]'s order.
    pub fn build(
        name: &str,
        layers: usize,
        activation: Activation,
        num_labels: usize,
        mut make: impl FnMut(HeadPart) -> Result<W>,
    ) -> Result<Self> {
        ensure!(layers >= 1, "a classification head has at least one linear layer");
        let mut dense = |layer| -> Result<Dense<W>> {
            Ok(Dense { w: make(HeadPart { layer, bias: false })?, b: make(HeadPart { layer, bias: true })? })
        };
        let hidden = (0..layers - 1).map(&mut dense).collect::<Result<_>>()?;
        let out = dense(layers - 1)?;
        Ok(ClassificationHead { name: name.to_string(), hidden, out, activation, num_labels })
    }

    pub fn get(&self, part: HeadPart) -> &W {
        let d = self.hidden.get(part.layer).unwrap_or(&self.out);
        if part.bias {
            &d.b
        } else {
            &d.w
        }
    }

    /// Every tensor, mutable, in [`HeadPart::all`]'s order.
    pub fn tensors_mut(&mut self) -> Vec<&mut W> {
        let layers = self.hidden.iter_mut().chain(std::iter::once(&mut self.out));
        layers.flat_map(|d| [&mut d.w, &mut d.b]).collect()
    }

    /// The same structure with every tensor mapped by `f` (to a backend, to gradient buffers).
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<ClassificationHead<V>> {
        ClassificationHead::build(&self.name, self.layers(), self.activation, self.num_labels, |p| {
            f(self.get(p))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_follows_adapterhubs_module_layout() {
        // AdapterHub's ClassificationHead: Dropout, Linear, Activation per hidden layer, then
        // Dropout, Linear; a 3-layer head has its linear layers at modules 1, 4 and 7
        let parts: Vec<_> = HeadPart::all(3).map(|p| (p.name(), p.shape(3, 8, 5))).collect();
        let want = [
            ("1.weight", vec![8, 8]),
            ("1.bias", vec![8]),
            ("4.weight", vec![8, 8]),
            ("4.bias", vec![8]),
            ("7.weight", vec![5, 8]),
            ("7.bias", vec![5]),
        ];
        assert_eq!(parts, want.map(|(n, s)| (n.to_string(), s)));

        // build, get and tensors_mut walk the same order
        let mut k = 0;
        let mut head = ClassificationHead::build("h", 3, Activation::Relu, 5, |p| {
            k += 1;
            Ok((p, k))
        })
        .unwrap();
        for p in HeadPart::all(3) {
            assert_eq!(head.get(p).0, p);
        }
        let order: Vec<usize> = head.tensors_mut().into_iter().map(|t| t.1).collect();
        assert_eq!(order, (1..=6).collect::<Vec<_>>());
    }
}
