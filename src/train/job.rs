//! `admix train` as a library call: a typed [`TrainJob`] (what the command's flags say), run on
//! its device by [`run`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::init::{self, AdapterSpec};
use super::optim::AdamWConfig;
use super::trainer::{Summary, TrainConfig, TrainData};
use crate::adapter::{AdapterKind, ClassificationHead, Init};
use crate::assets;
use crate::backend::{Activation, Backend, Device, Precision};
use crate::classifier::checkpoint::{self, Meta};
use crate::data::batches;
use crate::data::labeled::{self, LabelSet};
use crate::data::mr;
use crate::data::Example;
use crate::model::classify::Model;
use crate::model::ModelDir;
use crate::rng::Rng;
use crate::weights::Tensor;
use crate::Choice;

/// Where an adapter goes: `seq_bn` (Pfeiffer), `double_seq_bn` (Houlsby), or `none` (train the
/// head only, or with `full` the whole encoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    SeqBn,
    DoubleSeqBn,
    None,
}

impl Choice for Placement {
    const WHAT: &'static str = "adapter placement";
    const ALL: &'static [Self] = &[Placement::SeqBn, Placement::DoubleSeqBn, Placement::None];
    fn name(self) -> &'static str {
        match self {
            Placement::SeqBn => "seq_bn",
            Placement::DoubleSeqBn => "double_seq_bn",
            Placement::None => "none",
        }
    }
}

/// The training data: MR's train and dev splits, or the user's labelled files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainSource {
    Mr,
    Files { train: PathBuf, dev: Option<PathBuf> },
}

/// One training run (`admix train`'s flags, typed; the defaults are [`TrainJob::new`]'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainJob {
    /// base model directory (default: the fetched MiniLM)
    pub model: Option<PathBuf>,
    pub data: TrainSource,
    /// adapter placement (default: seq_bn, or none with `full`)
    pub adapter: Option<Placement>,
    /// fine-tune every encoder weight
    pub full: bool,
    pub reduction: usize,
    /// adapter non-linearity (default: relu for seq_bn, swish for double_seq_bn)
    pub adapter_act: Option<Activation>,
    pub init: Init,
    /// adapter and head name in the checkpoint
    pub name: String,
    pub epochs: usize,
    /// peak learning rate (default 1e-3 for adapters, 3e-5 with `full`)
    pub lr: Option<f32>,
    pub batch_size: usize,
    pub max_len: usize,
    /// fraction of the steps with linear warmup
    pub warmup: f32,
    pub weight_decay: f32,
    /// clip the global gradient norm (0 = off)
    pub max_grad_norm: f32,
    /// dropout (default: the model config's)
    pub dropout: Option<f32>,
    pub seed: u64,
    pub out: PathBuf,
    /// start afresh even if `out` holds a run to resume
    pub overwrite: bool,
    /// also save last/ every this many steps (0 = only at epoch ends)
    pub save_every: usize,
    pub max_steps: Option<usize>,
    /// FreeLB: ascent steps K (0 = plain training), radius ε, step α (default ε/4)
    pub freelb_steps: usize,
    pub freelb_eps: f32,
    pub freelb_alpha: Option<f32>,
    pub device: Device,
    /// the GEMMs' precision (default: the device's own; bf16 keeps f32 master weights and AdamW)
    pub precision: Option<Precision>,
}

impl TrainJob {
    /// A run on `data` into `out` with `admix train`'s defaults.
    pub fn new(data: TrainSource, out: PathBuf) -> TrainJob {
        TrainJob {
            model: None,
            data,
            adapter: None,
            full: false,
            reduction: 16,
            adapter_act: None,
            init: Init::Bert,
            name: "clean".into(),
            epochs: 3,
            lr: None,
            batch_size: 32,
            max_len: 64,
            warmup: 0.06,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            dropout: None,
            seed: 42,
            out,
            overwrite: false,
            save_every: 200,
            max_steps: None,
            freelb_steps: 0,
            freelb_eps: 1.0,
            freelb_alpha: None,
            device: Device::Cpu,
            precision: None,
        }
    }

    /// The adapter placement after defaults.
    pub fn placement(&self) -> Placement {
        self.adapter.unwrap_or(if self.full { Placement::None } else { Placement::SeqBn })
    }
}

