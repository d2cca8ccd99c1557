//! `admix bench`: the benchmark binary (src/bench has the suites).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use admix::backend::cpu::Cpu;
use admix::backend::cuda::{cublas::Cublas, Cuda, DevBuf};
use admix::backend::{Backend, Device};
use admix::bench::ceilings::{self, Ceilings};
use admix::bench::kernels::{self, Gemm};
use admix::bench::{self, model, Plan, Row, Size, Timer};
use admix::model::bert::{self, Bert};
use admix::model::config::BertConfig;
use admix::model::ModelDir;
use admix::weights::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Kernels,
    Model,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Where to run: cpu (f32 reference), cuda (the kernels on GPU 0), emu (the kernels on the
    /// SIMT emulator: checks that the suites run; its times say nothing about a GPU)
    #[arg(long, value_enum, default_value = "cpu", env = "ADMIX_DEVICE")]
    device: Device,
    /// Suites to run
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kernels,model")]
    suites: Vec<Suite>,
    /// Model sizes [default: minilm on cpu; minilm,base,large on cuda; tiny on emu and with --quick]
    #[arg(long, value_enum, value_delimiter = ',')]
    models: Option<Vec<Size>>,
    /// Forward batch sizes [default: 1,8,32 on cpu; 1,8,32,128 on cuda; 1,4 on emu and with --quick]
    #[arg(long, value_delimiter = ',')]
    batches: Option<Vec<usize>>,
    /// Tokens per sequence [default: 128; 16 on emu and with --quick]
    #[arg(long)]
    seq: Option<usize>,
    /// Batch of the kernel suite, training step, attack steps and AdpMixup scoring [default: 32; 4
    /// on emu and with --quick]
    #[arg(long)]
    work_batch: Option<usize>,
    /// Untimed runs before each case [default: 3; 1 with --quick]
    #[arg(long)]
    warmup: Option<usize>,
    /// Timed runs per case [default: 50 on cuda, 10 on cpu; 3 on emu and with --quick]
    #[arg(long)]
    reps: Option<usize>,
    /// CI-sized: the tiny model, small batches, 3 repetitions (a smoke test, not a measurement)
    #[arg(long)]
    quick: bool,
    /// Do not read a cache-sized buffer through before each timed run
    #[arg(long)]
    no_flush: bool,
    /// Print the results as JSON on stdout instead of the table
    #[arg(long)]
    json: bool,
    /// Also write the results as JSON to this file
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instead of the suites: run N adapter training steps of the first model (after two warm-up
    /// steps) inside cuProfilerStart/Stop, for `nsys profile --capture-range=cudaProfilerApi`
    #[arg(long)]
    profile_steps: Option<usize>,
    /// Put the medians of a peer run (benches/pytorch_bench.py --out FILE) beside the model rows
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The MiniLM directory [default: the fetched one]
    #[arg(long, env = "ADMIX_MODEL")]
    model: Option<PathBuf>,
    /// CPU threads [default: all cores]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
}

fn plan(a: &BenchArgs) -> Result<Plan> {
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

fn encoder(size: Size, a: &BenchArgs, seq: usize) -> Result<Encoder> {
    Ok(match size.config() {
        Some(cfg) => {
            anyhow::ensure!(
                seq <= cfg.max_position_embeddings,
                "--seq {seq} exceeds {}'s {} positions",
                size.name(),
                cfg.max_position_embeddings
            );
            Encoder::Random(cfg)
        }
        None => {
            let dir = a.model.clone().unwrap_or_else(admix::assets::default_model_dir);
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

pub fn bench(a: BenchArgs) -> Result<()> {
    admix::init_threads(a.threads.map(|t| t as usize))?;
    let plan = plan(&a)?;
    match a.device.cuda_backend()? {
        None => run(&Cpu, &a, &plan, None),
        Some(cuda) => {
            let cublas = if a.device == Device::Cuda { Cublas::open().ok() } else { None };
            run(&cuda, &a, &plan, Some((&cuda, cublas.as_ref())))
        }
    }
}

/// cuBLAS's time for a GEMM shape, on random bf16 operands.
fn cublas_ms(cuda: &Cuda, c: &Cublas, which: Gemm, m: usize, n: usize, k: usize) -> Result<f64> {
    let exec = cuda.executor();
    let rand = |len: usize, seed: u64| -> Result<DevBuf> {
        let bits: Vec<u16> =
            ceilings::values(len, seed).iter().map(|&v| admix::backend::cuda::bf16::from_f32(v)).collect();
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

fn run<B: Backend>(be: &B, a: &BenchArgs, plan: &Plan, cuda: Option<(&Cuda, Option<&Cublas>)>) -> Result<()> {
    let device = format!("{:?}", a.device).to_lowercase();
    if let Some(n) = a.profile_steps {
        anyhow::ensure!(n > 0, "--profile-steps must be positive");
        let size = plan.sizes[0];
        let (cfg, host) = encoder(size, a, plan.seq)?.load()?;
        let capture = a.device == Device::Cuda;
        if !capture {
            eprintln!("note: no CUDA profiler capture on --device {device}; the steps run with their NVTX ranges only");
        }
        let ms = model::profile_steps(be, &cfg, &host, plan, n, capture)?;
        println!(
            "profiled {n} adapter training step(s) of {} (batch {} × {}): {ms:.1} ms in all; NVTX ranges {}",
            size.name(),
            plan.work_batch,
            plan.seq,
            admix::profile::nvtx_library()
                .map_or("off (no NVTX library found; see docs/profiling.md)".into(), |l| format!("on ({l})"))
        );
        return Ok(());
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
        match cuda {
            None => ceilings::cpu(if small { 16 } else { 256 }, if small { 256 } else { 2048 }),
            Some((c, _)) if a.device == Device::Emu => ceilings::cuda(c, 4, 64),
            Some((c, _)) => ceilings::cuda(c, if small { 64 } else { 1024 }, if small { 1024 } else { 8192 }),
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
    let reference = match cuda {
        Some((c, Some(cb))) => {
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
        if let Some(o) = v.as_object() {
            peer_meta = o.iter().filter(|(k, _)| *k != "rows").map(|(k, v)| (k.clone(), v.clone())).collect();
        }
    }
    let report = json!({
        "date": admix::provenance::today(),
        "machine": admix::provenance::machine(),
        "device": device,
        "backend": be.name(),
        "gpu": cuda.map(|(c, _)| c.executor().describe()),
        "plan": {
            "models": plan.sizes, "batches": plan.batches, "seq": plan.seq, "work_batch": plan.work_batch,
            "warmup": plan.warmup, "reps": plan.reps, "flush": plan.flush,
        },
        "ceilings": ceil,
        "peer": peer_meta,
        "rows": rows,
    });
    if let Some(p) = &a.out {
        admix::io::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "admix bench on {device} ({}), {}: {} warm-up + {} timed runs per case, median and p99\n",
            be.name(),
            admix::provenance::machine(),
            plan.warmup,
            plan.reps
        )?;
        write!(out, "{}", bench::table(&rows))?;
    }
    Ok(())
}

fn progress(rows: &[Row]) {
    for r in rows {
        eprintln!("bench: {} {} {}: {:.3} ms", r.suite, r.model, r.case, r.median_ms);
    }
}
