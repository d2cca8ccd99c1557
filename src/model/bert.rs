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

/// The prefix under which a checkpoint stores the encoder: `""` (BertModel, RobertaModel),
/// `"bert."` or `"roberta."` (task models and AdapterHub).
pub fn detect_prefix(file: &WeightFile) -> Result<&'static str> {
    for prefix in crate::weights::ENCODER_PREFIXES {
        if file.contains(&format!("{prefix}embeddings.word_embeddings.weight")) {
            return Ok(prefix);
        }
    }
    bail!(
        "{}: no encoder found (expected `embeddings.word_embeddings.weight`, without a prefix or with `bert.` or `roberta.`)",
        file.path().display()
    )
}

/// Checks `cfg` against the weight file before anything is sized from it: the file holds exactly
/// the config's layers and its embedding table has the config's shape.
pub fn check_config(file: &WeightFile, cfg: &BertConfig) -> Result<()> {
    let p = detect_prefix(file)?;
    let path = file.path().display();
    if !p.is_empty() && p != cfg.family().prefix() {
        bail!(
            "{path}: the weights are a `{}` model's but config.json says model_type `{}`",
            p.trim_end_matches('.'),
            cfg.model_type
        );
    }
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

/// Loads and validates the encoder weights as f32 host tensors (every shape against `cfg`, from the
/// catalogue; the layer count was checked by [`check_config`] when the model directory was opened).
/// Checkpoints store Q, K and V apart; they are fused here.
pub fn load_host(file: &WeightFile, cfg: &BertConfig) -> Result<Bert<Tensor>> {
    let p = detect_prefix(file)?;
    Bert::build(cfg, |spec| match spec.name.strip_suffix(&format!("{QKV}.weight")) {
        Some(layer) => {
            let h = cfg.hidden_size;
            let parts = ["query", "key", "value"]
                .map(|w| file.tensor(&format!("{p}{layer}attention.self.{w}.weight"), &[h, h]));
            let [q, k, v] = parts;
            Ok(concat_rows(&[&q?, &k?, &v?]))
        }
        None => match spec.name.strip_suffix(&format!("{QKV}.bias")) {
            Some(layer) => {
                let h = cfg.hidden_size;
                let parts = ["query", "key", "value"]
                    .map(|w| file.tensor(&format!("{p}{layer}attention.self.{w}.bias"), &[h]));
                let [q, k, v] = parts;
                Ok(concat_rows(&[&q?, &k?, &v?]))
            }
            None => file.tensor(&format!("{p}{}", spec.name), &spec.shape),
        },
    })
}

/// A BERT of shape `cfg` with random weights (N(0, 0.02) matrices, embeddings, LayerNorm β and
/// biases; LayerNorm γ = 1 + N(0, 0.02)), drawn in catalogue order: for benchmarks, where only the
/// shapes matter.
pub fn random(cfg: &BertConfig, seed: u64) -> Bert<Tensor> {
    let mut rng = crate::rng::Rng::new(seed);
    let built = Bert::build(cfg, |spec| {
        let mean = match spec.draw {
            Draw::Normal => 0.0,
            Draw::OnePlusNormal => 1.0,
        };
        let n = spec.shape.iter().product();
        Ok(Tensor::from_vec(
            spec.shape.clone(),
            (0..n).map(|_| (mean + 0.02 * rng.normal()) as f32).collect(),
        ))
    });
    built.expect("drawing a tensor cannot fail")
}

/// Stacks tensors along their first dimension.
fn concat_rows(parts: &[&Tensor]) -> Tensor {
    let mut shape = parts[0].shape().to_vec();
    shape[0] = parts.iter().map(|t| t.shape()[0]).sum();
    let data = parts.iter().flat_map(|t| t.data().iter().copied()).collect();
    Tensor::from_vec(shape, data)
}

/// The fused Q/K/V projection's name; checkpoints split it into `query`, `key`, `value`.
pub const QKV: &str = "attention.self.qkv";

/// How random init draws a tensor ([`random`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draw {
    /// N(0, 0.02)
    Normal,
    /// 1 + N(0, 0.02) (LayerNorm γ)
    OnePlusNormal,
}

