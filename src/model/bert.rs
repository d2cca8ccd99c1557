//! BERT encoder orchestration, written once over the [`Backend`] op set.

use anyhow::{bail, Context, Result};

use super::config::BertConfig;
use super::layer::{self, Layer, LayerCtx, LayerDropout, LayerGrads, Packing};
use crate::adapter::mix::RowMix;
use crate::adapter::Adapter;
use crate::backend::TokenBatch;
use crate::backend::{Backend, DropKey, EmbeddingWeights};
use crate::profile;
use crate::weights::{Tensor, WeightFile};

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

/// Checks `cfg` against the weight file before anything is sized from it: the file holds exactly
/// the config's layers and its embedding table has the config's shape.
pub fn check_config(file: &WeightFile, cfg: &BertConfig) -> Result<()> {
    let p = detect_prefix(file)?;
    let path = file.path().display();
    // a checkpoint with more layers than the config is a mismatch, not something to ignore
    let layer_prefix = format!("{p}encoder.layer.");
    let mut layers = 0;
    for name in file.names() {
        if let Some(rest) = name.strip_prefix(&layer_prefix) {
            let idx: usize = rest.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
            if idx >= cfg.num_hidden_layers {
                bail!(
                    "{path}: tensor `{name}` belongs to layer {idx} but config.json has {} layers",
                    cfg.num_hidden_layers
                );
            }
            layers = layers.max(idx + 1);
        }
    }
    if layers != cfg.num_hidden_layers {
        bail!("config.json has {} layers but {path} holds {layers}", cfg.num_hidden_layers);
    }
    let emb = format!("{p}embeddings.word_embeddings.weight");
    let info = file.info(&emb).with_context(|| format!("{path}: tensor `{emb}` not found"))?;
    if info.shape != [cfg.vocab_size, cfg.hidden_size] {
        bail!(
            "{path}: `{emb}` has shape {:?} but config.json says vocab_size {} × hidden_size {}",
            info.shape,
            cfg.vocab_size,
            cfg.hidden_size
        );
    }
    Ok(())
}

/// Loads and validates the encoder weights as f32 host tensors (every shape against `cfg`; the
/// layer count was checked by [`check_config`] when the model directory was opened).
pub fn load_host(file: &WeightFile, cfg: &BertConfig) -> Result<Bert<Tensor>> {
    let p = detect_prefix(file)?;
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
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
/// A BERT of shape `cfg` with random weights (N(0, 0.02) matrices and embeddings, LayerNorm
/// γ = 1 + N(0, 0.02), β and biases N(0, 0.02)): for benchmarks, where only the shapes matter.
pub fn random(cfg: &BertConfig, seed: u64) -> Bert<Tensor> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut t = |shape: &[usize], mean: f64| {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|_| (mean + 0.02 * rng.normal()) as f32).collect())
    };
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let emb = EmbeddingWeights {
        word: t(&[cfg.vocab_size, h], 0.0),
        position: t(&[cfg.max_position_embeddings, h], 0.0),
        token_type: t(&[cfg.type_vocab_size, h], 0.0),
        ln_gamma: t(&[h], 1.0),
        ln_beta: t(&[h], 0.0),
    };
    let layers = (0..cfg.num_hidden_layers)
        .map(|_| Layer {
            qkv_w: t(&[3 * h, h], 0.0),
            qkv_b: t(&[3 * h], 0.0),
            attn_out_w: t(&[h, h], 0.0),
            attn_out_b: t(&[h], 0.0),
            attn_ln_g: t(&[h], 1.0),
            attn_ln_b: t(&[h], 0.0),
            ffn_in_w: t(&[i, h], 0.0),
            ffn_in_b: t(&[i], 0.0),
            ffn_out_w: t(&[h, i], 0.0),
            ffn_out_b: t(&[h], 0.0),
            out_ln_g: t(&[h], 1.0),
            out_ln_b: t(&[h], 0.0),
        })
        .collect();
    Bert { cfg: cfg.clone(), emb, layers }
}

