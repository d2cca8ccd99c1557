//! `admix train` and `admix eval`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use admix::adapter::{AdapterKind, ClassificationHead};
use admix::assets;
use admix::backend::cpu::Cpu;
use admix::backend::cuda::Cuda;
use admix::backend::{Activation, Backend, Device};
use admix::data::batches::{self, Encoded};
use admix::data::labeled::{self, LabelSet};
use admix::data::mr::{self, Split};
use admix::data::Example;
use admix::model::classify::Model;
use admix::model::ModelDir;
use admix::rng::Rng;
use admix::train::checkpoint::{self, Meta};
use admix::train::init::{self, AdapterSpec, Init};
use admix::train::metrics::{evaluate, Metrics};
use admix::train::optim::AdamWConfig;
use admix::train::trainer::{self, TrainConfig, TrainData};
use admix::weights::Tensor;

#[derive(Args)]
pub struct TrainArgs {
    /// Base model directory; default: the fetched MiniLM
    #[arg(long, env = "ADMIX_MODEL")]
    model: Option<PathBuf>,
    /// `mr` (built in), or use --train/--dev with your own files
    #[arg(long, default_value = "mr", conflicts_with = "train")]
    data: String,
    /// Training file: .tsv/.csv with a header naming `text`, `label` (and optional `text_pair`), or .jsonl
    #[arg(long)]
    train: Option<PathBuf>,
    /// Dev file (same format) evaluated after every epoch
    #[arg(long, requires = "train")]
    dev: Option<PathBuf>,
    /// Adapter placement: seq_bn (Pfeiffer), double_seq_bn (Houlsby), or none (train the head only,
    /// or with --full the whole encoder)
    #[arg(long, value_parser = ["seq_bn", "double_seq_bn", "none"])]
    adapter: Option<String>,
    /// Fine-tune every encoder weight (the full fine-tuning baseline)
    #[arg(long)]
    full: bool,
    /// Adapter reduction factor: bottleneck = hidden / reduction
    #[arg(long, default_value_t = 16)]
    reduction: usize,
    /// Adapter non-linearity (default: relu for seq_bn, swish for double_seq_bn)
    #[arg(long, value_parser = ["relu", "swish", "silu", "gelu"])]
    adapter_act: Option<String>,
    /// Adapter init: `bert` (N(0, 0.02)) or `mam` (zero up-projection: starts as the identity)
    #[arg(long, default_value = "bert", value_parser = ["bert", "mam"])]
    init: String,
    /// Adapter and head name in the checkpoint
    #[arg(long, default_value = "clean")]
    name: String,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate (default 1e-3 for adapters, 3e-5 with --full)
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(3..=8192))]
    max_len: u64,
    /// Fraction of the steps with linear warmup (then linear decay to 0)
    #[arg(long, default_value_t = 0.06)]
    warmup: f32,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Clip the global gradient norm (0 = off)
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Dropout probability (default: the model config's hidden_dropout_prob)
    #[arg(long)]
    dropout: Option<f32>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory: best/, last/, metrics.jsonl
    #[arg(long, default_value = "runs/clean")]
    out: PathBuf,
    /// Start afresh even if --out holds a run to resume
    #[arg(long)]
    overwrite: bool,
    /// Also save last/ every this many steps (0 = only at epoch ends)
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Stop after this many steps (smoke tests)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_steps: Option<u64>,
    /// FreeLB adversarial training: K ascent steps on the word embeddings per batch (L2 ball per
    /// sequence; the parameter gradients of the K passes are averaged). 0 = plain training
    #[arg(long, default_value_t = 0)]
    freelb_steps: usize,
    /// FreeLB: the ball's radius ε
    #[arg(long, default_value_t = 1.0)]
    freelb_eps: f32,
    /// FreeLB: the ascent step α (default ε/4)
    #[arg(long)]
    freelb_alpha: Option<f32>,
    /// Where the model runs: cpu, cuda (GPU 0) or emu (the kernels on the CPU's SIMT emulator)
    #[arg(long, value_enum, default_value = "cpu", env = "ADMIX_DEVICE")]
    device: Device,
    /// Worker threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory (a run directory means its best/)
    checkpoint: PathBuf,
    /// Base model directory (ignored for full fine-tuned checkpoints); default: the fetched MiniLM
    #[arg(long, env = "ADMIX_MODEL")]
    model: Option<PathBuf>,
    /// `mr`, or a labelled .tsv/.csv/.jsonl file
    #[arg(long, default_value = "mr")]
    data: String,
    /// MR split: train, dev or test
    #[arg(long, default_value = "test")]
    split: String,
    /// Default: the max length the checkpoint was trained with (admix.json), else 128
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Print the metrics as JSON
    #[arg(long)]
    json: bool,
    /// Also write per-example predictions (JSONL) here
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Where the model runs: cpu, cuda (GPU 0) or emu (the kernels on the CPU's SIMT emulator)
    #[arg(long, value_enum, default_value = "cpu", env = "ADMIX_DEVICE")]
    device: Device,
    /// Worker threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
}

/// Training and dev examples with label names.
fn train_examples(a: &TrainArgs) -> Result<(Vec<Example>, Option<Vec<Example>>, Vec<String>)> {
    match &a.train {
        Some(path) => {
            let raw = labeled::read(path)?;
            let source = path.display().to_string();
            let labels = LabelSet::from_examples(&raw, &source)?;
            let train = labels.encode(raw, &source)?;
            let dev = match &a.dev {
                Some(d) => Some(labels.encode(labeled::read(d)?, &d.display().to_string())?),
                None => None,
            };
            Ok((train, dev, labels.names))
        }
        None if a.data == "mr" => {
            let s = mr::load(&assets::mr_path())?;
            Ok((s.train, Some(s.dev), mr::LABELS.iter().map(|s| s.to_string()).collect()))
        }
        None => bail!("unknown dataset `{}`: use `mr`, or --train FILE [--dev FILE]", a.data),
    }
}

fn encode_split(model: &ModelDir, examples: &[Example], what: &str) -> Result<Vec<Encoded>> {
    if examples.is_empty() {
        bail!("the {what} split is empty");
    }
    let (enc, truncated) = batches::encode(&model.tokenizer, examples)?;
    if truncated > 0 {
        eprintln!(
            "note: {truncated} {what} example(s) longer than {} tokens were truncated",
            model.tokenizer.max_len()
        );
    }
    Ok(enc)
}

pub fn train(a: TrainArgs) -> Result<()> {
    admix::init_threads(a.threads)?;
    // the device first: a missing GPU should not cost a data load
    let cuda = a.device.cuda_backend()?;
    // settings first: a bad flag should not cost a data load
    if let Some(lr) = a.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("learning rate must be positive (got {lr})");
        }
    }
    if !(0.0..=1.0).contains(&a.warmup) {
        bail!(
            "--warmup is the fraction of steps spent warming up: give a number in [0, 1] (got {})",
            a.warmup
        );
    }
    if !(a.max_grad_norm >= 0.0 && a.max_grad_norm.is_finite()) {
        bail!("--max-grad-norm must be a positive norm, or 0 for no clipping (got {})", a.max_grad_norm);
    }
    if !(a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
        bail!("--weight-decay must be 0 or positive (got {})", a.weight_decay);
    }
    if a.epochs == 0 || a.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if let Some(d) = a.dropout {
        if !(0.0..1.0).contains(&d) {
            bail!("dropout must be in [0, 1) (got {d})");
        }
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create output directory {}", a.out.display()))?;
    let full = a.full;
    let kind = match a.adapter.as_deref() {
        None if full => None,
        None | Some("seq_bn") => Some(AdapterKind::SeqBn),
        Some("double_seq_bn") => Some(AdapterKind::DoubleSeqBn),
        _ => None,
    };
    let lr = a.lr.unwrap_or(if full { 3e-5 } else { 1e-3 });
    let model_dir = a.model.clone().unwrap_or_else(assets::default_model_dir);
    let model = ModelDir::open(&model_dir, a.max_len as usize)?;
    let cfg_m = &model.config;
    let (train_ex, dev_ex, labels) = train_examples(&a)?;
    let data = TrainData {
        train: encode_split(&model, &train_ex, "training")?,
        dev: dev_ex.as_deref().map(|d| encode_split(&model, d, "dev")).transpose()?,
        labels: labels.clone(),
        pad_id: model.tokenizer.pad_id(),
    };
    let activation = match (&a.adapter_act, kind) {
        (Some(s), _) => Activation::parse(s).with_context(|| format!("unknown activation `{s}`"))?,
        (None, Some(AdapterKind::DoubleSeqBn)) => Activation::Silu,
        (None, _) => Activation::Relu,
    };
    let init_kind = Init::parse(&a.init)?;
    let meta = Meta {
        base_model: model_dir.clone(),
        hidden: cfg_m.hidden_size,
        labels: labels.clone(),
        reduction: kind.map(|_| a.reduction),
        init: init_kind,
    };
    let dropout = a.dropout.unwrap_or(cfg_m.hidden_dropout_prob as f32);
    let attention_dropout =
        if a.dropout.is_some() { dropout } else { cfg_m.attention_probs_dropout_prob as f32 };
    let tc = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        eval_batch_size: 64,
        warmup_ratio: a.warmup,
        adamw: AdamWConfig {
            lr,
            weight_decay: a.weight_decay,
            max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
            ..AdamWConfig::default()
        },
        dropout,
        attention_dropout,
        seed: a.seed,
        save_every: a.save_every,
        max_steps: a.max_steps.map(|m| m as usize),
        freelb: (a.freelb_steps > 0).then(|| admix::attack::embedding::Pgd {
            norm: admix::backend::Norm::L2,
            eps: a.freelb_eps,
            alpha: a.freelb_alpha.unwrap_or(a.freelb_eps / 4.0),
            steps: a.freelb_steps,
            random_start: true,
        }),
    };
    let last = a.out.join("last");
    if a.overwrite {
        for d in ["best", "last", "metrics.jsonl"] {
            let p = a.out.join(d);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
    }
    let mut fp = trainer::fingerprint(&tc, &data, full);
    fp["adapter"] = serde_json::json!(a.adapter.clone().unwrap_or_else(|| if full {
        "none".into()
    } else {
        "seq_bn".into()
    }));
    fp["reduction"] = serde_json::json!(a.reduction);
    fp["init"] = serde_json::json!(a.init);
    fp["max_len"] = serde_json::json!(a.max_len);
    fp["model"] = serde_json::json!(model_dir);
    let resume = trainer::can_resume(&a.out, &fp)?;
    let (bert_host, adapter, head) = if resume {
        let ck = checkpoint::load(&last, cfg_m.num_hidden_layers, cfg_m.hidden_size)?;
        let bert = match &ck.model_dir {
            Some(d) => ModelDir::open(d, a.max_len as usize)?.bert()?,
            None => model.bert()?,
        };
        eprintln!("resuming from {}", last.display());
        (bert, ck.adapter, ck.head)
    } else {
        let mut rng = Rng::new(a.seed);
        let adapter = kind
            .map(|kind| {
                let spec = AdapterSpec { kind, reduction: a.reduction, activation, init: init_kind };
                init::new_adapter(&a.name, &spec, cfg_m.num_hidden_layers, cfg_m.hidden_size, &mut rng)
            })
            .transpose()?;
        let head: ClassificationHead<_> = init::new_head(&a.name, cfg_m.hidden_size, labels.len(), &mut rng);
        (model.bert()?, adapter, head)
    };
    let mut n_params = 0usize;
    let mut count = |t: &Tensor| {
        n_params += t.data().len();
        Ok(())
    };
    head.map(&mut count)?;
    if let Some(ad) = &adapter {
        ad.map(&mut count)?;
    }
    if full {
        bert_host.map(&mut count)?;
    }
    eprintln!(
        "training {} on {} examples ({} labels), {} trainable parameters, {} epochs of {} steps",
        match (full, kind) {
            (true, _) => "the full model".to_string(),
            (false, Some(AdapterKind::SeqBn)) =>
                format!("a seq_bn adapter (reduction {}) + head", a.reduction),
            (false, Some(AdapterKind::DoubleSeqBn)) => {
                format!("a double_seq_bn adapter (reduction {}) + head", a.reduction)
            }
            (false, None) => "the head".to_string(),
        },
        data.train.len(),
        labels.len(),
        n_params,
        a.epochs,
        data.train.len().div_ceil(a.batch_size.max(1))
    );
    let run = Run { data: &data, tc: &tc, meta: &meta, out: &a.out, resume, fp: &fp };
    let summary = match cuda {
        None => train_on(Cpu, bert_host, adapter, head, full, &run)?,
        Some(cuda) => train_on::<Cuda>(cuda, bert_host, adapter, head, full, &run)?,
    };
    write_run_info(&a.out.join("best"), &a, &model_dir)?;
    match summary.best_dev_accuracy {
        Some(acc) => eprintln!(
            "best dev accuracy {:.2}% (epoch {}); checkpoint in {}",
            100.0 * acc,
            summary.best_epoch,
            a.out.join("best").display()
        ),
        None => eprintln!("checkpoint in {}", a.out.join("best").display()),
    }
    Ok(())
}

