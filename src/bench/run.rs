//! `admix bench` as a library call: a typed [`BenchConfig`] in, the report (JSON and table) out.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backend::cpu::Cpu;
use crate::backend::cuda::{cublas::Cublas, Cuda, DevBuf};
use crate::backend::{AnyBackend, Backend, Device, Precision};
use crate::bench::ceilings::{self, Ceilings};
use crate::bench::kernels::{self, Gemm};
use crate::bench::{self, model, Plan, Row, Size, Timer};
use crate::model::bert::{self, Bert};
use crate::model::config::BertConfig;
use crate::model::ModelDir;
use crate::weights::Tensor;
use crate::Choice;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    Kernels,
    Model,
}

impl crate::Choice for Suite {
    const WHAT: &'static str = "suite";
    const ALL: &'static [Self] = &[Suite::Kernels, Suite::Model];
    fn name(self) -> &'static str {
        match self {
            Suite::Kernels => "kernels",
            Suite::Model => "model",
        }
    }
}

/// What `admix bench` runs (its flags, typed; `None` = the device's default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    pub device: Device,
    /// the GEMMs' precision (default: the device's own)
    pub precision: Option<Precision>,
    pub suites: Vec<Suite>,
    pub models: Option<Vec<Size>>,
    pub batches: Option<Vec<usize>>,
    pub seq: Option<usize>,
    pub work_batch: Option<usize>,
    pub warmup: Option<usize>,
    pub reps: Option<usize>,
    /// CI-sized: the tiny model, small batches, 3 repetitions
    pub quick: bool,
    pub no_flush: bool,
    /// also write the results as JSON here
    pub out: Option<PathBuf>,
    /// instead of the suites: N adapter training steps inside the profiler's capture range
    pub profile_steps: Option<usize>,
    /// a peer run's medians to put beside the model rows
    pub peer: Option<PathBuf>,
    /// the MiniLM directory (default: the fetched one)
    pub model: Option<PathBuf>,
}

/// What a bench run produced.
pub enum BenchOutcome {
    /// `profile_steps`: one line saying what ran
    Profiled(String),
    /// the suites: the JSON report, a heading and the table
    Report { json: serde_json::Value, heading: String, table: String },
}

fn plan(a: &BenchConfig) -> Result<Plan> {
    let small = a.quick || a.device == Device::Emu;
    let gpu = a.device == Device::Cuda;
    let p = Plan {
        sizes: a.models.clone().unwrap_or_else(|| match (small, gpu) {
            (true, _) => vec![Size::Tiny],
            (false, true) => vec![Size::Minilm, Size::Base, Size::Large],
            (false, false) => vec![Size::Minilm],
        }),
        batches: a.batches.clone().unwrap_or_else(|| match (small, gpu) {
            (true, _) => vec![1, 4],
            (false, true) => vec![1, 8, 32, 128],
            (false, false) => vec![1, 8, 32],
        }),
        seq: a.seq.unwrap_or(if small { 16 } else { 128 }),
        work_batch: a.work_batch.unwrap_or(if small { 4 } else { 32 }),
        warmup: a.warmup.unwrap_or(if small { 1 } else { 3 }),
        reps: a.reps.unwrap_or(if small {
            3
        } else if gpu {
            50
        } else {
            10
        }),
        flush: !a.no_flush && a.device != Device::Emu,
    };
    if p.sizes.is_empty() || p.batches.is_empty() {
        bail!("no model sizes or batch sizes to run");
    }
    if p.batches.contains(&0) || p.seq < 2 || p.work_batch == 0 || p.reps == 0 {
        bail!("batch sizes, --work-batch and --reps must be positive and --seq at least 2");
    }
    Ok(p)
}

/// A model size's encoder, checked before anything is measured: MiniLM's directory (opened, so
/// its weights are mapped, not read), or the shape of a random one.
enum Encoder {
    Real(Box<ModelDir>),
    Random(BertConfig),
}

fn encoder(size: Size, a: &BenchConfig, seq: usize) -> Result<Encoder> {
    Ok(match size.config() {
        Some(cfg) => {
            anyhow::ensure!(
                seq <= cfg.max_tokens(),
                "--seq {seq} exceeds {}'s {} positions",
                size.name(),
                cfg.max_tokens()
            );
            Encoder::Random(cfg)
        }
        None => {
            let dir = a.model.clone().unwrap_or_else(crate::assets::default_model_dir);
            Encoder::Real(Box::new(ModelDir::open(&dir, seq)?))
        }
    })
}

