//! Named views of the trainable tensors, in AdapterHub / Hugging Face naming, so that the
//! optimizer, the gradient buffers and the checkpoints walk the same list in the same order.
//!
//! The views are generic in the element type: `W` is a parameter on a backend, and the same
//! structs with `W = Act` hold the gradients (and the optimizer moments).

use crate::adapter::{linear_module, Adapter, Bottleneck, ClassificationHead};
use crate::backend::EmbeddingWeights;
use crate::model::bert::Bert;
use crate::model::layer::Layer;

fn bottleneck<'a, W>(out: &mut Vec<(String, &'a mut W)>, base: &str, b: &'a mut Bottleneck<W>) {
    out.push((format!("{base}.adapter_down.0.weight"), &mut b.down_w));
    out.push((format!("{base}.adapter_down.0.bias"), &mut b.down_b));
    out.push((format!("{base}.adapter_up.weight"), &mut b.up_w));
    out.push((format!("{base}.adapter_up.bias"), &mut b.up_b));
}

impl<W> Adapter<W> {
    /// `bert.encoder.layer.{l}.[attention.]output.adapters.{name}.…` (AdapterHub names).
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let mut out = vec![];
        for (l, layer) in self.layers.iter_mut().enumerate() {
            if let Some(a) = layer.attention.as_mut() {
                let base = format!("bert.encoder.layer.{l}.attention.output.adapters.{}", self.name);
                bottleneck(&mut out, &base, a);
            }
            let base = format!("bert.encoder.layer.{l}.output.adapters.{}", self.name);
            bottleneck(&mut out, &base, &mut layer.output);
        }
        out
    }
}

impl<W> ClassificationHead<W> {
    /// `heads.{name}.1.…`, `heads.{name}.4.…`, … (AdapterHub names).
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let p = format!("heads.{}", self.name);
        let mut out = vec![];
        for (i, d) in self.hidden.iter_mut().chain(std::iter::once(&mut self.out)).enumerate() {
            let m = linear_module(i);
            out.push((format!("{p}.{m}.weight"), &mut d.w));
            out.push((format!("{p}.{m}.bias"), &mut d.b));
        }
        out
    }
}

/// The fused Q/K/V projection's name; checkpoints split it into `query`, `key`, `value`.
pub const QKV: &str = "attention.self.qkv";

impl<W> Bert<W> {
    /// Every encoder weight, `bert.`-prefixed Hugging Face names (Q, K, V fused as [`QKV`]).
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let EmbeddingWeights { word, position, token_type, ln_gamma, ln_beta } = &mut self.emb;
        let mut out = vec![
            ("bert.embeddings.word_embeddings.weight".to_string(), word),
            ("bert.embeddings.position_embeddings.weight".to_string(), position),
            ("bert.embeddings.token_type_embeddings.weight".to_string(), token_type),
            ("bert.embeddings.LayerNorm.weight".to_string(), ln_gamma),
            ("bert.embeddings.LayerNorm.bias".to_string(), ln_beta),
        ];
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let Layer {
                qkv_w,
                qkv_b,
                attn_out_w,
                attn_out_b,
                attn_ln_g,
                attn_ln_b,
                ffn_in_w,
                ffn_in_b,
                ffn_out_w,
                ffn_out_b,
                out_ln_g,
                out_ln_b,
            } = layer;
            let n = |s: &str| format!("bert.encoder.layer.{l}.{s}");
            out.extend([
                (n(&format!("{QKV}.weight")), qkv_w),
                (n(&format!("{QKV}.bias")), qkv_b),
                (n("attention.output.dense.weight"), attn_out_w),
                (n("attention.output.dense.bias"), attn_out_b),
                (n("attention.output.LayerNorm.weight"), attn_ln_g),
                (n("attention.output.LayerNorm.bias"), attn_ln_b),
                (n("intermediate.dense.weight"), ffn_in_w),
                (n("intermediate.dense.bias"), ffn_in_b),
                (n("output.dense.weight"), ffn_out_w),
                (n("output.dense.bias"), ffn_out_b),
                (n("output.LayerNorm.weight"), out_ln_g),
                (n("output.LayerNorm.bias"), out_ln_b),
            ]);
        }
        out
    }
}