/// What one training run needs besides the model.
struct Run<'a> {
    data: &'a TrainData,
    tc: &'a TrainConfig,
    meta: &'a Meta,
    out: &'a Path,
    resume: bool,
    fp: &'a serde_json::Value,
}

/// The training loop on one backend.
fn train_on<B: Backend>(
    be: B,
    bert: admix::model::bert::Bert<Tensor>,
    adapter: Option<admix::adapter::Adapter<Tensor>>,
    head: ClassificationHead<Tensor>,
    full: bool,
    r: &Run,
) -> Result<trainer::Summary> {
    let mut m = Model::new(
        &be,
        bert.to_backend(&be)?,
        adapter.map(|x| x.to_backend(&be)).transpose()?,
        head.to_backend(&be)?,
        full,
    )?;
    trainer::train(&be, &mut m, r.data, r.tc, r.meta, r.out, r.resume, r.fp)
}

/// `admix.json` beside the checkpoint: what eval needs to reproduce the training setup.
fn write_run_info(dir: &Path, a: &TrainArgs, model_dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let info = serde_json::json!({
        "base_model": model_dir,
        "max_len": a.max_len,
        "data": a.train.as_ref().map_or(a.data.clone(), |p| p.display().to_string()),
    });
    admix::io::write_atomic(&dir.join("admix.json"), serde_json::to_string_pretty(&info)?.as_bytes())
}

