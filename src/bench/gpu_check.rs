//! The GPU check: what a session lent a GPU runs first (scripts/gpu-check runs it, with
//! compute-sanitizer over its correctness part and the PyTorch peer beside it).
//!
//! 1. the primitive conformance checks on the device (the proof that the emulator's PTX
//!    transcription matches the hardware);
//! 2. every kernel against the CPU reference on the device, outputs poisoned, several seeds,
//!    each launch synchronised so that a fault names its kernel;
//! 3. (unless `--correctness-only`) the two ceilings measured on the device by `admix bench`'s
//!    own [`crate::bench::ceilings::cuda`] (device-to-device copy bandwidth; cuBLAS bf16 GEMM
//!    rate), each kernel timed ([`crate::bench::median_ms`]) at BERT-base shapes against its
//!    roofline floor (FLOPs and bytes counted), the GEMMs against cuBLAS at the same shapes, and a
//!    BERT-base forward (random weights, batch 32 × 128) with and without a seq_bn adapter.
//!
//! Writes report.md and report.json to the output directory and returns whether every check
//! passed.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use crate::adapter::AdapterKind;
use crate::adapter::Init;
use crate::backend::bf16;
use crate::backend::cuda::cublas::Cublas;
use crate::backend::cuda::executor::{DevBuf, Executor};
use crate::backend::cuda::gpu::Gpu;
use crate::backend::cuda::{checks, conformance, launch, Cuda};
use crate::backend::TokenBatch;
use crate::backend::{Activation, Backend, EmbeddingWeights};
use crate::bench::median_ms;
use crate::model::bert;
use crate::model::classify::Model;
use crate::model::config::BertConfig;
use crate::rng::Rng;
use crate::train::init::{self, AdapterSpec};
use crate::train::optim::{AdamW, AdamWConfig};

pub struct Options {
    pub out: PathBuf,
    /// only sections 1 and 2 (what compute-sanitizer runs)
    pub correctness_only: bool,
    /// seeds per kernel check
    pub seeds: u64,
}

struct Report {
    md: String,
    json: serde_json::Map<String, serde_json::Value>,
    failures: usize,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.md.push_str(s.as_ref());
        self.md.push('\n');
    }
}

/// Random bf16 values in [-scale, scale) on the device (never zeros: they time differently).
fn random_buf(exec: &Arc<dyn Executor>, n: usize, scale: f32, rng: &mut Rng) -> Result<DevBuf> {
    let v: Vec<u16> = (0..n).map(|_| bf16::from_f32(((rng.uniform() * 2.0 - 1.0) as f32) * scale)).collect();
    DevBuf::from_slice(exec, &v)
}

