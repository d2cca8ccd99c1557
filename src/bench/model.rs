//! The model suite: what admix's users run, end to end on one backend.
//!
//! - forward: the classifier pass `admix score` runs (encoder + seq_bn adapter + head; the last
//!   layer computes only the [CLS] rows) at each batch size: latency p50/p99 and sequences/s;
//! - an adapter training step (forward, backward, gradient clipping, AdamW; dropout 0.1);
//! - a PGD step (the input gradient, then the projected step on δ);
//! - a HotFlip step (the input gradient, the vocabulary scoring GEMM of the gradient and
//!   embedding rows, the masked top-k);
//! - AdpMixup scoring with entropy β: m = 1 (one adapter) and m = 3 (three passes for the
//!   entropies and one mixed pass).

use anyhow::{Context, Result};

use super::kernels::token_batch;
use super::{Plan, Row, Timer};
use crate::adapter::mix::BetaRule;
use crate::adapter::router::features::PieceTable;
use crate::adapter::router::{Router, RouterConfig};
use crate::adapter::Init;
use crate::adapter::{Adapter, AdapterKind, ClassificationHead};
use crate::backend::{Activation, Backend, Norm, PgdStep, TopkFlips};
use crate::model::bert::{Bert, DropoutPlan};
use crate::model::classify::Model;
use crate::model::config::BertConfig;
use crate::model::mixture::Mixture;
use crate::profile;
use crate::rng::Rng;
use crate::train::init::{self, AdapterSpec};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::weights::Tensor;

/// A random seq_bn adapter (reduction 16) with a 2-label head.
pub fn random_member(cfg: &BertConfig, seed: u64) -> Result<(Adapter<Tensor>, ClassificationHead<Tensor>)> {
    let spec = AdapterSpec {
        kind: AdapterKind::SeqBn,
        reduction: 16,
        activation: Activation::Relu,
        init: Init::Bert,
    };
    let mut rng = Rng::new(seed);
    let h = cfg.hidden_size;
    let reduction = if h % 16 == 0 { 16 } else { 1 };
    let adapter =
        init::new_adapter("bench", &AdapterSpec { reduction, ..spec }, cfg.num_hidden_layers, h, &mut rng)?;
    Ok((adapter, init::new_head("bench", h, 2, &mut rng)))
}

/// What a step of the training loop does (`admix train`), `step` numbering the dropout masks.
fn train_step<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    opt: &mut AdamW<B::Act>,
    tb: &crate::backend::TokenBatch,
    labels: &[u32],
    step: u64,
) -> Result<()> {
    let _r = profile::range("train step");
    let plan = Some(DropoutPlan { hidden: 0.1, attention: 0.1, seed: 1, step });
    model.zero_grads(be)?;
    let out = model.forward_backward(be, tb, labels, plan, false)?;
    anyhow::ensure!(out.loss.is_finite(), "the loss is {}", out.loss);
    opt.update(be, model.params(), 1e-3).map(drop)
}

