//! Bottleneck adapters and classification heads in AdapterHub's format.
//!
//! Tensor names follow AdapterHub (`adapters` 1.x):
//! `bert.encoder.layer.{i}.output.adapters.{name}.adapter_down.0.{weight,bias}`,
//! `...adapter_up.{weight,bias}` (and `attention.output.adapters.{name}` for the second adapter of
//! `double_seq_bn`); heads `heads.{name}.1` (Linear H→H), tanh, `heads.{name}.4` (Linear H→labels).

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use crate::backend::{Activation, Backend};
use crate::model::weights::{Tensor, WeightFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterKind {
    /// Pfeiffer: one adapter after the FFN.
    SeqBn,
    /// Houlsby: one after the attention output projection, one after the FFN.
    DoubleSeqBn,
}

/// One bottleneck: `A(z) = up · act(down · z + down_b) + up_b`.
pub struct Bottleneck<W> {
    pub down_w: W,
    pub down_b: W,
    pub up_w: W,
    pub up_b: W,
}

pub struct AdapterLayer<W> {
    /// after the FFN (`output.adapters.<name>`)
    pub output: Bottleneck<W>,
    /// after the attention projection (`attention.output.adapters.<name>`), double_seq_bn only
    pub attention: Option<Bottleneck<W>>,
}

pub struct Adapter<W> {
    pub name: String,
    pub kind: AdapterKind,
    pub activation: Activation,
    pub layers: Vec<AdapterLayer<W>>,
}

/// AdapterHub's two-layer classification head on the [CLS] vector.
pub struct ClassificationHead<W> {
    pub name: String,
    pub dense_w: W,
    pub dense_b: W,
    pub out_w: W,
    pub out_b: W,
    pub num_labels: usize,
}

/// Names of the adapters stored in a file.
pub fn adapter_names(file: &WeightFile) -> BTreeSet<String> {
    file.names()
        .filter_map(|n| {
            let rest = n.split(".output.adapters.").nth(1)?;
            Some(rest.split('.').next()?.to_string())
        })
        .collect()
}

/// Names of the heads stored in a file.
pub fn head_names(file: &WeightFile) -> BTreeSet<String> {
    file.names().filter_map(|n| Some(n.strip_prefix("heads.")?.split('.').next()?.to_string())).collect()
}

/// Picks `name`, or the only adapter/head in the file when `name` is `None`.
pub fn resolve_name(
    file: &WeightFile,
    name: Option<&str>,
    what: &str,
    available: BTreeSet<String>,
) -> Result<String> {
    match name {
        Some(n) if available.contains(n) => Ok(n.to_string()),
        Some(n) => bail!("{}: no {what} named `{n}` (found: {})", file.path().display(), join(&available)),
        None if available.len() == 1 => Ok(available.into_iter().next().unwrap()),
        None if available.is_empty() => bail!("{}: no {what} found", file.path().display()),
        None => {
            bail!("{}: several {what}s ({}); choose one by name", file.path().display(), join(&available))
        }
    }
}

fn join(s: &BTreeSet<String>) -> String {
    s.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn find(file: &WeightFile, name: &str) -> Option<String> {
    ["bert.", ""].iter().map(|p| format!("{p}{name}")).find(|n| file.contains(n))
}

fn bottleneck(file: &WeightFile, base: &str, hidden: usize) -> Result<Option<Bottleneck<Tensor>>> {
    let Some(down) = find(file, &format!("{base}.adapter_down.0.weight")) else {
        return Ok(None);
    };
    let dw = file.tensor_any_shape(&down)?;
    if dw.shape().len() != 2 || dw.shape()[1] != hidden || dw.shape()[0] == 0 {
        bail!(
            "{}: `{down}` has shape {:?}, expected [bottleneck, {hidden}]",
            file.path().display(),
            dw.shape()
        );
    }
    let r = dw.shape()[0];
    let get = |suffix: &str, shape: &[usize]| -> Result<Tensor> {
        let n = find(file, &format!("{base}.{suffix}"))
            .with_context(|| format!("{}: `{base}.{suffix}` missing", file.path().display()))?;
        file.tensor(&n, shape)
    };
    Ok(Some(Bottleneck {
        down_w: dw,
        down_b: get("adapter_down.0.bias", &[r])?,
        up_w: get("adapter_up.weight", &[hidden, r])?,
        up_b: get("adapter_up.bias", &[hidden])?,
    }))
}

impl Adapter<Tensor> {
    /// Loads adapter `name` (AdapterHub names) for a model with `layers` layers of width `hidden`.
    /// The placement (seq_bn or double_seq_bn) follows from which modules are present.
    pub fn load(
        file: &WeightFile,
        name: &str,
        layers: usize,
        hidden: usize,
        activation: Activation,
    ) -> Result<Self> {
        let mut out = Vec::with_capacity(layers);
        for l in 0..layers {
            let output = bottleneck(file, &format!("encoder.layer.{l}.output.adapters.{name}"), hidden)?
                .with_context(|| {
                    format!("{}: adapter `{name}` has no module in layer {l}", file.path().display())
                })?;
            let attention =
                bottleneck(file, &format!("encoder.layer.{l}.attention.output.adapters.{name}"), hidden)?;
            out.push(AdapterLayer { output, attention });
        }
        let n_attn = out.iter().filter(|l| l.attention.is_some()).count();
        let kind = match n_attn {
            0 => AdapterKind::SeqBn,
            n if n == layers => AdapterKind::DoubleSeqBn,
            n => bail!(
                "{}: adapter `{name}` has attention modules in {n} of {layers} layers",
                file.path().display()
            ),
        };
        Ok(Adapter { name: name.to_string(), kind, activation, layers: out })
    }

    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<Adapter<B::Weight>> {
        let bn = |b: &Bottleneck<Tensor>| -> Result<Bottleneck<B::Weight>> {
            Ok(Bottleneck {
                down_w: be.weight(&b.down_w)?,
                down_b: be.weight(&b.down_b)?,
                up_w: be.weight(&b.up_w)?,
                up_b: be.weight(&b.up_b)?,
            })
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(AdapterLayer {
                    output: bn(&l.output)?,
                    attention: l.attention.as_ref().map(bn).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Adapter { name: self.name.clone(), kind: self.kind, activation: self.activation, layers })
    }
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
        Ok(ClassificationHead {
            name: self.name.clone(),
            dense_w: be.weight(&self.dense_w)?,
            dense_b: be.weight(&self.dense_b)?,
            out_w: be.weight(&self.out_w)?,
            out_b: be.weight(&self.out_b)?,
            num_labels: self.num_labels,
        })
    }
}

impl<W> ClassificationHead<W> {
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
}