/// A checkpoint ready to run: its directory (a run directory means its best/), the base model (or
/// the fine-tuned one) and the adapter, head and labels.
pub struct OpenCheckpoint {
    pub dir: PathBuf,
    pub model: ModelDir,
    pub ck: checkpoint::Loaded,
}

/// Opens a checkpoint with the max length it was trained with (admix.json) unless `max_len` says.
pub fn open_checkpoint(path: &Path, model: Option<&Path>, max_len: Option<usize>) -> Result<OpenCheckpoint> {
    let mut dir = path.to_path_buf();
    if dir.join("best").is_dir() && !dir.join(checkpoint::HEAD_CONFIG).exists() {
        dir = dir.join("best");
    }
    let info: serde_json::Value = std::fs::read_to_string(dir.join("admix.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let max_len = max_len.unwrap_or(info["max_len"].as_u64().unwrap_or(128) as usize);
    let base = model.map(Path::to_path_buf).unwrap_or_else(assets::default_model_dir);
    let probe = ModelDir::open(&base, max_len)?;
    let ck = checkpoint::load(&dir, probe.config.num_hidden_layers, probe.config.hidden_size)?;
    let model = match &ck.model_dir {
        Some(d) => ModelDir::open(d, max_len)?,
        None => probe,
    };
    Ok(OpenCheckpoint { dir, model, ck })
}

/// The examples of `data` (`mr` and a split, or a labelled file) for a head with `labels`.
pub fn labelled_examples(data: &str, split: &str, labels: &[String]) -> Result<Vec<Example>> {
    Ok(match data {
        "mr" => {
            if labels.len() != 2 {
                bail!("the checkpoint's head has {} labels; MR has 2", labels.len());
            }
            mr::load(&assets::mr_path())?.get(Split::parse(split)?).to_vec()
        }
        path => {
            let set = LabelSet { names: labels.to_vec() };
            set.encode(labeled::read(Path::new(path))?, path)?
        }
    })
}

pub fn eval(a: EvalArgs) -> Result<()> {
    admix::init_threads(a.threads)?;
    let OpenCheckpoint { dir, model, ck } = open_checkpoint(&a.checkpoint, a.model.as_deref(), a.max_len)?;
    let examples = labelled_examples(&a.data, &a.split, &ck.labels)?;
    let data = encode_split(&model, &examples, "evaluation")?;
    let pad = model.tokenizer.pad_id();
    let (metrics, pred) = match a.device.cuda_backend()? {
        None => eval_on(Cpu, &model, ck.adapter, ck.head, &data, a.batch_size, pad, &ck.labels)?,
        Some(cuda) => {
            eval_on::<Cuda>(cuda, &model, ck.adapter, ck.head, &data, a.batch_size, pad, &ck.labels)?
        }
    };
    if let Some(p) = &a.predictions {
        let mut text = String::new();
        for (i, (e, &p)) in examples.iter().zip(&pred).enumerate() {
            let row = serde_json::json!({"index": i, "text": e.text, "label": ck.labels[e.label], "prediction": ck.labels[p]});
            text += &row.to_string();
            text.push('\n');
        }
        admix::io::write_atomic(p, text.as_bytes())?;
    }
    if a.json {
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&metrics)?)?;
    } else {
        print_metrics(&metrics, &dir, &a.data, &a.split)?;
    }
    Ok(())
}