pub fn run(opts: &Options) -> Result<bool> {
    let gpu = Arc::new(Gpu::open(0)?);
    let exec: Arc<dyn Executor> = gpu.clone();
    let mut r = Report { md: String::new(), json: serde_json::Map::new(), failures: 0 };
    r.line(format!("# admix GPU check: {}", gpu.name()));
    r.line("");
    r.line(crate::backend::cuda::gpu::describe().trim_end());
    r.json.insert("device".into(), json!(gpu.name()));

    // 1. primitives
    gpu.set_sync_each(true);
    r.line("\n## Primitive conformance on the device (kernels/conformance.cu)\n");
    r.line("| primitive | result |\n|---|---|");
    let mut prim = serde_json::Map::new();
    for (name, check) in conformance::CHECKS {
        let res = (0..opts.seeds).try_for_each(|s| check(&exec, 1000 + s));
        let cell = match &res {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                r.failures += 1;
                format!("**FAIL**: {e:#}")
            }
        };
        r.line(format!("| {name} | {cell} |"));
        prim.insert(name.to_string(), json!(res.is_ok()));
    }
    r.json.insert("primitives".into(), prim.into());

    // 2. kernels vs the CPU reference
    let cuda = Cuda::with_executor(exec.clone(), "cuda").poisoned();
    r.line(format!(
        "\n## Kernels vs the CPU reference on the device ({} seeds, outputs poisoned, bound {:.0e})\n",
        opts.seeds,
        checks::BF16_TOL
    ));
    r.line("| kernel family | worst ‖out−ref‖/‖ref‖ | result |\n|---|---|---|");
    let mut kern = serde_json::Map::new();
    for (name, check) in checks::CHECKS {
        let mut worst: f64 = 0.0;
        let mut err = None;
        for s in 0..opts.seeds {
            match check(&cuda, 2000 + s) {
                Ok(e) => worst = worst.max(e),
                Err(e) => {
                    err = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        match &err {
            None => r.line(format!("| {name} | {worst:.2e} | ok |")),
            Some(e) => {
                r.failures += 1;
                r.line(format!("| {name} | – | **FAIL**: {e} |"));
            }
        }
        kern.insert(name.to_string(), json!({"worst_rel_err": worst, "ok": err.is_none()}));
    }
    r.json.insert("kernels".into(), kern.into());
    gpu.set_sync_each(false);

    if !opts.correctness_only {
        performance(&exec, &mut r)?;
    }

    r.json.insert("failures".into(), json!(r.failures));
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    crate::io::write_atomic(&opts.out.join("report.md"), r.md.as_bytes())?;
    crate::io::write_atomic(
        &opts.out.join("report.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(r.json))?.as_bytes(),
    )?;
    Ok(r.failures == 0)
}

fn performance(exec: &Arc<dyn Executor>, r: &mut Report) -> Result<()> {
    let mut rng = Rng::new(7);
    let (warm, reps) = (3, 20);

    // ceilings: bench's own measurement (a 1 GiB device copy; cuBLAS bf16 8192³, else admix's GEMM)
    let ceil = crate::bench::ceilings::cuda(&Cuda::with_executor(exec.clone(), "cuda"), 1024, 8192)?;
    let (bw, peak) = (ceil.copy_bytes_per_s, Some(ceil.gemm_flops_per_s));
    let cublas = Cublas::open();
    r.line("\n## Ceilings measured on this device\n");
    r.line(format!("- {} (bytes read + written): **{:.2} TB/s**", ceil.copy, bw / 1e12));
    r.line(format!("- {} (f32 accumulation): **{:.0} TFLOP/s**", ceil.gemm, ceil.gemm_flops_per_s / 1e12));
    if let Err(e) = &cublas {
        r.line(format!("- cuBLAS: not available for the per-kernel comparison ({e:#})"));
    }
    r.json.insert(
        "ceilings".into(),
        json!({"copy_bytes_per_s": bw, "cublas_bf16_flops_per_s": peak, "gemm": ceil.gemm}),
    );

    // kernels at BERT-base shapes
    let (batch, seq, h, heads, ffn) = (32usize, 128usize, 768usize, 12usize, 3072usize);
    let tokens = batch * seq;
    let peak_f = peak.unwrap_or(f64::NAN);
    r.line(format!(
        "\n## Kernels at BERT-base shapes (batch {batch} × seq {seq}: {tokens} tokens; median of {reps} after {warm} warm-ups)\n"
    ));
    r.line("Floor = max(FLOPs / cuBLAS rate, bytes / copy bandwidth); GEMM bytes count each operand once.\n");
    r.line("| kernel | shape | µs | TFLOP/s | GB/s | floor µs | % of floor | cuBLAS µs | % of cuBLAS |");
    r.line("|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut row = |r: &mut Report,
                   name: &str,
                   shape: String,
                   ms: f64,
                   flops: f64,
                   bytes: f64,
                   cublas_ms: Option<f64>| {
        let floor = (flops / peak_f).max(bytes / bw) * 1e3;
        let us = ms * 1e3;
        let cb = cublas_ms.map_or("–".into(), |c| format!("{:.1}", c * 1e3));
        let pct_cb = cublas_ms.map_or("–".into(), |c| format!("{:.0}%", 100.0 * c / ms));
        r.line(format!(
            "| {name} | {shape} | {us:.1} | {:.1} | {:.0} | {:.1} | {:.0}% | {cb} | {pct_cb} |",
            flops / (ms * 1e-3) / 1e12,
            bytes / (ms * 1e-3) / 1e9,
            floor * 1e3,
            100.0 * floor / ms,
        ));
        rows.push(json!({"kernel": name, "shape": shape, "ms": ms, "flops": flops, "bytes": bytes,
                         "floor_ms": floor, "cublas_ms": cublas_ms}));
    };

    let gemms = [
        ("gemm qkv", tokens, 3 * h, h, Activation::Identity, false),
        ("gemm attention out +res", tokens, h, h, Activation::Identity, true),
        ("gemm ffn up +gelu", tokens, ffn, h, Activation::Gelu, false),
        ("gemm ffn down +res", tokens, h, ffn, Activation::Identity, true),
        ("gemm adapter down +relu", tokens, h / 16, h, Activation::Relu, false),
        ("gemm adapter up +res", tokens, h, h / 16, Activation::Identity, true),
    ];
    for (name, m, n, k, act, res) in gemms {
        let x = random_buf(exec, m * k, 1.0, &mut rng)?;
        let w = random_buf(exec, n * k, 0.05, &mut rng)?;
        let bias = random_buf(exec, n, 0.1, &mut rng)?;
        let resid = random_buf(exec, m * n, 1.0, &mut rng)?;
        let y = DevBuf::new(exec, m * n * 2)?;
        let ms = median_ms(&**exec, warm, reps, || {
            launch::linear(&**exec, &y, &x, &w, Some(&bias), res.then_some(&resid), (m, n, k), act)
        })?;
        let cb = match &cublas {
            Ok(c) => Some(median_ms(&**exec, warm, reps, || c.gemm(&y, &x, &w, m, n, k))?),
            Err(_) => None,
        };
        let bytes = 2.0 * (m * k + n * k + m * n * (1 + res as usize)) as f64;
        row(r, name, format!("{m}×{n}×{k}"), ms, 2.0 * (m * n * k) as f64, bytes, cb);
    }

    // the backward GEMMs at the FFN shapes (the largest), against cuBLAS at the same shapes
    for (name, m, n, k) in [("gemm dX ffn up", tokens, ffn, h), ("gemm dW ffn up", tokens, ffn, h)] {
        let dy = random_buf(exec, m * n, 1.0, &mut rng)?;
        let w = random_buf(exec, n * k, 0.05, &mut rng)?;
        let x = random_buf(exec, m * k, 1.0, &mut rng)?;
        let dx = DevBuf::new(exec, m * k * 2)?;
        let dw = DevBuf::new(exec, n * k * 4)?;
        dw.fill(0)?;
        let dw_pass = name.contains("dW");
        let ms = median_ms(&**exec, warm, reps, || {
            if dw_pass {
                launch::linear_dw(&**exec, &dw, &dy, &x, (m, n, k))
            } else {
                launch::linear_dx(&**exec, &dx, &dy, &w, (m, n, k))
            }
        })?;
        let cb = match &cublas {
            Ok(c) if dw_pass => Some(median_ms(&**exec, warm, reps, || c.gemm_dw(&dw, &dy, &x, m, n, k))?),
            Ok(c) => Some(median_ms(&**exec, warm, reps, || c.gemm_dx(&dx, &dy, &w, m, n, k))?),
            Err(_) => None,
        };
        let out_bytes = if dw_pass { 8 * n * k } else { 2 * m * k };
        let bytes = (2 * (m * n + if dw_pass { m * k } else { n * k }) + out_bytes) as f64;
        row(r, name, format!("{m}×{n}×{k}"), ms, 2.0 * (m * n * k) as f64, bytes, cb);
    }

    let x = random_buf(exec, tokens * h, 1.0, &mut rng)?;
    let x2 = random_buf(exec, tokens * h, 1.0, &mut rng)?;
    let g = random_buf(exec, h, 1.0, &mut rng)?;
    let bt = random_buf(exec, h, 0.1, &mut rng)?;
    let y = DevBuf::new(exec, tokens * h * 2)?;
    let ms =
        median_ms(&**exec, warm, reps, || launch::layernorm(&**exec, &y, &x, &g, &bt, tokens, h, 1e-12))?;
    row(
        r,
        "layernorm",
        format!("{tokens}×{h}"),
        ms,
        8.0 * (tokens * h) as f64,
        4.0 * (tokens * h) as f64,
        None,
    );
    let ms = median_ms(&**exec, warm, reps, || launch::add(&**exec, &y, &x, &x2, tokens * h))?;
    row(r, "add", format!("{tokens}×{h}"), ms, (tokens * h) as f64, 6.0 * (tokens * h) as f64, None);
    let big = random_buf(exec, tokens * ffn, 1.0, &mut rng)?;
    let big_y = DevBuf::new(exec, tokens * ffn * 2)?;
    let ms = median_ms(&**exec, warm, reps, || {
        launch::activation(&**exec, &big_y, &big, tokens * ffn, Activation::Gelu)
    })?;
    row(
        r,
        "activation gelu",
        format!("{tokens}×{ffn}"),
        ms,
        20.0 * (tokens * ffn) as f64,
        4.0 * (tokens * ffn) as f64,
        None,
    );

    let cuda = Cuda::with_executor(exec.clone(), "cuda");
    let host_emb = |rng: &mut Rng| EmbeddingWeights {
        word: crate::weights::Tensor::from_vec(
            vec![30522, h],
            (0..30522 * h).map(|_| rng.normal() as f32 * 0.02).collect(),
        ),
        position: crate::weights::Tensor::from_vec(
            vec![512, h],
            (0..512 * h).map(|_| rng.normal() as f32 * 0.02).collect(),
        ),
        token_type: crate::weights::Tensor::from_vec(vec![2, h], vec![0.01; 2 * h]),
        ln_gamma: crate::weights::Tensor::from_vec(vec![h], vec![1.0; h]),
        ln_beta: crate::weights::Tensor::from_vec(vec![h], vec![0.0; h]),
    };
    let he = host_emb(&mut rng);
    let we = EmbeddingWeights {
        word: cuda.weight(&he.word)?,
        position: cuda.weight(&he.position)?,
        token_type: cuda.weight(&he.token_type)?,
        ln_gamma: cuda.weight(&he.ln_gamma)?,
        ln_beta: cuda.weight(&he.ln_beta)?,
    };
    let ids: Vec<i32> = (0..tokens).map(|_| (rng.next_u64() % 30522) as i32).collect();
    let ids = DevBuf::from_slice(exec, &ids)?;
    let types = DevBuf::from_slice(exec, &vec![0i32; tokens])?;
    let ms = median_ms(&**exec, warm, reps, || {
        launch::embed(
            &**exec,
            &y,
            &ids,
            &types,
            &we,
            None,
            tokens,
            seq,
            crate::backend::EmbedSpec::absolute(1e-12),
        )
    })?;
    row(
        r,
        "embedding + layernorm",
        format!("{tokens}×{h}"),
        ms,
        10.0 * (tokens * h) as f64,
        8.0 * (tokens * h) as f64,
        None,
    );

    let d = h / heads;
    let qkv = random_buf(exec, tokens * 3 * h, 1.0, &mut rng)?;
    let lens = DevBuf::from_slice(exec, &vec![seq as i32; batch])?;
    let ms = median_ms(&**exec, warm, reps, || {
        launch::attention(&**exec, &y, &qkv, &lens, batch, seq, heads, d, None)
    })?;
    let flops = 4.0 * (batch * heads * seq * seq * d) as f64;
    row(
        r,
        "attention",
        format!("b{batch} s{seq} h{heads} d{d}"),
        ms,
        flops,
        2.0 * (tokens * 4 * h) as f64,
        None,
    );
    let pooled = DevBuf::new(exec, batch * h * 2)?;
    let ms =
        median_ms(&**exec, warm, reps, || launch::mean_pool_l2(&**exec, &pooled, &x, &lens, batch, seq, h))?;
    row(
        r,
        "mean pool + l2",
        format!("{tokens}×{h}"),
        ms,
        (tokens * h) as f64,
        2.0 * (tokens * h) as f64,
        None,
    );
    r.json.insert("kernel_timings".into(), json!(rows));

    // BERT-base forward
    let cfg = BertConfig::bert_base();
    let model = bert::random(&cfg, 1).to_backend(&cuda)?;
    let spec = AdapterSpec {
        kind: AdapterKind::SeqBn,
        reduction: 16,
        activation: Activation::Relu,
        init: Init::Bert,
    };
    let adapter =
        init::new_adapter("a", &spec, cfg.num_hidden_layers, h, &mut Rng::new(2))?.to_backend(&cuda)?;
    let tb = TokenBatch {
        batch,
        seq,
        ids: (0..tokens).map(|_| (rng.next_u64() % 30522) as u32).collect(),
        type_ids: vec![0; tokens],
        lens: vec![seq; batch],
        truncated: vec![false; batch],
    };
    let plain = median_ms(&**exec, 2, 10, || model.encode(&cuda, &tb, None, |_, _| {}).map(drop))?;
    let with_adapter =
        median_ms(&**exec, 2, 10, || model.encode(&cuda, &tb, Some(&adapter), |_, _| {}).map(drop))?;
    r.line(format!(
        "\n## BERT-base forward and adapter training step (random weights, batch {batch} × seq {seq}, median of 10)\n"
    ));
    r.line(format!("- encoder: **{plain:.2} ms** ({:.0} tokens/s)", tokens as f64 / (plain * 1e-3)));
    r.line(format!("- encoder + seq_bn adapter (reduction 16): **{with_adapter:.2} ms**"));
    r.json.insert("bert_base_forward_ms".into(), json!({"plain": plain, "seq_bn": with_adapter}));

    // one adapter training step: forward, backward, gradient norm, AdamW (dropout 0.1 on)
    let head = init::new_head("a", h, 2, &mut Rng::new(3)).to_backend(&cuda)?;
    let adapter =
        init::new_adapter("a", &spec, cfg.num_hidden_layers, h, &mut Rng::new(2))?.to_backend(&cuda)?;
    let mut trainee =
        Model::new(&cuda, bert::random(&cfg, 1).to_backend(&cuda)?, Some(adapter), head, false)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut step = 0u64;
    let train_ms = median_ms(&**exec, 2, 10, || {
        step += 1;
        let plan = Some(bert::DropoutPlan { hidden: 0.1, attention: 0.1, seed: 1, step });
        trainee.zero_grads(&cuda)?;
        trainee.forward_backward(&cuda, &tb, &labels, plan, false)?;
        opt.update(&cuda, trainee.params(), 1e-3).map(drop)
    })?;
    r.line(format!(
        "- seq_bn adapter training step (forward + backward + AdamW, dropout 0.1): **{train_ms:.2} ms**"
    ));
    r.json.insert("bert_base_adapter_train_step_ms".into(), json!(train_ms));
    Ok(())
}
