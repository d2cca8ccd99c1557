//! `admix train`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use admix::adapter::Init;
use admix::backend::Activation;
use admix::train::job::{self, Placement, TrainJob, TrainSource};

use super::{choice, MaxLen, Runtime, Seed};

#[derive(Args)]
pub struct TrainArgs {
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
    #[arg(long, value_parser = choice::<Placement>())]
    adapter: Option<Placement>,
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
    #[arg(long, default_value = "bert", value_parser = choice::<Init>())]
    init: Init,
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
    /// Output directory: best/, last/, metrics.jsonl, train.json
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
    #[command(flatten)]
    seed: Seed,
    #[command(flatten)]
    max_len: MaxLen,
    #[command(flatten)]
    rt: Runtime,
}

impl TrainArgs {
    fn job(self) -> Result<TrainJob> {
        let data = match self.train {
            Some(train) => TrainSource::Files { train, dev: self.dev },
            None if self.data == "mr" => TrainSource::Mr,
            None => bail!("unknown dataset `{}`: use `mr`, or --train FILE [--dev FILE]", self.data),
        };
        let adapter_act = match &self.adapter_act {
            Some(s) => Some(Activation::parse(s).with_context(|| format!("unknown activation `{s}`"))?),
            None => None,
        };
        Ok(TrainJob {
            model: self.rt.model,
            data,
            adapter: self.adapter,
            full: self.full,
            reduction: self.reduction,
            adapter_act,
            init: self.init,
            name: self.name,
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.batch_size,
            max_len: self.max_len.get().unwrap_or(64),
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            dropout: self.dropout,
            seed: self.seed.seed,
            out: self.out,
            overwrite: self.overwrite,
            save_every: self.save_every,
            max_steps: self.max_steps.map(|m| m as usize),
            freelb_steps: self.freelb_steps,
            freelb_eps: self.freelb_eps,
            freelb_alpha: self.freelb_alpha,
            device: self.rt.device,
            precision: self.rt.precision,
        })
    }
}

pub fn train(a: TrainArgs) -> Result<()> {
    a.rt.init()?;
    job::run(&a.job()?).map(drop)
}
