//! BERT encoder orchestration, written once over the [`Backend`] op set.

use anyhow::{bail, Context, Result};

use super::config::BertConfig;
use super::weights::{Tensor, WeightFile};
use crate::adapter::{Adapter, AdapterKind, Bottleneck};
use crate::backend::{Activation, Backend, EmbeddingWeights};
use crate::model::tokenizer::TokenBatch;

/// One transformer layer's weights (Q, K and V fused into one `[3H, H]` projection).
pub struct Layer<W> {
    pub qkv_w: W,
    pub qkv_b: W,
    pub attn_out_w: W,
    pub attn_out_b: W,
    pub attn_ln_g: W,
    pub attn_ln_b: W,
    pub ffn_in_w: W,
    pub ffn_in_b: W,
    pub ffn_out_w: W,
    pub ffn_out_b: W,
    pub out_ln_g: W,
    pub out_ln_b: W,
}

pub struct Bert<W> {
    pub cfg: BertConfig,
    pub emb: EmbeddingWeights<W>,
    pub layers: Vec<Layer<W>>,
}

/// The prefix under which a checkpoint stores the encoder: `""` (BertModel) or `"bert."`
/// (task models and AdapterHub).
pub fn detect_prefix(file: &WeightFile) -> Result<&'static str> {
    for prefix in ["", "bert."] {
        if file.contains(&format!("{prefix}embeddings.word_embeddings.weight")) {
            return Ok(prefix);
        }
    }
    bail!(
        "{}: no BERT encoder found (expected `embeddings.word_embeddings.weight`, with or without a `bert.` prefix)",
        file.path().display()
    )
}