/// One encoder tensor: its Hugging Face name after the `bert.` prefix (Q, K and V fused as
/// [`QKV`]), its shape, and how random init draws it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub draw: Draw,
}

/// Every encoder tensor of `cfg`: the one catalogue that loading, random init, mapping to a
/// backend or to gradient buffers, and the optimizer's and checkpoints' names all walk, in this
/// order (the embeddings, then each layer).
pub fn catalogue(cfg: &BertConfig) -> Vec<TensorSpec> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let spec = |name: String, shape: &[usize], draw| TensorSpec { name, shape: shape.to_vec(), draw };
    let (n, g) = (Draw::Normal, Draw::OnePlusNormal);
    let mut out = vec![
        spec("embeddings.word_embeddings.weight".into(), &[cfg.vocab_size, h], n),
        spec("embeddings.position_embeddings.weight".into(), &[cfg.max_position_embeddings, h], n),
        spec("embeddings.token_type_embeddings.weight".into(), &[cfg.type_vocab_size, h], n),
        spec("embeddings.LayerNorm.weight".into(), &[h], g),
        spec("embeddings.LayerNorm.bias".into(), &[h], n),
    ];
    for l in 0..cfg.num_hidden_layers {
        let name = |s: &str| format!("encoder.layer.{l}.{s}");
        out.extend([
            spec(name(&format!("{QKV}.weight")), &[3 * h, h], n),
            spec(name(&format!("{QKV}.bias")), &[3 * h], n),
            spec(name("attention.output.dense.weight"), &[h, h], n),
            spec(name("attention.output.dense.bias"), &[h], n),
            spec(name("attention.output.LayerNorm.weight"), &[h], g),
            spec(name("attention.output.LayerNorm.bias"), &[h], n),
            spec(name("intermediate.dense.weight"), &[i, h], n),
            spec(name("intermediate.dense.bias"), &[i], n),
            spec(name("output.dense.weight"), &[h, i], n),
            spec(name("output.dense.bias"), &[h], n),
            spec(name("output.LayerNorm.weight"), &[h], g),
            spec(name("output.LayerNorm.bias"), &[h], n),
        ]);
    }
    out
}

impl<W> Bert<W> {
    /// An encoder of shape `cfg` made tensor by tensor, in [`catalogue`] order.
    pub fn build(cfg: &BertConfig, mut make: impl FnMut(&TensorSpec) -> Result<W>) -> Result<Bert<W>> {
        let specs = catalogue(cfg);
        let mut specs = specs.iter();
        let mut next = || make(specs.next().expect("the catalogue lists every tensor"));
        let emb = EmbeddingWeights {
            word: next()?,
            position: next()?,
            token_type: next()?,
            ln_gamma: next()?,
            ln_beta: next()?,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            layers.push(Layer {
                qkv_w: next()?,
                qkv_b: next()?,
                attn_out_w: next()?,
                attn_out_b: next()?,
                attn_ln_g: next()?,
                attn_ln_b: next()?,
                ffn_in_w: next()?,
                ffn_in_b: next()?,
                ffn_out_w: next()?,
                ffn_out_b: next()?,
                out_ln_g: next()?,
                out_ln_b: next()?,
            });
        }
        Ok(Bert { cfg: cfg.clone(), emb, layers })
    }

    /// Every tensor, in [`catalogue`] order.
    pub fn tensors(&self) -> Vec<&W> {
        let e = &self.emb;
        let mut out = vec![&e.word, &e.position, &e.token_type, &e.ln_gamma, &e.ln_beta];
        for l in &self.layers {
            out.extend([
                &l.qkv_w,
                &l.qkv_b,
                &l.attn_out_w,
                &l.attn_out_b,
                &l.attn_ln_g,
                &l.attn_ln_b,
                &l.ffn_in_w,
                &l.ffn_in_b,
                &l.ffn_out_w,
                &l.ffn_out_b,
                &l.out_ln_g,
                &l.out_ln_b,
            ]);
        }
        out
    }

