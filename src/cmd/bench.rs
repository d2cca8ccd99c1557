//! `admix bench`: the benchmark binary (the suites are the library's [`admix::bench`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use admix::bench::run::{self, BenchConfig, BenchOutcome, Suite};
use admix::bench::Size;

use super::{choice, Runtime};

#[derive(Args)]
pub struct BenchArgs {
    /// Suites to run
    #[arg(long, value_parser = choice::<Suite>(), value_delimiter = ',', default_value = "kernels,model")]
    suites: Vec<Suite>,
    /// Model sizes [default: minilm on cpu; minilm,base,large on cuda; tiny on emu and with --quick]
    #[arg(long, value_parser = choice::<Size>(), value_delimiter = ',')]
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
    #[command(flatten)]
    rt: Runtime,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    a.rt.init()?;
    let config = BenchConfig {
        device: a.rt.device,
        precision: a.rt.precision,
        suites: a.suites,
        models: a.models,
        batches: a.batches,
        seq: a.seq,
        work_batch: a.work_batch,
        warmup: a.warmup,
        reps: a.reps,
        quick: a.quick,
        no_flush: a.no_flush,
        out: a.out,
        profile_steps: a.profile_steps,
        peer: a.peer,
        model: a.rt.model,
    };
    let mut out = std::io::stdout().lock();
    match run::run(&config)? {
        BenchOutcome::Profiled(line) => writeln!(out, "{line}")?,
        BenchOutcome::Report { json, .. } if a.json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?
        }
        BenchOutcome::Report { heading, table, .. } => {
            writeln!(out, "{heading}")?;
            write!(out, "{table}")?;
        }
    }
    Ok(())
}