/// Loads and validates the encoder weights as f32 host tensors.
pub fn load_host(file: &WeightFile, cfg: &BertConfig) -> Result<Bert<Tensor>> {
    let p = detect_prefix(file)?;
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    // a checkpoint with more layers than the config is a mismatch, not something to ignore
    let layer_prefix = format!("{p}encoder.layer.");
    for name in file.names() {
        if let Some(rest) = name.strip_prefix(&layer_prefix) {
            let idx: usize = rest.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
            if idx >= cfg.num_hidden_layers {
                bail!(
                    "{}: tensor `{name}` belongs to layer {idx} but config.json has {} layers",
                    file.path().display(),
                    cfg.num_hidden_layers
                );
            }
        }
    }
    let t = |name: &str, shape: &[usize]| file.tensor(&format!("{p}{name}"), shape);
    let emb = EmbeddingWeights {
        word: t("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
        position: t("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?,
        token_type: t("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?,
        ln_gamma: t("embeddings.LayerNorm.weight", &[h])?,
        ln_beta: t("embeddings.LayerNorm.bias", &[h])?,
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let n = |s: &str| format!("encoder.layer.{l}.{s}");
        let q = t(&n("attention.self.query.weight"), &[h, h])?;
        let k = t(&n("attention.self.key.weight"), &[h, h])?;
        let v = t(&n("attention.self.value.weight"), &[h, h])?;
        let qb = t(&n("attention.self.query.bias"), &[h])?;
        let kb = t(&n("attention.self.key.bias"), &[h])?;
        let vb = t(&n("attention.self.value.bias"), &[h])?;
        layers.push(Layer {
            qkv_w: concat_rows(&[&q, &k, &v]),
            qkv_b: concat_rows(&[&qb, &kb, &vb]),
            attn_out_w: t(&n("attention.output.dense.weight"), &[h, h])?,
            attn_out_b: t(&n("attention.output.dense.bias"), &[h])?,
            attn_ln_g: t(&n("attention.output.LayerNorm.weight"), &[h])?,
            attn_ln_b: t(&n("attention.output.LayerNorm.bias"), &[h])?,
            ffn_in_w: t(&n("intermediate.dense.weight"), &[i, h])?,
            ffn_in_b: t(&n("intermediate.dense.bias"), &[i])?,
            ffn_out_w: t(&n("output.dense.weight"), &[h, i])?,
            ffn_out_b: t(&n("output.dense.bias"), &[h])?,
            out_ln_g: t(&n("output.LayerNorm.weight"), &[h])?,
            out_ln_b: t(&n("output.LayerNorm.bias"), &[h])?,
        });
    }
    Ok(Bert { cfg: cfg.clone(), emb, layers })
}

/// Stacks tensors along their first dimension.
fn concat_rows(parts: &[&Tensor]) -> Tensor {
    let mut shape = parts[0].shape().to_vec();
    shape[0] = parts.iter().map(|t| t.shape()[0]).sum();
    let data = parts.iter().flat_map(|t| t.data().iter().copied()).collect();
    Tensor::from_vec(shape, data)
}

impl Bert<Tensor> {
    /// Moves the weights to a backend.
    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<Bert<B::Weight>> {
        let e = &self.emb;
        let emb = EmbeddingWeights {
            word: be.weight(&e.word)?,
            position: be.weight(&e.position)?,
            token_type: be.weight(&e.token_type)?,
            ln_gamma: be.weight(&e.ln_gamma)?,
            ln_beta: be.weight(&e.ln_beta)?,
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    qkv_w: be.weight(&l.qkv_w)?,
                    qkv_b: be.weight(&l.qkv_b)?,
                    attn_out_w: be.weight(&l.attn_out_w)?,
                    attn_out_b: be.weight(&l.attn_out_b)?,
                    attn_ln_g: be.weight(&l.attn_ln_g)?,
                    attn_ln_b: be.weight(&l.attn_ln_b)?,
                    ffn_in_w: be.weight(&l.ffn_in_w)?,
                    ffn_in_b: be.weight(&l.ffn_in_b)?,
                    ffn_out_w: be.weight(&l.ffn_out_w)?,
                    ffn_out_b: be.weight(&l.ffn_out_b)?,
                    out_ln_g: be.weight(&l.out_ln_g)?,
                    out_ln_b: be.weight(&l.out_ln_b)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert { cfg: self.cfg.clone(), emb, layers })
    }
}

impl<W> Bert<W> {
    /// Runs the encoder. `observe(i, h)` sees the embedding output (`i = 0`) and each layer's
    /// output (`i = 1..=L`), e.g. to collect hidden states. Returns the last hidden state
    /// `[B*S, H]`.
    pub fn encode<B: Backend<Weight = W>>(
        &self,
        be: &B,
        batch: &TokenBatch,
        adapter: Option<&Adapter<W>>,
        mut observe: impl FnMut(usize, &B::Act),
    ) -> Result<B::Act> {
        if batch.batch == 0 || batch.seq == 0 {
            bail!("empty batch");
        }
        let cfg = &self.cfg;
        let eps = cfg.layer_norm_eps as f32;
        if let Some(a) = adapter {
            if a.layers.len() != self.layers.len() {
                bail!("adapter has {} layers, the model {}", a.layers.len(), self.layers.len());
            }
        }
        let mut x = be.embed(batch, &self.emb, eps).context("embeddings")?;
        observe(0, &x);
        for (l, w) in self.layers.iter().enumerate() {
            let ad = adapter.map(|a| (a, &a.layers[l]));
            let qkv = be.linear(&x, &w.qkv_w, &w.qkv_b, Activation::Identity, None)?;
            let ctx = be.attention(&qkv, &batch.lens, batch.seq, cfg.num_attention_heads)?;
            let attn = match ad {
                Some((a, al)) if a.kind == AdapterKind::DoubleSeqBn => {
                    // Houlsby: LN_attn(o + A_mh(o) + x), o = attention output projection
                    let o = be.linear(&ctx, &w.attn_out_w, &w.attn_out_b, Activation::Identity, None)?;
                    let mh =
                        al.attention.as_ref().context("double_seq_bn adapter lacks its attention half")?;
                    let s = be.add(&o, &x)?;
                    let y = bottleneck(be, &o, mh, a.activation, &s)?;
                    be.layernorm(&y, &w.attn_ln_g, &w.attn_ln_b, eps)?
                }
                _ => {
                    let o = be.linear(&ctx, &w.attn_out_w, &w.attn_out_b, Activation::Identity, Some(&x))?;
                    be.layernorm(&o, &w.attn_ln_g, &w.attn_ln_b, eps)?
                }
            };
            let inter = be.linear(&attn, &w.ffn_in_w, &w.ffn_in_b, Activation::Gelu, None)?;
            x = match ad {
                None => {
                    let f =
                        be.linear(&inter, &w.ffn_out_w, &w.ffn_out_b, Activation::Identity, Some(&attn))?;
                    be.layernorm(&f, &w.out_ln_g, &w.out_ln_b, eps)?
                }
                Some((a, al)) => {
                    let f = be.linear(&inter, &w.ffn_out_w, &w.ffn_out_b, Activation::Identity, None)?;
                    match a.kind {
                        // Pfeiffer: y = LN(f + a + A(LN(f + a)))
                        AdapterKind::SeqBn => {
                            let s = be.add(&f, &attn)?;
                            let z = be.layernorm(&s, &w.out_ln_g, &w.out_ln_b, eps)?;
                            let y = bottleneck(be, &z, &al.output, a.activation, &s)?;
                            be.layernorm(&y, &w.out_ln_g, &w.out_ln_b, eps)?
                        }
                        // Houlsby: y = LN(f + A_out(f) + attn)
                        AdapterKind::DoubleSeqBn => {
                            let s = be.add(&f, &attn)?;
                            let y = bottleneck(be, &f, &al.output, a.activation, &s)?;
                            be.layernorm(&y, &w.out_ln_g, &w.out_ln_b, eps)?
                        }
                    }
                }
            };
            observe(l + 1, &x);
        }
        Ok(x)
    }
}

/// `A(z) + residual` with `A(z) = up · act(down · z + down_b) + up_b`.
fn bottleneck<B: Backend>(
    be: &B,
    z: &B::Act,
    bn: &Bottleneck<B::Weight>,
    act: Activation,
    residual: &B::Act,
) -> Result<B::Act> {
    let d = be.linear(z, &bn.down_w, &bn.down_b, act, None)?;
    be.linear(&d, &bn.up_w, &bn.up_b, Activation::Identity, Some(residual))
}