/// Runs the suite on `bert` (host weights of shape `cfg`), labelled `model`.
pub fn run<B: Backend>(
    t: &Timer<B>,
    cfg: &BertConfig,
    bert: &Bert<Tensor>,
    model: &str,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let (be, plan) = (t.be, t.plan);
    let seq = plan.seq;
    let (adapter, head) = random_member(cfg, 1)?;
    let mut push = |case: String, shape: String, mut row: Row, items: usize| {
        row.suite = "model".into();
        row.model = model.into();
        row.case = case;
        row.shape = shape;
        row.per_s = Some(items as f64 / (row.median_ms * 1e-3));
        rows.push(row);
    };

    // forward at each batch size
    let dev_bert = bert.to_backend(be)?;
    let dev_adapter = adapter.to_backend(be)?;
    let dev_head = head.to_backend(be)?;
    for &b in &plan.batches {
        let tb = token_batch(b, seq, cfg.vocab_size);
        let row = t.run(&mut || {
            let _r = profile::range("forward");
            let cls = dev_bert.encode_cls(be, &tb, Some(&dev_adapter), None)?;
            dev_head.forward(be, &cls, tb.batch, 1).map(drop)
        })?;
        push(format!("forward batch {b}"), format!("{b}×{seq}"), row, b);
    }
    drop((dev_bert, dev_adapter, dev_head));

    let wb = plan.work_batch;
    let tb = token_batch(wb, seq, cfg.vocab_size);
    let labels: Vec<u32> = (0..wb as u32).map(|i| i % 2).collect();

    // adapter training step
    let mut trainee =
        Model::new(be, bert.to_backend(be)?, Some(adapter.to_backend(be)?), head.to_backend(be)?, false)?;
    let mut opt = AdamW::new(AdamWConfig { max_grad_norm: Some(1.0), ..AdamWConfig::default() });
    let mut step = 0;
    let row = t.run(&mut || {
        step += 1;
        train_step(be, &mut trainee, &mut opt, &tb, &labels, step)
    })?;
    push(format!("adapter train step batch {wb}"), format!("{wb}×{seq}"), row, wb);

    // PGD step (L2, ε = 1, α = 0.25)
    let h = cfg.hidden_size;
    let pgd = PgdStep { norm: Norm::L2, alpha: 0.25, eps: 1.0 };
    let mut delta = be.upload_state(tb.tokens(), h, &vec![0.0; tb.tokens() * h])?;
    let row = t.run(&mut || {
        let _r = profile::range("attack step: pgd");
        let g = trainee
            .input_gradient(be, &tb, &labels, Some(&delta))?
            .input_grad
            .context("no input gradient")?;
        be.pgd_step(&mut delta, &g, &tb.lens, tb.seq, &pgd)
    })?;
    push(format!("pgd step batch {wb}"), format!("{wb}×{seq}"), row, wb);

    // HotFlip step: every token a site
    let word = &bert.emb.word;
    let v = word.shape()[0];
    let word_dev = be.weight(word)?;
    let zero = be.weight(&Tensor::from_vec(vec![v], vec![0.0; v]))?;
    let norms: Vec<f32> =
        word.data().chunks(h).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
    let sites = tb.tokens();
    let rows_e: Vec<f32> =
        tb.ids.iter().flat_map(|&id| word.data()[id as usize * h..][..h].to_vec()).collect();
    let old_norm: Vec<f32> = tb.ids.iter().map(|&id| norms[id as usize]).collect();
    let allowed: Vec<bool> = (0..v).map(|i| i >= v / 10).collect();
    let base = vec![0.0f32; sites];
    let row = t.run(&mut || {
        let _r = profile::range("attack step: hotflip");
        let g = trainee.input_gradient(be, &tb, &labels, None)?.input_grad.context("no input gradient")?;
        let (_, _, g) = be.download(&g)?;
        let both: Vec<f32> = g.into_iter().chain(rows_e.iter().copied()).collect();
        let x = be.upload(2 * sites, h, &both)?;
        let prod = be.linear(&x, &word_dev, &zero, Activation::Identity, None)?;
        let q = TopkFlips {
            sites,
            base: &base,
            old: &tb.ids,
            old_norm: &old_norm,
            norms: &norms,
            allowed: &allowed,
            min_cos: -1.0,
            k: 10,
        };
        be.topk_flips(&prod, &q).map(drop)
    })?;
    push(format!("hotflip step batch {wb}"), format!("{wb}×{seq}, V {v}"), row, wb);
    drop(trainee);

    // AdpMixup scoring
    let members: Vec<_> = (0..3).map(|i| random_member(cfg, 10 + i)).collect::<Result<_>>()?;
    for m in [1usize, 3] {
        let refs: Vec<_> = members[..m].iter().map(|(a, h)| (a, h)).collect();
        let rule = if m == 1 { BetaRule::Fixed(vec![1.0]) } else { BetaRule::Entropy { tau: 0.1 } };
        let mix = Mixture::new(be, bert, &refs, rule)?;
        let row = t.run(&mut || mix.run(be, &tb).map(drop))?;
        push(format!("adpmixup scoring m={m} batch {wb}"), format!("{wb}×{seq}"), row, wb);
    }
    // the same three members routed by a learned router of the shape `admix mixup` trains (one
    // hidden layer of 64, random weights): what the router costs beside entropy β
    let refs: Vec<_> = members.iter().map(|(a, h)| (a, h)).collect();
    let labels = members[0].1.num_labels;
    let members = (0..3).map(|i| format!("member{i}")).collect();
    let shape =
        RouterConfig { layers: vec![64], ..RouterConfig::for_mixture(members, labels, cfg.hidden_size) };
    let width = shape.features;
    let router = Router::init(shape, vec![0.0; width], vec![1.0; width], 7)?;
    // every id a one-letter word piece: the statistics cost what they cost on text
    let table = PieceTable::new((0..cfg.vocab_size).map(|_| Some("a".to_string())), false);
    let mix = Mixture::new(be, bert, &refs, BetaRule::Router { dir: "bench".into() })?
        .routed(be, &router, table)?;
    let row = t.run(&mut || mix.run(be, &tb).map(drop))?;
    push(format!("adpmixup scoring m=3 router batch {wb}"), format!("{wb}×{seq}"), row, wb);
    Ok(())
}

/// `--profile-steps N`: `N` adapter training steps after two warm-ups, bracketed by the
/// profiler's capture range on a GPU (`capture` true), each an NVTX range.
pub fn profile_steps<B: Backend>(
    be: &B,
    cfg: &BertConfig,
    bert: &Bert<Tensor>,
    plan: &Plan,
    n: usize,
    capture: bool,
) -> Result<f64> {
    let (adapter, head) = random_member(cfg, 1)?;
    let wb = plan.work_batch;
    let tb = token_batch(wb, plan.seq, cfg.vocab_size);
    let labels: Vec<u32> = (0..wb as u32).map(|i| i % 2).collect();
    let mut model =
        Model::new(be, bert.to_backend(be)?, Some(adapter.to_backend(be)?), head.to_backend(be)?, false)?;
    let mut opt = AdamW::new(AdamWConfig { max_grad_norm: Some(1.0), ..AdamWConfig::default() });
    for step in 1..=2 {
        train_step(be, &mut model, &mut opt, &tb, &labels, step)?;
    }
    be.synchronize()?;
    if capture {
        profile::capture_start()?;
    }
    let t = std::time::Instant::now();
    for step in 3..3 + n as u64 {
        train_step(be, &mut model, &mut opt, &tb, &labels, step)?;
    }
    be.synchronize()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if capture {
        profile::capture_stop()?;
    }
    Ok(ms)
}
