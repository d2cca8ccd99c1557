//! `admix embed`, `admix score` and `admix similarity`.

use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use admix::classifier;
use admix::data::input::Record;
use admix::engine::{run_batches, Engine};
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;

use super::{label_names, read_inputs, write_jsonl, ClassifierArgs, MaxLen, Runtime};

#[derive(Args)]
pub struct RunArgs {
    /// Input file (`-` for stdin): plain text one per line, TSV or CSV with a `text` column, or JSONL
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
    rt: Runtime,
    #[command(flatten)]
    max_len: MaxLen,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    clf: ClassifierArgs,
    /// Comma-separated label names, in id order (default: the checkpoint's, else the label ids)
    #[arg(long)]
    labels: Option<String>,
    /// Pipeline mode: JSON lines ({"text", "text_pair"?, "id"?}) in, one JSON line out per input as
    /// soon as its batch is scored; lines that arrive together are batched
    #[arg(long)]
    stream: bool,
}

#[derive(Args)]
pub struct SimilarityArgs {
    #[command(flatten)]
    run: RunArgs,
    /// How many pairs to print
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// Sentence embeddings of the inputs (mean pooling + L2 norm), in input order.
fn embeddings(a: &RunArgs) -> Result<(Vec<Record>, Vec<Vec<f32>>)> {
    let inputs = read_inputs(&a.input, a.format.as_deref())?;
    a.rt.init()?;
    let model = ModelDir::open_or_default(&a.rt.model_dir(), a.max_len.get(), classifier::DEFAULT_MAX_LEN)?;
    let max_len = model.tokenizer.max_len();
    let texts: Vec<TextInput> = inputs.iter().map(|r| r.input.clone()).collect();
    let (emb, truncated) = admix::with_backend!(a.rt.device.open(a.rt.precision)?, be => {
        let engine = Engine::new(be, model, None, None)?;
        run_batches(&engine.tokenizer, &texts, a.batch_size as usize, |b| engine.embed_batch(b))?
    });
    note_truncated(truncated, max_len);
    Ok((inputs, emb))
}

fn note_truncated(n: usize, max_len: usize) {
    if n > 0 {
        eprintln!("note: {n} input(s) longer than {max_len} tokens were truncated");
    }
}

pub fn embed(a: RunArgs) -> Result<()> {
    let (inputs, emb) = embeddings(&a)?;
    write_jsonl(
        a.output.as_deref(),
        inputs.iter().zip(emb).map(|(r, e)| serde_json::json!({ "line": r.line, "embedding": e })),
    )
}

pub fn similarity(a: SimilarityArgs) -> Result<()> {
    let (inputs, emb) = embeddings(&a.run)?;
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
    let mut out = std::io::stdout().lock();
    for (cos, i, j) in pairs.into_iter().take(a.top) {
        writeln!(out, "{cos:.4}  {:<60}  {}", short(&inputs[i].input.text), short(&inputs[j].input.text))?;
    }
    Ok(())
}

pub fn score(a: ScoreArgs) -> Result<()> {
    if a.stream {
        return stream(a);
    }
    let inputs = read_inputs(&a.run.input, a.run.format.as_deref())?;
    a.run.rt.init()?;
    let spec = a.clf.spec(None)?;
    let loaded = classifier::load(&spec, a.run.rt.model.as_deref(), a.run.max_len.get())?;
    let labels = label_names(a.labels.as_deref(), &loaded.labels)?;
    let texts: Vec<TextInput> = inputs.iter().map(|r| r.input.clone()).collect();
    let (scored, truncated) = admix::with_backend!(a.run.rt.device.open(a.run.rt.precision)?, be => {
        let built = loaded.build(&be)?;
        run_batches(&loaded.model.tokenizer, &texts, a.run.batch_size as usize, |b| built.score(&be, b))?
    });
    note_truncated(truncated, loaded.model.tokenizer.max_len());
    write_jsonl(
        a.run.output.as_deref(),
        inputs.iter().zip(scored).map(|(r, s)| {
            let mut row = serde_json::json!({
                "line": r.line,
                "label": labels[s.label],
                "label_id": s.label,
                "probs": s.probs,
            });
            if let Some(l) = s.logits {
                row["logits"] = serde_json::json!(l);
            }
            if let Some(b) = s.beta {
                row["beta"] = serde_json::json!(b);
            }
            row
        }),
    )
}

/// `admix score --stream`: stdin JSONL → stdout JSONL through the server's scorer.
fn stream(a: ScoreArgs) -> Result<()> {
    if a.run.input != "-" {
        bail!("--stream reads stdin (got input `{}`)", a.run.input);
    }
    if a.run.output.is_some() {
        bail!("--stream writes stdout (drop --output)");
    }
    a.run.rt.init()?;
    let spec = a.clf.spec(None)?;
    let loaded = classifier::load(&spec, a.run.rt.model.as_deref(), a.run.max_len.get())?;
    let labels = label_names(a.labels.as_deref(), &loaded.labels)?;
    let batch = a.run.batch_size as usize;
    let scorer = admix::serve::scorer::open(a.run.rt.device, a.run.rt.precision, loaded, batch)?;
    let stdin = BufReader::new(std::io::stdin());
    let n = admix::serve::stream::run(&*scorer, &labels, stdin, std::io::stdout().lock(), batch)?;
    eprintln!("admix score --stream: {n} line(s) scored");
    Ok(())
}
