//! `admix attack`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use admix::attack::job::{self, AttackJob};
use admix::attack::run::{AttackConfig, AttackKind};
use admix::backend::Norm;

use super::{choice, ClassifierArgs, LabelledData, MaxLen, Runtime, Seed};

#[derive(Args)]
pub struct AttackArgs {
    /// The attack
    #[arg(long, value_parser = choice::<AttackKind>())]
    attack: AttackKind,
    /// The victim (`--adapter` once), or an AdpMixup mixture attacked as a whole (repeated; the
    /// gradient attacks need a single model or a static --beta mix)
    #[command(flatten)]
    clf: ClassifierArgs,
    #[command(flatten)]
    data: LabelledData,
    /// Attack the first N examples (default: all)
    #[arg(short = 'n', long)]
    num_examples: Option<usize>,
    /// Output directory: results.jsonl (one line per example), summary.json and job.json
    #[arg(long)]
    out: Option<PathBuf>,
    /// Most model queries per example, the original included (text attacks)
    #[arg(long, default_value_t = 2000)]
    query_budget: u64,
    /// Most candidates (or, for pgd/fgsm, sequences) per forward batch
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Text attacks: examples attacked at once (their queries share forward batches; HotFlip runs
    /// them in lockstep)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Text attacks: most tokens per forward batch
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch_tokens: u64,
    /// pgd/fgsm: the ball's norm
    #[arg(long, value_parser = choice::<Norm>(), default_value = "l2")]
    norm: Norm,
    /// pgd/fgsm: ball radius ε (per sequence)
    #[arg(long, default_value_t = 1.0)]
    eps: f32,
    /// pgd: step size α (default ε/4)
    #[arg(long)]
    alpha: Option<f32>,
    /// pgd: ascent steps
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// pgd: start from a random point of the ball
    #[arg(long)]
    random_start: bool,
    /// hotflip: most words changed, as a fraction of the words
    #[arg(long, default_value_t = 0.2)]
    max_word_frac: f32,
    /// hotflip: least embedding cosine between a new token and the one it replaces
    #[arg(long, default_value_t = 0.2)]
    min_cos: f32,
    /// hotflip: beam width (1 = greedy)
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// hotflip: flips confirmed by forward passes per beam and step
    #[arg(long, default_value_t = 8)]
    top_k: usize,
    /// pwws, textfooler: the WordNet 3.0 database directory; default: the fetched one
    #[arg(long)]
    wordnet: Option<PathBuf>,
    /// textfooler, textbugger: the GloVe 6B 50d directory; default: the fetched one
    #[arg(long)]
    glove: Option<PathBuf>,
    #[command(flatten)]
    seed: Seed,
    #[command(flatten)]
    max_len: MaxLen,
    #[command(flatten)]
    rt: Runtime,
}

pub fn attack(a: AttackArgs) -> Result<()> {
    a.rt.init()?;
    let config = AttackConfig {
        kind: a.attack,
        query_budget: a.query_budget,
        seed: a.seed.seed,
        batch_size: a.batch_size as usize,
        workers: a.workers as usize,
        max_batch_tokens: a.max_batch_tokens as usize,
        norm: a.norm,
        eps: a.eps,
        alpha: a.alpha,
        steps: a.steps,
        random_start: a.random_start,
        max_word_frac: a.max_word_frac,
        min_cos: a.min_cos,
        beam: a.beam,
        top_k: a.top_k,
    };
    config.check()?;
    let job = AttackJob {
        victim: a.clf.spec(None)?,
        model: a.rt.model,
        max_len: a.max_len.get(),
        data: a.data.data,
        split: a.data.split,
        num_examples: a.num_examples,
        device: a.rt.device,
        precision: a.rt.precision,
        wordnet: a.wordnet,
        glove: a.glove,
        attack: config,
        out: a.out,
    };
    let r = job::run(&job)?;
    let queries: usize = r.records.iter().map(|r| r.queries).sum();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {} ({} examples, {:.1} s, {:.1} examples/s, {:.0} queries/s)",
        a.attack.title(),
        r.data,
        r.records.len(),
        r.seconds,
        r.records.len() as f64 / r.seconds,
        queries as f64 / r.seconds
    )?;
    write!(out, "{}", r.summary.table())?;
    if let Some(dir) = &job.out {
        writeln!(out, "results in {}", dir.display())?;
    }
    Ok(())
}