fn concat_rows(parts: &[&Tensor]) -> Tensor {
    let mut shape = parts[0].shape().to_vec();
    shape[0] = parts.iter().map(|t| t.shape()[0]).sum();
    let data = parts.iter().flat_map(|t| t.data().iter().copied()).collect();
    Tensor::from_vec(shape, data)
}

impl<W> Bert<W> {
    /// The same structure with every tensor mapped by `f` (to a backend, to gradient buffers).
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<Bert<V>> {
        let e = &self.emb;
        let emb = EmbeddingWeights {
            word: f(&e.word)?,
            position: f(&e.position)?,
            token_type: f(&e.token_type)?,
            ln_gamma: f(&e.ln_gamma)?,
            ln_beta: f(&e.ln_beta)?,
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(Layer {
                qkv_w: f(&l.qkv_w)?,
                qkv_b: f(&l.qkv_b)?,
                attn_out_w: f(&l.attn_out_w)?,
                attn_out_b: f(&l.attn_out_b)?,
                attn_ln_g: f(&l.attn_ln_g)?,
                attn_ln_b: f(&l.attn_ln_b)?,
                ffn_in_w: f(&l.ffn_in_w)?,
                ffn_in_b: f(&l.ffn_in_b)?,
                ffn_out_w: f(&l.ffn_out_w)?,
                ffn_out_b: f(&l.ffn_out_b)?,
                out_ln_g: f(&l.out_ln_g)?,
                out_ln_b: f(&l.out_ln_b)?,
            });
        }
        Ok(Bert { cfg: self.cfg.clone(), emb, layers })
    }
}

impl Bert<Tensor> {
    /// Moves the weights to a backend.
    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<Bert<B::Weight>> {
        self.map(|t| be.weight(t))
    }
}

/// Dropout of one training step at BERT's sites (embeddings, and in each layer the attention
/// probabilities and the two projections before a residual) and the head's two.
#[derive(Clone, Copy, Debug)]
pub struct DropoutPlan {
    /// hidden_dropout_prob
    pub hidden: f32,
    /// attention_probs_dropout_prob
    pub attention: f32,
    pub seed: u64,
    pub step: u64,
}

impl DropoutPlan {
    fn key(&self, p: f32, site: u64) -> Option<DropKey> {
        (p > 0.0).then(|| DropKey::new(p, self.seed, self.step, site))
    }
    pub fn embeddings(&self) -> Option<DropKey> {
        self.key(self.hidden, 0)
    }
    /// The head's dropout before its linear layer `i` (< [`crate::adapter::MAX_HEAD_LAYERS`]).
    pub fn head(&self, i: u64) -> Option<DropKey> {
        self.key(self.hidden, 8 + i)
    }
    pub fn layer(&self, l: usize) -> LayerDropout {
        let site = 16 + 4 * l as u64;
        LayerDropout {
            attn_probs: self.key(self.attention, site),
            attn_out: self.key(self.hidden, site + 1),
            ffn_out: self.key(self.hidden, site + 2),
        }
    }
}

/// What the encoder's backward pass reads, recorded by [`Bert::forward_train`].
pub struct Tape<A> {
    layers: Vec<layer::Saved<A>>,
    plan: Option<DropoutPlan>,
    cls_only: bool,
    /// the perturbation of the word rows the forward ran with
    delta: Option<A>,
}

/// The [CLS] row of every sequence: `b · seq`.
fn cls_rows(batch: &TokenBatch) -> Vec<usize> {
    (0..batch.batch).map(|b| b * batch.seq).collect()
}