    /// Every tensor, mutable, in [`catalogue`] order.
    pub fn tensors_mut(&mut self) -> Vec<&mut W> {
        let EmbeddingWeights { word, position, token_type, ln_gamma, ln_beta } = &mut self.emb;
        let mut out = vec![word, position, token_type, ln_gamma, ln_beta];
        for l in &mut self.layers {
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
            } = l;
            out.extend([
                qkv_w, qkv_b, attn_out_w, attn_out_b, attn_ln_g, attn_ln_b, ffn_in_w, ffn_in_b, ffn_out_w,
                ffn_out_b, out_ln_g, out_ln_b,
            ]);
        }
        out
    }

    /// Every tensor with its Hugging Face name under the family's prefix (`bert.`, `roberta.`; Q, K,
    /// V fused as [`QKV`]): what the optimizer, the gradient buffers and the checkpoints walk.
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let prefix = self.cfg.family().prefix();
        let names = catalogue(&self.cfg).into_iter().map(|s| format!("{prefix}{}", s.name));
        names.zip(self.tensors_mut()).collect()
    }

    /// The same structure with every tensor mapped by `f` (to a backend, to gradient buffers).
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<Bert<V>> {
        let mut tensors = self.tensors().into_iter();
        Bert::build(&self.cfg, |_| f(tensors.next().expect("a tensor per catalogue entry")))
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
        let _range = profile::range(if keep { "encoder forward (training)" } else { "encoder forward" });
        let emb_range = profile::range("embeddings");
        let mut x = be.embed(batch, &self.emb, self.cfg.embed_spec(), delta).context("embeddings")?;
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
        let spec = self.cfg.embed_spec();
        let d_in =
            be.embed_backward(&dy, batch, &self.emb, spec, tape.delta.as_ref(), bert.map(|b| &mut b.emb))?;
        Ok(want_input_grad.then_some(d_in))
    }
}

/// `Σᵢ βᵢ·encoderᵢ` over every encoder weight (Model Soup).
pub fn mix_encoders(parts: &[&Bert<Tensor>], beta: &[f32]) -> Result<Bert<Tensor>> {
    crate::adapter::mix::mix(parts, beta, |b| b.map(|t| Ok(t.clone())), Bert::named_mut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_what_every_walk_sees() {
        let cfg = BertConfig {
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            vocab_size: 20,
            max_position_embeddings: 10,
            ..BertConfig::bert_base()
        };
        let specs = catalogue(&cfg);
        assert_eq!(specs.len(), 5 + 12 * 2);
        let names: std::collections::BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), specs.len(), "names are unique");
        let mut bert = random(&cfg, 3);
        assert_eq!(bert.layers[1].ffn_out_w.shape(), &[8, 12]);
        for (s, t) in specs.iter().zip(bert.tensors()) {
            assert_eq!(t.shape(), s.shape.as_slice(), "{}", s.name);
            let mean = t.data().iter().sum::<f32>() / t.data().len() as f32;
            // LayerNorm γ drawn around 1, everything else around 0
            assert_eq!(mean > 0.5, s.draw == Draw::OnePlusNormal, "{}", s.name);
        }
        let named: Vec<String> = bert.named_mut().into_iter().map(|(n, _)| n).collect();
        let want: Vec<String> = specs.iter().map(|s| format!("bert.{}", s.name)).collect();
        assert_eq!(named, want);
        // map keeps every tensor in place
        let ids = bert.map(|t| Ok(t.data()[0])).unwrap();
        let firsts: Vec<f32> = bert.tensors().iter().map(|t| t.data()[0]).collect();
        assert_eq!(ids.tensors().into_iter().copied().collect::<Vec<_>>(), firsts);
    }
}