impl Encoder {
    /// The shape and the host weights (random ones are drawn here).
    fn load(&self) -> Result<(BertConfig, Bert<Tensor>)> {
        Ok(match self {
            Encoder::Real(m) => (m.config.clone(), m.bert()?),
            Encoder::Random(cfg) => (cfg.clone(), bert::random(cfg, 1)),
        })
    }
}

/// Runs the suites (or the profiled steps) that `a` asks for.
pub fn run(a: &BenchConfig) -> Result<BenchOutcome> {
    let plan = plan(a)?;
    match a.device.open(a.precision)? {
        AnyBackend::Cpu(cpu) => run_on(&cpu, a, &plan, Hardware::Cpu(&cpu)),
        AnyBackend::Cuda(cuda) => {
            // cuBLAS beside the kernels, on a GPU
            let cublas = if a.device == Device::Cuda { Cublas::open().ok() } else { None };
            run_on(&cuda, a, &plan, Hardware::Cuda(&cuda, cublas.as_ref()))
        }
    }
}

/// cuBLAS's time for a GEMM shape, on random bf16 operands.
fn cublas_ms(cuda: &Cuda, c: &Cublas, which: Gemm, m: usize, n: usize, k: usize) -> Result<f64> {
    let exec = cuda.executor();
    let rand = |len: usize, seed: u64| -> Result<DevBuf> {
        let bits: Vec<u16> =
            ceilings::values(len, seed).iter().map(|&v| crate::backend::bf16::from_f32(v)).collect();
        DevBuf::from_slice(exec, &bits)
    };
    let (x, w, dy) = (rand(m * k, 1)?, rand(n * k, 2)?, rand(m * n, 3)?);
    let out = DevBuf::new(exec, 4 * m.max(n) * k.max(n))?;
    let times = exec.time_runs(3, 20, &mut || Ok(()), &mut || match which {
        Gemm::Forward => c.gemm(&out, &x, &w, m, n, k),
        Gemm::Dx => c.gemm_dx(&out, &dy, &w, m, n, k),
        Gemm::Dw => c.gemm_dw(&out, &dy, &x, m, n, k),
    })?;
    Ok(bench::stats(times)?.0)
}

/// What a bench run measures on, for its ceilings and references: the CPU at its precision, or a
/// CUDA executor with cuBLAS where it loads.
#[derive(Clone, Copy)]
enum Hardware<'a> {
    Cpu(&'a Cpu),
    Cuda(&'a Cuda, Option<&'a Cublas>),
}

