//! Bottleneck adapters and classification heads in AdapterHub's format.
//!
//! Tensor names follow AdapterHub (`adapters` 1.x):
//! `bert.encoder.layer.{i}.output.adapters.{name}.adapter_down.0.{weight,bias}` (`roberta.` for
//! RoBERTa),
//! `...adapter_up.{weight,bias}` (and `attention.output.adapters.{name}` for the second adapter of
//! `double_seq_bn`); heads in [`head`].

pub mod config;
mod head;
pub mod mix;
pub mod router;
pub use config::Init;
pub use head::{head_names, ClassificationHead, Dense, HeadPart, HeadSaved, MAX_HEAD_LAYERS};

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use crate::backend::{Activation, Backend};
use crate::weights::{Tensor, WeightFile};

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

/// One tensor of a bottleneck: the catalogue that loading, zero and random init, mapping and the
/// checkpoint names all walk, in [`BottleneckPart::ALL`]'s order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BottleneckPart {
    DownW,
    DownB,
    UpW,
    UpB,
}

impl BottleneckPart {
    pub const ALL: [BottleneckPart; 4] =
        [BottleneckPart::DownW, BottleneckPart::DownB, BottleneckPart::UpW, BottleneckPart::UpB];

    /// The AdapterHub name under the module (`….adapters.<name>.`).
    pub fn name(self) -> &'static str {
        match self {
            BottleneckPart::DownW => "adapter_down.0.weight",
            BottleneckPart::DownB => "adapter_down.0.bias",
            BottleneckPart::UpW => "adapter_up.weight",
            BottleneckPart::UpB => "adapter_up.bias",
        }
    }

    /// The shape for bottleneck size `r` in a model of `hidden`.
    pub fn shape(self, r: usize, hidden: usize) -> Vec<usize> {
        match self {
            BottleneckPart::DownW => vec![r, hidden],
            BottleneckPart::DownB => vec![r],
            BottleneckPart::UpW => vec![hidden, r],
            BottleneckPart::UpB => vec![hidden],
        }
    }
}

impl<W> Bottleneck<W> {
    /// A bottleneck made tensor by tensor, in [`BottleneckPart::ALL`]'s order.
    pub fn build(mut make: impl FnMut(BottleneckPart) -> Result<W>) -> Result<Self> {
        Ok(Bottleneck {
            down_w: make(BottleneckPart::DownW)?,
            down_b: make(BottleneckPart::DownB)?,
            up_w: make(BottleneckPart::UpW)?,
            up_b: make(BottleneckPart::UpB)?,
        })
    }

    pub fn get(&self, part: BottleneckPart) -> &W {
        match part {
            BottleneckPart::DownW => &self.down_w,
            BottleneckPart::DownB => &self.down_b,
            BottleneckPart::UpW => &self.up_w,
            BottleneckPart::UpB => &self.up_b,
        }
    }

    /// Every tensor, mutable, in [`BottleneckPart::ALL`]'s order.
    pub fn tensors_mut(&mut self) -> [&mut W; 4] {
        let Bottleneck { down_w, down_b, up_w, up_b } = self;
        [down_w, down_b, up_w, up_b]
    }

    pub fn map<V>(&self, f: &mut impl FnMut(&W) -> Result<V>) -> Result<Bottleneck<V>> {
        Bottleneck::build(|p| f(self.get(p)))
    }
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

/// Names of the adapters stored in a file.
pub fn adapter_names(file: &WeightFile) -> BTreeSet<String> {
    file.names()
        .filter_map(|n| {
            let rest = n.split(".output.adapters.").nth(1)?;
            Some(rest.split('.').next()?.to_string())
        })
        .collect()
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
    crate::weights::ENCODER_PREFIXES.iter().map(|p| format!("{p}{name}")).find(|n| file.contains(n))
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
    let b = Bottleneck::build(|part| {
        if part == BottleneckPart::DownW {
            return Ok(dw.clone());
        }
        let suffix = part.name();
        let n = find(file, &format!("{base}.{suffix}"))
            .with_context(|| format!("{}: `{base}.{suffix}` missing", file.path().display()))?;
        file.tensor(&n, &part.shape(r, hidden))
    })?;
    Ok(Some(b))
}

/// A bottleneck that adds exactly nothing (`A(z) = 0`): the stand-in for a layer an adapter
/// leaves out, so that every layer has the same structure (for mixing and stacking).
fn zero_bottleneck(r: usize, hidden: usize) -> Bottleneck<Tensor> {
    let zero = |shape: Vec<usize>| Tensor::from_vec(shape.clone(), vec![0.0; shape.iter().product()]);
    Bottleneck::build(|part| Ok(zero(part.shape(r, hidden)))).expect("zeros cannot fail")
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
        Self::load_layers(file, name, layers, hidden, activation, &BTreeSet::new())
    }

