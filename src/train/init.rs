//! Fresh adapters and heads, initialised as AdapterHub does.
//!
//! - `bert` init: both projections N(0, 0.02), biases zero (`init_bert_weights`);
//! - `mam` init: the down projection as torch's default Linear init (uniform ±1/√fan_in), the up
//!   projection and both biases zero, so the adapter starts as the identity;
//! - heads: every Linear N(0, initializer_range = 0.02), biases zero (the model's `_init_weights`).

use anyhow::{bail, Result};

use crate::adapter::{
    Adapter, AdapterKind, AdapterLayer, Bottleneck, BottleneckPart, ClassificationHead, Init,
};
use crate::backend::Activation;
use crate::rng::Rng;
use crate::weights::Tensor;

/// The shape and initialisation of a new adapter.
#[derive(Clone, Copy, Debug)]
pub struct AdapterSpec {
    pub kind: AdapterKind,
    /// hidden / bottleneck
    pub reduction: usize,
    pub activation: Activation,
    pub init: Init,
}

fn normal(rng: &mut Rng, shape: Vec<usize>, std: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| (rng.normal() * std) as f32).collect())
}

fn uniform(rng: &mut Rng, shape: Vec<usize>, bound: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect())
}

fn zeros(shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, vec![0.0; n])
}

/// A fresh bottleneck: biases zero; `bert` draws both projections N(0, 0.02), `mam` the down
/// projection U(±1/√hidden) and a zero up projection (drawn in the catalogue's order).
fn bottleneck(rng: &mut Rng, hidden: usize, r: usize, init: Init) -> Bottleneck<Tensor> {
    let made = Bottleneck::build(|part| {
        let shape = part.shape(r, hidden);
        Ok(match (init, part) {
            (_, BottleneckPart::DownB | BottleneckPart::UpB) => zeros(shape),
            (Init::Bert, _) => normal(rng, shape, 0.02),
            (Init::Mam, BottleneckPart::DownW) => uniform(rng, shape, 1.0 / (hidden as f64).sqrt()),
            (Init::Mam, BottleneckPart::UpW) => zeros(shape),
        })
    });
    made.expect("drawing a tensor cannot fail")
}

pub fn new_adapter(
    name: &str,
    spec: &AdapterSpec,
    layers: usize,
    hidden: usize,
    rng: &mut Rng,
) -> Result<Adapter<Tensor>> {
    if spec.reduction == 0 || hidden % spec.reduction != 0 {
        bail!("reduction factor {} does not divide the hidden size {hidden}", spec.reduction);
    }
    let r = hidden / spec.reduction;
    let layers = (0..layers)
        .map(|_| {
            let attention =
                (spec.kind == AdapterKind::DoubleSeqBn).then(|| bottleneck(rng, hidden, r, spec.init));
            AdapterLayer { attention, output: bottleneck(rng, hidden, r, spec.init) }
        })
        .collect();
    Ok(Adapter { name: name.to_string(), kind: spec.kind, activation: spec.activation, layers })
}

/// AdapterHub's default head (two linear layers, tanh): weights N(0, 0.02), biases zero, drawn
/// in the catalogue's order.
pub fn new_head(name: &str, hidden: usize, labels: usize, rng: &mut Rng) -> ClassificationHead<Tensor> {
    const LAYERS: usize = 2;
    let made = ClassificationHead::build(name, LAYERS, Activation::Tanh, labels, |part| {
        let shape = part.shape(LAYERS, hidden, labels);
        Ok(if part.bias { zeros(shape) } else { normal(rng, shape, 0.02) })
    });
    made.expect("drawing a tensor cannot fail")
}