fn run_on<B: Backend>(be: &B, a: &BenchConfig, plan: &Plan, hw: Hardware) -> Result<BenchOutcome> {
    let device = a.device.name();
    let precision = match hw {
        Hardware::Cpu(cpu) => cpu.precision(),
        Hardware::Cuda(..) => Precision::Bf16,
    };
    if let Some(n) = a.profile_steps {
        anyhow::ensure!(n > 0, "--profile-steps must be positive");
        let size = plan.sizes[0];
        let (cfg, host) = encoder(size, a, plan.seq)?.load()?;
        let capture = a.device == Device::Cuda;
        if !capture {
            eprintln!("note: no CUDA profiler capture on --device {device}; the steps run with their NVTX ranges only");
        }
        let ms = model::profile_steps(be, &cfg, &host, plan, n, capture)?;
        return Ok(BenchOutcome::Profiled(format!(
            "profiled {n} adapter training step(s) of {} (batch {} × {}): {ms:.1} ms in all; NVTX ranges {}",
            size.name(),
            plan.work_batch,
            plan.seq,
            crate::profile::nvtx_library()
                .map_or("off (no NVTX library found; see docs/profiling.md)".into(), |l| format!("on ({l})"))
        )));
    }
    // the peer file and every size are checked before anything is measured
    let peer = match &a.peer {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let v: serde_json::Value =
                serde_json::from_slice(&text).with_context(|| format!("{}: not JSON", p.display()))?;
            Some((p, v))
        }
        None => None,
    };
    let encoders = plan.sizes.iter().map(|&s| encoder(s, a, plan.seq)).collect::<Result<Vec<_>>>()?;
    let kernels_on = a.suites.contains(&Suite::Kernels);
    let small = a.quick || a.device == Device::Emu;
    let measure_ceilings = || -> Result<Ceilings> {
        match hw {
            Hardware::Cpu(cpu) => {
                ceilings::cpu(cpu, if small { 16 } else { 256 }, if small { 256 } else { 2048 })
            }
            Hardware::Cuda(c, _) if a.device == Device::Emu => ceilings::cuda(c, 4, 64),
            Hardware::Cuda(c, _) => {
                ceilings::cuda(c, if small { 64 } else { 1024 }, if small { 1024 } else { 8192 })
            }
        }
    };
    let before: Option<Ceilings> = kernels_on.then(measure_ceilings).transpose()?;
    let flush_bytes = match (a.device, small) {
        (_, true) => 8 << 20,
        (Device::Cuda, false) => 128 << 20,
        _ => 64 << 20,
    };
    let timer = Timer::new(be, plan, flush_bytes)?;
    // cuBLAS's time at each GEMM shape, where there is cuBLAS
    let reference = match hw {
        Hardware::Cuda(c, Some(cb)) => {
            Some(move |which: Gemm, m: usize, n: usize, k: usize| cublas_ms(c, cb, which, m, n, k))
        }
        _ => None,
    };
    let mut rows: Vec<Row> = Vec::new();
    for (&size, enc) in plan.sizes.iter().zip(&encoders) {
        let (cfg, host) = enc.load()?;
        let label = size.name();
        if kernels_on {
            let before = rows.len();
            kernels::run(
                &timer,
                (&cfg, label),
                (plan.work_batch, plan.seq),
                reference.as_ref().map(|f| f as kernels::Reference),
                &mut rows,
            )?;
            progress(&rows[before..]);
        }
        if a.suites.contains(&Suite::Model) {
            let before = rows.len();
            model::run(&timer, &cfg, &host, label, &mut rows)?;
            progress(&rows[before..]);
        }
    }
    // measured again after the suites; each ceiling is the better of the two
    let ceil = match before {
        Some(b) => Some(b.best_of(measure_ceilings()?)),
        None => None,
    };
    if let Some(c) = &ceil {
        eprintln!(
            "ceilings: {:.1} GB/s ({}), {:.3} TFLOP/s ({})",
            c.copy_bytes_per_s / 1e9,
            c.copy,
            c.gemm_flops_per_s / 1e12,
            c.gemm
        );
        bench::apply_roofline(&mut rows, c);
    }
    let mut peer_meta = serde_json::Value::Null;
    if let Some((p, v)) = &peer {
        let n = bench::merge_peer(&mut rows, v).with_context(|| format!("{}", p.display()))?;
        eprintln!("peer: {n} row(s) matched from {}", p.display());
        // older peer files name only their dtype
        let theirs = v["precision"].as_str().or(match v["dtype"].as_str() {
            Some("float32") => Some("f32"),
            Some("bfloat16") => Some("bf16"),
            _ => None,
        });
        if let Some(theirs) = theirs.filter(|t| *t != precision.name()) {
            eprintln!(
                "note: the peer ran in {theirs} and this run in {}: its columns are not like for like",
                precision.name()
            );
        }
        if let Some(o) = v.as_object() {
            peer_meta = o.iter().filter(|(k, _)| *k != "rows").map(|(k, v)| (k.clone(), v.clone())).collect();
        }
    }
    let report = json!({
        "date": crate::provenance::today(),
        "machine": crate::provenance::machine(),
        "device": device,
        "backend": be.name(),
        "precision": precision.name(),
        "gpu": match hw {
            Hardware::Cuda(c, _) => Some(c.executor().describe()),
            Hardware::Cpu(_) => None,
        },
        "plan": {
            "models": plan.sizes, "batches": plan.batches, "seq": plan.seq, "work_batch": plan.work_batch,
            "warmup": plan.warmup, "reps": plan.reps, "flush": plan.flush,
        },
        "ceilings": ceil,
        "peer": peer_meta,
        "rows": rows,
    });
    if let Some(p) = &a.out {
        crate::io::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    let heading = format!(
        "admix bench on {device} ({}, {}), {}: {} warm-up + {} timed runs per case, median and p99\n",
        be.name(),
        precision.name(),
        crate::provenance::machine(),
        plan.warmup,
        plan.reps
    );
    Ok(BenchOutcome::Report { json: report, heading, table: bench::table(&rows) })
}

fn progress(rows: &[Row]) {
    for r in rows {
        eprintln!("bench: {} {} {}: {:.3} ms", r.suite, r.model, r.case, r.median_ms);
    }
}