    /// Loads adapter `name` as its AdapterHub config describes it: the placement must be the
    /// config's, `leave_out` layers have no module (and add nothing), and `scaling` is folded into
    /// each up projection (`s·A(z) = (s·W_up)·act(…) + s·b_up`).
    pub fn load_configured(
        file: &WeightFile,
        name: &str,
        layers: usize,
        hidden: usize,
        settings: &config::AdapterSettings,
    ) -> Result<Self> {
        let mut a = Self::load_layers(file, name, layers, hidden, settings.activation, &settings.leave_out)?;
        if a.kind != settings.kind {
            bail!(
                "{}: the config describes a {:?} adapter but the weights of `{name}` are {:?}",
                file.path().display(),
                settings.kind,
                a.kind
            );
        }
        if settings.scaling != 1.0 {
            let s = settings.scaling;
            for l in &mut a.layers {
                for b in std::iter::once(&mut l.output).chain(l.attention.as_mut()) {
                    for t in [&mut b.up_w, &mut b.up_b] {
                        t.data_mut().iter_mut().for_each(|v| *v *= s);
                        if t.data().iter().any(|v| !v.is_finite()) {
                            bail!(
                                "{}: `scaling` {s:e} makes adapter `{name}`'s weights overflow",
                                file.path().display()
                            );
                        }
                    }
                }
            }
        }
        Ok(a)
    }

    fn load_layers(
        file: &WeightFile,
        name: &str,
        layers: usize,
        hidden: usize,
        activation: Activation,
        leave_out: &BTreeSet<usize>,
    ) -> Result<Self> {
        let path = file.path().display();
        // a module for a layer the model lacks is a mismatch, not something to ignore
        for n in file.names().filter(|n| n.contains(&format!(".adapters.{name}."))) {
            let layer =
                n.split("encoder.layer.").nth(1).and_then(|r| r.split('.').next()?.parse::<usize>().ok());
            match layer {
                Some(l) if l < layers => {}
                Some(l) => bail!(
                    "{path}: adapter `{name}` has a module in layer {l}, but the model has {layers} layers"
                ),
                None => bail!("{path}: `{n}` is not in a layer of the encoder"),
            }
        }
        let mut out: Vec<Option<AdapterLayer<Tensor>>> = Vec::with_capacity(layers);
        for l in 0..layers {
            let output = bottleneck(file, &format!("encoder.layer.{l}.output.adapters.{name}"), hidden)?;
            let attention =
                bottleneck(file, &format!("encoder.layer.{l}.attention.output.adapters.{name}"), hidden)?;
            match (output, leave_out.contains(&l)) {
                (Some(output), false) => out.push(Some(AdapterLayer { output, attention })),
                (None, true) if attention.is_none() => out.push(None),
                (None, false) => bail!("{path}: adapter `{name}` has no module in layer {l}"),
                (_, true) => {
                    bail!("{path}: adapter `{name}` has a module in layer {l}, which its config leaves out")
                }
            }
        }
        let present: Vec<&AdapterLayer<Tensor>> = out.iter().flatten().collect();
        let n_attn = present.iter().filter(|l| l.attention.is_some()).count();
        let kind = match n_attn {
            0 => AdapterKind::SeqBn,
            n if n == present.len() => AdapterKind::DoubleSeqBn,
            n => bail!("{path}: adapter `{name}` has attention modules in {n} of {} layers", present.len()),
        };
        let r = present
            .first()
            .with_context(|| format!("{path}: adapter `{name}` has no module"))?
            .output
            .down_w
            .shape()[0];
        let layers = out
            .into_iter()
            .map(|l| {
                l.unwrap_or_else(|| AdapterLayer {
                    output: zero_bottleneck(r, hidden),
                    attention: (kind == AdapterKind::DoubleSeqBn).then(|| zero_bottleneck(r, hidden)),
                })
            })
            .collect();
        Ok(Adapter { name: name.to_string(), kind, activation, layers })
    }

    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<Adapter<B::Weight>> {
        self.map(|t| be.weight(t))
    }
}

impl<W> Adapter<W> {
    /// The same structure with every tensor mapped by `f` (to a backend, to gradient buffers).
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<Adapter<V>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(AdapterLayer {
                output: l.output.map(&mut f)?,
                attention: l.attention.as_ref().map(|a| a.map(&mut f)).transpose()?,
            });
        }
        Ok(Adapter { name: self.name.clone(), kind: self.kind, activation: self.activation, layers })
    }
}

/// An adapter and its head from one safetensors file in AdapterHub naming: the adapter `name`
/// (default: the only one), the head of the same name (else `head_name`, else the only one), the
/// activation `act` (default: AdapterHub's for the placement: ReLU for seq_bn, swish for
/// double_seq_bn).
pub fn load_with_head(
    file: &WeightFile,
    name: Option<&str>,
    head_name: Option<&str>,
    act: Option<Activation>,
    layers: usize,
    hidden: usize,
) -> Result<(Adapter<Tensor>, ClassificationHead<Tensor>)> {
    let name = resolve_name(file, name, "adapter", adapter_names(file))?;
    let heads = head_names(file);
    let head_name = match head_name {
        Some(h) => resolve_name(file, Some(h), "head", heads)?,
        None if heads.contains(&name) => name.clone(),
        None => resolve_name(file, None, "head", heads)?,
    };
    let probe = Adapter::load(file, &name, layers, hidden, Activation::Relu)?;
    let activation = act.unwrap_or(match probe.kind {
        AdapterKind::SeqBn => Activation::Relu,
        AdapterKind::DoubleSeqBn => Activation::Silu,
    });
    let adapter = Adapter { activation, ..probe };
    Ok((adapter, ClassificationHead::load(file, &head_name, hidden)?))
}