/// Accuracy, loss and per-class scores of a checkpoint on one backend.
#[allow(clippy::too_many_arguments)]
fn eval_on<B: Backend>(
    be: B,
    model: &ModelDir,
    adapter: Option<admix::adapter::Adapter<admix::weights::Tensor>>,
    head: ClassificationHead<admix::weights::Tensor>,
    data: &[Encoded],
    batch_size: usize,
    pad_id: u32,
    labels: &[String],
) -> Result<(Metrics, Vec<usize>)> {
    let m = Model::new(
        &be,
        model.bert()?.to_backend(&be)?,
        adapter.map(|x| x.to_backend(&be)).transpose()?,
        head.to_backend(&be)?,
        false,
    )?;
    let bar = indicatif::ProgressBar::new(data.len() as u64);
    let out = evaluate(&be, &m, data, batch_size.max(1), pad_id, labels, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    Ok(out)
}

fn print_metrics(m: &Metrics, dir: &Path, data: &str, split: &str) -> Result<()> {
    let what = if data == "mr" { format!("MR {split}") } else { data.to_string() };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} on {what}: {} examples", dir.display(), m.examples)?;
    writeln!(out, "accuracy  {:.2}%   loss {:.4}   macro F1 {:.4}", 100.0 * m.accuracy, m.loss, m.macro_f1)?;
    writeln!(out, "{:<16} {:>9} {:>9} {:>9} {:>8}", "label", "precision", "recall", "f1", "support")?;
    for c in &m.per_class {
        writeln!(
            out,
            "{:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            c.label, c.precision, c.recall, c.f1, c.support
        )?;
    }
    Ok(())
}