/// Training and dev examples with label names.
fn train_examples(a: &TrainJob) -> Result<(Vec<Example>, Option<Vec<Example>>, Vec<String>)> {
    match &a.data {
        TrainSource::Files { train: path, dev } => {
            let raw = labeled::read(path)?;
            let source = path.display().to_string();
            let labels = LabelSet::from_examples(&raw, &source)?;
            let train = labels.encode(raw, &source)?;
            let dev = match dev {
                Some(d) => Some(labels.encode(labeled::read(d)?, &d.display().to_string())?),
                None => None,
            };
            Ok((train, dev, labels.names))
        }
        TrainSource::Mr => {
            let s = mr::load(&assets::mr_path())?;
            Ok((s.train, Some(s.dev), mr::LABELS.iter().map(|s| s.to_string()).collect()))
        }
    }
}

/// Trains an adapter + head (or the full model) as `a` says, resuming a run in `a.out` made with
/// the same settings; writes best/, last/, metrics.jsonl and train.json (the job) into `a.out`.
pub fn run(a: &TrainJob) -> Result<Summary> {
    // the device first: a missing GPU should not cost a data load
    let backend = a.device.open(a.precision)?;
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
    let placement = a.placement();
    let kind = match placement {
        Placement::SeqBn => Some(AdapterKind::SeqBn),
        Placement::DoubleSeqBn => Some(AdapterKind::DoubleSeqBn),
        Placement::None => None,
    };
    let lr = a.lr.unwrap_or(if full { 3e-5 } else { 1e-3 });
    let model_dir = a.model.clone().unwrap_or_else(assets::default_model_dir);
    let model = ModelDir::open(&model_dir, a.max_len as usize)?;
    let cfg_m = &model.config;
    let (train_ex, dev_ex, labels) = train_examples(&a)?;
    let data = TrainData {
        train: batches::encode_split(&model, &train_ex, "training")?,
        dev: dev_ex.as_deref().map(|d| batches::encode_split(&model, d, "dev")).transpose()?,
        labels: labels.clone(),
        pad_id: model.tokenizer.pad_id(),
    };
    let activation = match (a.adapter_act, kind) {
        (Some(act), _) => act,
        (None, Some(AdapterKind::DoubleSeqBn)) => Activation::Silu,
        (None, _) => Activation::Relu,
    };
    let init_kind = a.init;
    let meta = Meta {
        base_model: model_dir.clone(),
        family: cfg_m.family(),
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
        max_steps: a.max_steps,
        freelb: (a.freelb_steps > 0).then(|| crate::attack::embedding::Pgd {
            norm: crate::backend::Norm::L2,
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
    let mut fp = super::trainer::fingerprint(&tc, &data, full);
    fp["adapter"] = serde_json::json!(placement.name());
    fp["reduction"] = serde_json::json!(a.reduction);
    fp["init"] = serde_json::json!(a.init.name());
    fp["max_len"] = serde_json::json!(a.max_len);
    fp["model"] = serde_json::json!(model_dir);
    let resume = super::trainer::can_resume(&a.out, &fp)?;
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
    let summary = crate::with_backend!(backend, be => train_on(be, bert_host, adapter, head, full, &run)?);
    write_run_info(&a.out.join("best"), a, &model_dir)?;
    crate::io::write_atomic(&a.out.join("train.json"), serde_json::to_string_pretty(a)?.as_bytes())?;
    match summary.best_dev_accuracy {
        Some(acc) => eprintln!(
            "best dev accuracy {:.2}% (epoch {}); checkpoint in {}",
            100.0 * acc,
            summary.best_epoch,
            a.out.join("best").display()
        ),
        None => eprintln!("checkpoint in {}", a.out.join("best").display()),
    }
    Ok(summary)
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
    bert: crate::model::bert::Bert<Tensor>,
    adapter: Option<crate::adapter::Adapter<Tensor>>,
    head: ClassificationHead<Tensor>,
    full: bool,
    r: &Run,
) -> Result<super::trainer::Summary> {
    let mut m = Model::new(
        &be,
        bert.to_backend(&be)?,
        adapter.map(|x| x.to_backend(&be)).transpose()?,
        head.to_backend(&be)?,
        full,
    )?;
    super::trainer::train(&be, &mut m, r.data, r.tc, r.meta, r.out, r.resume, r.fp)
}

/// `admix.json` beside the checkpoint: what eval needs to reproduce the training setup.
fn write_run_info(dir: &Path, a: &TrainJob, model_dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let info = serde_json::json!({
        "base_model": model_dir,
        "max_len": a.max_len,
        "data": match &a.data {
            TrainSource::Mr => "mr".to_string(),
            TrainSource::Files { train, .. } => train.display().to_string(),
        },
    });
    crate::io::write_atomic(&dir.join("admix.json"), serde_json::to_string_pretty(&info)?.as_bytes())
}