/// Gradient buffers of the encoder and adapter (each `None` = frozen).
pub struct EncoderGrads<'a, A> {
    pub bert: Option<&'a mut Bert<A>>,
    pub adapter: Option<&'a mut Adapter<A>>,
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
        observe: impl FnMut(usize, &B::Act),
    ) -> Result<B::Act> {
        Ok(self.run(be, batch, adapter, None, None, None, false, false, observe)?.0)
    }

    /// The last layer's [CLS] rows only, `[B, H]`: what a classification head reads. The last
    /// layer runs its attention on all rows and everything after it on the [CLS] rows alone.
    /// `delta` perturbs the word-embedding rows (see [`Backend::embed`]).
    pub fn encode_cls<B: Backend<Weight = W>>(
        &self,
        be: &B,
        batch: &TokenBatch,
        adapter: Option<&Adapter<W>>,
        delta: Option<&B::Act>,
    ) -> Result<B::Act> {
        Ok(self.run(be, batch, adapter, delta, None, None, false, true, |_, _| {})?.0)
    }

    /// [`Bert::encode_cls`] with `stacked` = `m` adapters stacked
    /// ([`crate::adapter::mix::stack_adapters`]) and mixed per sample by `mix`: each sequence
    /// runs with the adapter `Σᵢ βᵢ·adapterᵢ` of its own β.
    pub fn encode_cls_mixed<B: Backend<Weight = W>>(
        &self,
        be: &B,
        batch: &TokenBatch,
        stacked: &Adapter<W>,
        mix: &RowMix,
        delta: Option<&B::Act>,
    ) -> Result<B::Act> {
        if mix.batch() != batch.batch {
            bail!("mixing weights for {} sequences, a batch of {}", mix.batch(), batch.batch);
        }
        Ok(self.run(be, batch, Some(stacked), delta, Some(mix), None, false, true, |_, _| {})?.0)
    }

    /// The forward pass of a training step: dropout per `plan` (none when `None`), the word rows
    /// perturbed by `delta`, and the tape for [`Bert::backward`]. With `cls_only` the output is
    /// [`Bert::encode_cls`]'s.
    pub fn forward_train<B: Backend<Weight = W>>(
        &self,
        be: &B,
        batch: &TokenBatch,
        adapter: Option<&Adapter<W>>,
        delta: Option<&B::Act>,
        plan: Option<DropoutPlan>,
        cls_only: bool,
    ) -> Result<(B::Act, Tape<B::Act>)> {
        let (out, layers) = self.run(be, batch, adapter, delta, None, plan, true, cls_only, |_, _| {})?;
        Ok((out, Tape { layers, plan, cls_only, delta: delta.cloned() }))
    }

    fn layer_ctx<'a>(
        &'a self,
        l: usize,
        batch: &'a TokenBatch,
        adapter: Option<&'a Adapter<W>>,
        out_rows: Option<&'a [usize]>,
        packed: Option<&'a Packing>,
        mix: Option<&'a RowMix>,
    ) -> LayerCtx<'a, W> {
        LayerCtx {
            mix,
            out_rows: out_rows.filter(|_| l + 1 == self.layers.len()),
            packed,
            w: &self.layers[l],
            adapter: adapter.map(|a| (a.kind, a.activation, &a.layers[l])),
            lens: &batch.lens,
            seq: batch.seq,
            heads: self.cfg.num_attention_heads,
            eps: self.cfg.layer_norm_eps as f32,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run<B: Backend<Weight = W>>(
        &self,
        be: &B,
        batch: &TokenBatch,
        adapter: Option<&Adapter<W>>,
        delta: Option<&B::Act>,
        mix: Option<&RowMix>,
        plan: Option<DropoutPlan>,
        keep: bool,
        cls_only: bool,
        mut observe: impl FnMut(usize, &B::Act),
    ) -> Result<(B::Act, Vec<layer::Saved<B::Act>>)> {
        let cls = cls_only.then(|| cls_rows(batch));
        if batch.batch == 0 || batch.seq == 0 {
            bail!("empty batch");
        }
        if let Some(a) = adapter {
            if a.layers.len() != self.layers.len() {
                bail!("adapter has {} layers, the model {}", a.layers.len(), self.layers.len());
            }
        }
        let eps = self.cfg.layer_norm_eps as f32;
        let _range = profile::range(if keep { "encoder forward (training)" } else { "encoder forward" });
        let emb_range = profile::range("embeddings");
        let mut x = be.embed(batch, &self.emb, eps, delta).context("embeddings")?;
        if let Some(k) = plan.and_then(|p| p.embeddings()) {
            x = be.dropout(x, k)?;
        }
        drop(emb_range);
        observe(0, &x);
        // a classifier's inference needs only the [CLS] rows out: run on the valid tokens alone
        // (`encode_cls` observes nothing, so no caller sees a packed layer output)
        let packing = (cls_only && !keep && batch.lens.iter().sum::<usize>() < batch.tokens())
            .then(|| Packing::new(&batch.lens, batch.seq));
        if let Some(p) = &packing {
            x = be.gather_rows(&x, &p.valid)?;
        }
        let mut saved = Vec::with_capacity(if keep { self.layers.len() } else { 0 });
        for l in 0..self.layers.len() {
            let drops = plan.map(|p| p.layer(l)).unwrap_or_default();
            let ctx = self.layer_ctx(l, batch, adapter, cls.as_deref(), packing.as_ref(), mix);
            let _layer = profile::range_with(|| format!("layer {l}"));
            let (out, s) = layer::forward(be, &ctx, x, &drops, keep).with_context(|| format!("layer {l}"))?;
            saved.extend(s);
            x = out;
            observe(l + 1, &x);
        }
        Ok((x, saved))
    }

    /// Backward from `dlast` (the gradient of the last hidden state, or of its [CLS] rows for a
    /// `cls_only` tape) through the tape of
    /// [`Bert::forward_train`]: accumulates into `grads`, and returns the gradient w.r.t. the
    /// word-embedding rows looked up (`[B*S, H]`) when `want_input_grad`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend<Weight = W>>(
        &self,
        be: &B,
        batch: &TokenBatch,
        adapter: Option<&Adapter<W>>,
        tape: &Tape<B::Act>,
        dlast: B::Act,
        grads: EncoderGrads<B::Act>,
        want_input_grad: bool,
    ) -> Result<Option<B::Act>> {
        if tape.layers.len() != self.layers.len() {
            bail!("the tape has {} layers, the model {}", tape.layers.len(), self.layers.len());
        }
        let EncoderGrads { mut bert, adapter: mut adapter_grads } = grads;
        let below = want_input_grad || bert.is_some();
        let cls = tape.cls_only.then(|| cls_rows(batch));
        let _range = profile::range("encoder backward");
        let mut dy = dlast;
        for l in (0..self.layers.len()).rev() {
            let _layer = profile::range_with(|| format!("layer {l} backward"));
            let g = LayerGrads {
                base: bert.as_deref_mut().map(|b| &mut b.layers[l]),
                adapter: adapter_grads.as_deref_mut().map(|a| &mut a.layers[l]),
            };
            let drops = tape.plan.map(|p| p.layer(l)).unwrap_or_default();
            let ctx = self.layer_ctx(l, batch, adapter, cls.as_deref(), None, None);
            match layer::backward(be, &ctx, &tape.layers[l], &dy, &drops, g, l > 0 || below)
                .with_context(|| format!("layer {l} backward"))?
            {
                Some(dx) => dy = dx,
                None => return Ok(None),
            }
        }
        if let Some(k) = tape.plan.and_then(|p| p.embeddings()) {
            dy = be.dropout(dy, k)?;
        }
        let eps = self.cfg.layer_norm_eps as f32;
        let d_in =
            be.embed_backward(&dy, batch, &self.emb, eps, tape.delta.as_ref(), bert.map(|b| &mut b.emb))?;
        Ok(want_input_grad.then_some(d_in))
    }
}

/// `Σᵢ βᵢ·encoderᵢ` over every encoder weight (Model Soup).
pub fn mix_encoders(parts: &[&Bert<Tensor>], beta: &[f32]) -> Result<Bert<Tensor>> {
    crate::adapter::mix::mix(parts, beta, |b| b.map(|t| Ok(t.clone())), Bert::named_mut)
}
