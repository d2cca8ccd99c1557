//! The kernel suite: each op of the backend at one model's shapes (batch × seq tokens), its
//! FLOPs and bytes counted here; [`super::apply_roofline`] then sets each row's floor from the
//! measured [`super::ceilings::Ceilings`].
//!
//! Bytes count each operand once (the fewest a kernel must move); activations and weights are
//! 4 bytes on the CPU (f32) and 2 on CUDA (bf16), gradients of weights and optimizer state 4.

use anyhow::Result;

use super::ceilings::values;
use super::{Row, Timer};
use crate::backend::TokenBatch;
use crate::backend::{Activation, AdamWStep, Backend, EmbedSpec, EmbeddingWeights};
use crate::model::config::BertConfig;
use crate::weights::Tensor;

/// Which GEMM a reference timing is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// `y = x·Wᵀ`
    Forward,
    /// `dx = dy·W`
    Dx,
    /// `dW = dyᵀ·x`
    Dw,
}

/// Milliseconds of the reference library's GEMM of shape `(m, n, k)` (cuBLAS on a GPU).
pub type Reference<'a> = &'a dyn Fn(Gemm, usize, usize, usize) -> Result<f64>;

/// Runs the suite for a model of shape `cfg` (labelled `model`) at `batch` × `seq` tokens.
pub fn run<B: Backend>(
    t: &Timer<B>,
    (cfg, model): (&BertConfig, &str),
    (batch, seq): (usize, usize),
    reference: Option<Reference>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let be = t.be;
    let (h, ffn, heads) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads);
    let r = (h / 16).max(1);
    let tokens = batch * seq;
    let e = if be.name() == "cpu" { 4.0 } else { 2.0 };
    let mut seed = 10;
    let mut act = |rows: usize, cols: usize| {
        seed += 1;
        be.upload(rows, cols, &values(rows * cols, seed))
    };
    let weight = |shape: &[usize], seed: u64| {
        let n: usize = shape.iter().product();
        be.weight(&Tensor::from_vec(shape.to_vec(), values(n, seed).iter().map(|v| v * 0.05).collect()))
    };
    let mut push =
        |case: &str, shape: String, mut row: Row, flops: f64, bytes: f64, reference_ms: Option<f64>| {
            row.suite = "kernels".into();
            row.model = model.into();
            row.case = case.into();
            row.shape = shape;
            row.flops = Some(flops);
            row.bytes = Some(bytes);
            row.reference_ms = reference_ms;
            rows.push(row);
        };

    // forward GEMMs with their fused epilogues
    let gemms = [
        ("gemm qkv", 3 * h, h, Activation::Identity, false),
        ("gemm attention out +res", h, h, Activation::Identity, true),
        ("gemm ffn up +gelu", ffn, h, Activation::Gelu, false),
        ("gemm ffn down +res", h, ffn, Activation::Identity, true),
        ("gemm adapter down +relu", r, h, Activation::Relu, false),
        ("gemm adapter up +res", h, r, Activation::Identity, true),
    ];
    for (i, (name, n, k, a, res)) in gemms.into_iter().enumerate() {
        let x = act(tokens, k)?;
        let w = weight(&[n, k], 100 + i as u64)?;
        let b = weight(&[n], 200 + i as u64)?;
        let resid = if res { Some(act(tokens, n)?) } else { None };
        let row = t.run(&mut || be.linear(&x, &w, &b, a, resid.as_ref()).map(drop))?;
        let bytes = e * (tokens * k + n * k + tokens * n * (1 + res as usize)) as f64;
        let refm = reference.map(|f| f(Gemm::Forward, tokens, n, k)).transpose()?;
        push(name, format!("{tokens}×{n}×{k}"), row, 2.0 * (tokens * n * k) as f64, bytes, refm);
    }

    // the backward GEMMs at the FFN up-projection (the largest)
    let (n, k) = (ffn, h);
    let x = act(tokens, k)?;
    let dy = act(tokens, n)?;
    let w = weight(&[n, k], 300)?;
    let row = t.run(&mut || be.linear_backward(&dy, &x, &w, None, true).map(drop))?;
    let refm = reference.map(|f| f(Gemm::Dx, tokens, n, k)).transpose()?;
    let bytes = e * (tokens * n + n * k + tokens * k) as f64;
    push("gemm dX ffn up", format!("{tokens}×{n}×{k}"), row, 2.0 * (tokens * n * k) as f64, bytes, refm);
    let (mut dw, mut db) = (be.zeros(n, k)?, be.zeros(1, n)?);
    let row = t.run(&mut || be.linear_backward(&dy, &x, &w, Some((&mut dw, &mut db)), false).map(drop))?;
    let refm = reference.map(|f| f(Gemm::Dw, tokens, n, k)).transpose()?;
    // dW (f32) is read and written: accumulation
    let bytes = e * (tokens * n + tokens * k) as f64 + 8.0 * (n * k + n) as f64;
    push("gemm dW + db ffn up", format!("{tokens}×{n}×{k}"), row, 2.0 * (tokens * n * k) as f64, bytes, refm);

    // element-wise and row-wise ops
    let x = act(tokens, h)?;
    let x2 = act(tokens, h)?;
    let gamma = weight(&[h], 400)?;
    let beta = weight(&[h], 401)?;
    let th = (tokens * h) as f64;
    let row = t.run(&mut || be.layernorm(&x, &gamma, &beta, 1e-12).map(drop))?;
    push("layernorm", format!("{tokens}×{h}"), row, 8.0 * th, 2.0 * e * th, None);
    let dy = act(tokens, h)?;
    let (mut dg, mut dbt) = (be.zeros(1, h)?, be.zeros(1, h)?);
    let row =
        t.run(&mut || be.layernorm_backward(&dy, &x, &gamma, 1e-12, Some((&mut dg, &mut dbt))).map(drop))?;
    push("layernorm backward", format!("{tokens}×{h}"), row, 14.0 * th, 3.0 * e * th, None);
    let row = t.run(&mut || be.add(&x, &x2).map(drop))?;
    push("add", format!("{tokens}×{h}"), row, th, 3.0 * e * th, None);
    let big = act(tokens, ffn)?;
    let tf = (tokens * ffn) as f64;
    let row = t.run(&mut || be.activation(&big, Activation::Gelu).map(drop))?;
    push("activation gelu", format!("{tokens}×{ffn}"), row, 20.0 * tf, 2.0 * e * tf, None);

    let emb = EmbeddingWeights {
        word: weight(&[cfg.vocab_size, h], 500)?,
        position: weight(&[cfg.max_position_embeddings, h], 501)?,
        token_type: weight(&[cfg.type_vocab_size, h], 502)?,
        ln_gamma: weight(&[h], 503)?,
        ln_beta: weight(&[h], 504)?,
    };
    let tb = token_batch(batch, seq, cfg.vocab_size);
    let row = t.run(&mut || be.embed(&tb, &emb, EmbedSpec::absolute(1e-12), None).map(drop))?;
    push(
        "embedding + layernorm",
        format!("{tokens}×{h}"),
        row,
        10.0 * th,
        3.0 * e * th + 8.0 * tokens as f64,
        None,
    );

    let d = h / heads;
    let qkv = act(tokens, 3 * h)?;
    let lens = vec![seq; batch];
    let att_flops = 4.0 * (batch * heads * seq * seq * d) as f64;
    let row = t.run(&mut || be.attention(&qkv, &lens, seq, heads, None).map(drop))?;
    push("attention", format!("b{batch} s{seq} h{heads} d{d}"), row, att_flops, 4.0 * e * th, None);
    let dctx = act(tokens, h)?;
    let row = t.run(&mut || be.attention_backward(&dctx, &qkv, &lens, seq, heads, None).map(drop))?;
    // recomputed QKᵀ, then dV, dP, dQ, dK: five products of the forward's two
    push(
        "attention backward",
        format!("b{batch} s{seq} h{heads} d{d}"),
        row,
        2.5 * att_flops,
        7.0 * e * th,
        None,
    );
    let row = t.run(&mut || be.mean_pool_l2(&x, &lens, seq).map(drop))?;
    push("mean pool + l2", format!("{tokens}×{h}"), row, 2.0 * th, e * th, None);

    // AdpMixup's per-row blend of three stacked adapters' up-projections (+ residual)
    let m = 3;
    let stacked = act(tokens, m * h)?;
    let beta_rows: Vec<f32> = (0..tokens * m).map(|i| [0.5, 0.3, 0.2][i % m]).collect();
    let row =
        t.run(&mut || be.mix_rows(&stacked, m, &beta_rows, Activation::Identity, Some(&x)).map(drop))?;
    push(
        "adapter mix m=3 +res",
        format!("{tokens}×{m}·{h}"),
        row,
        2.0 * m as f64 * th,
        e * (m as f64 + 2.0) * th,
        None,
    );

    // AdamW over one H×FFN matrix (f32 master, gradient, two moments)
    let mut p = weight(&[ffn, h], 600)?;
    let g = be.upload_state(ffn, h, &values(ffn * h, 601))?;
    let (mut mm, mut vv) = (be.zeros_like(&p)?, be.zeros_like(&p)?);
    let mut step = 0;
    let row = t.run(&mut || {
        step += 1;
        let s = AdamWStep {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step,
            grad_scale: 1.0,
        };
        be.adamw(&mut p, &g, &mut mm, &mut vv, &s)
    })?;
    let np = (ffn * h) as f64;
    push("adamw", format!("{ffn}×{h}"), row, 12.0 * np, 28.0 * np + e * np, None);
    Ok(())
}

/// A full batch of random ids (no padding).
pub fn token_batch(batch: usize, seq: usize, vocab: usize) -> TokenBatch {
    let mut rng = crate::rng::Rng::new(seq as u64 * 31 + batch as u64);
    let rows: Vec<(Vec<u32>, Vec<u32>)> = (0..batch)
        .map(|_| {
            (
                (0..seq)
                    .map(|_| 1000.min(vocab / 2) as u32 + (rng.next_u64() % (vocab as u64 / 2)) as u32)
                    .collect(),
                vec![0; seq],
            )
        })
        .collect();
    TokenBatch::from_rows(&rows, 0)
}
