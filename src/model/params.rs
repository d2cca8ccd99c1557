//! Named views of the adapters' and heads' tensors, in AdapterHub naming, so that the optimizer,
//! the gradient buffers and the checkpoints walk the same list in the same order (the encoder's is
//! [`crate::model::bert::catalogue`]).
//!
//! The views are generic in the element type: `W` is a parameter on a backend, and the same
//! structs with `W = Act` hold the gradients (and the optimizer moments).

use crate::adapter::{Adapter, Bottleneck, BottleneckPart, ClassificationHead, HeadPart};

fn bottleneck<'a, W>(out: &mut Vec<(String, &'a mut W)>, base: &str, b: &'a mut Bottleneck<W>) {
    for (part, t) in BottleneckPart::ALL.into_iter().zip(b.tensors_mut()) {
        out.push((format!("{base}.{}", part.name()), t));
    }
}

impl<W> Adapter<W> {
    /// `encoder.layer.{l}.[attention.]output.adapters.{name}.…`: AdapterHub's names under the
    /// encoder's prefix (`bert.`, `roberta.`), which the model adds ([`crate::model::classify::Model::params`]).
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let mut out = vec![];
        for (l, layer) in self.layers.iter_mut().enumerate() {
            if let Some(a) = layer.attention.as_mut() {
                let base = format!("encoder.layer.{l}.attention.output.adapters.{}", self.name);
                bottleneck(&mut out, &base, a);
            }
            let base = format!("encoder.layer.{l}.output.adapters.{}", self.name);
            bottleneck(&mut out, &base, &mut layer.output);
        }
        out
    }
}

impl<W> ClassificationHead<W> {
    /// `heads.{name}.1.…`, `heads.{name}.4.…`, … (AdapterHub names).
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let p = format!("heads.{}", self.name);
        let parts = HeadPart::all(self.layers());
        parts.zip(self.tensors_mut()).map(|(part, t)| (format!("{p}.{}", part.name()), t)).collect()
    }
}
