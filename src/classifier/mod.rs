//! A classifier as the commands name it, load it and judge it.
//!
//! Every command that runs a classifier (`score`, `eval`, `attack`, `serve`, and the AdpMixup
//! pipeline's stages) names it the same way: one or more [`Source`]s (`DIR`, `FILE` or
//! `FILE#NAME`) and, for two or more, how their weights are mixed ([`BetaRule`]: entropy β per
//! input, or a static β). [`load`] reads them onto the host ([`Loaded`]); [`Loaded::build`] puts
//! them on a backend ([`Built`]): a single [`Model`] (one source, or a static mix materialised as
//! θ = Σ βᵢ θᵢ) or an AdpMixup [`Mixture`] (per-input β). Checkpoints are [`checkpoint`]'s,
//! metrics [`metrics`]'.

pub mod checkpoint;
pub mod eval;
pub mod metrics;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::adapter::mix::{mix_adapters, mix_heads, BetaRule};
use crate::adapter::{self, Adapter, ClassificationHead};
use crate::backend::{Activation, Backend, TokenBatch};
use crate::model::bert::Bert;
use crate::model::classify::{prediction, Classify, Model};
use crate::model::mixture::Mixture;
use crate::model::ModelDir;
use crate::weights::{Tensor, WeightFile};

/// The token limit when neither the command nor the checkpoint (`admix.json`) gives one (or the
/// model's positions, if fewer).
pub const DEFAULT_MAX_LEN: usize = 128;

/// Where one classifier (an adapter with its head, or a whole fine-tuned model) comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// a checkpoint directory (`admix train`'s run or its `best/`, or AdapterHub's
    /// `save_adapter(..., with_head=True)`), or a safetensors file in AdapterHub naming
    pub path: PathBuf,
    /// the adapter in a safetensors file (default: the only one)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// the head in a safetensors file (default: the adapter's name, else the only one)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

impl Source {
    /// `DIR`, `FILE` or `FILE#NAME` (`NAME` picks the adapter, and its head, in the file). A path
    /// that exists as written is taken whole, `#` and all.
    pub fn parse(s: &str) -> Source {
        match s.rsplit_once('#') {
            Some((p, n)) if !Path::new(s).exists() && !n.is_empty() => {
                Source { path: PathBuf::from(p), adapter: Some(n.to_string()), head: None }
            }
            _ => Source { path: PathBuf::from(s), adapter: None, head: None },
        }
    }

    /// A checkpoint directory.
    pub fn dir(path: &Path) -> Source {
        Source { path: path.to_path_buf(), adapter: None, head: None }
    }

    /// The checkpoint directory itself: a run directory (`admix train --out`) means its `best/`.
    fn checkpoint_dir(&self) -> PathBuf {
        let best = self.path.join("best");
        if best.is_dir() && !self.path.join(checkpoint::HEAD_CONFIG).exists() {
            best
        } else {
            self.path.clone()
        }
    }

    fn label(&self) -> String {
        match &self.adapter {
            Some(n) => format!("{}#{n}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// What to run: the sources and, for two or more, how their weights are mixed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    pub sources: Vec<Source>,
    /// the mixing rule for two or more sources (ignored for one)
    pub mixing: BetaRule,
    /// the adapter non-linearity of safetensors files (default: the file's config, else relu)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_act: Option<Activation>,
}

impl ClassifierSpec {
    /// One checkpoint directory.
    pub fn checkpoint(dir: &Path) -> ClassifierSpec {
        ClassifierSpec {
            sources: vec![Source::dir(dir)],
            mixing: BetaRule::Fixed(vec![1.0]),
            adapter_act: None,
        }
    }

    /// Refuses a rule that does not fit the sources: a static β needs one weight per source, each
    /// in [0, 1], summing to 1; τ must be positive.
    pub fn check(&self) -> Result<()> {
        let m = self.sources.len();
        ensure!(m > 0, "no classifier given (--adapter DIR|FILE[#NAME])");
        match &self.mixing {
            BetaRule::Fixed(beta) if m > 1 => {
                ensure!(
                    beta.len() == m,
                    "--beta gives {} weight(s) for {m} adapters: give one per --adapter, in order",
                    beta.len()
                );
                if let Some(b) = beta.iter().find(|b| !(0.0..=1.0).contains(*b)) {
                    bail!("--beta weights must be in [0, 1] (got {b})");
                }
                let sum: f32 = beta.iter().sum();
                ensure!((sum - 1.0).abs() <= 1e-4, "--beta weights must sum to 1 (they sum to {sum})");
            }
            BetaRule::Entropy { tau } | BetaRule::Calibrated { tau, .. } => {
                ensure!(tau.is_finite() && *tau > 0.0, "--tau must be positive (got {tau})");
            }
            _ => {}
        }
        if let BetaRule::Calibrated { temperatures, .. } = &self.mixing {
            ensure!(
                temperatures.len() == m,
                "--temperatures gives {} temperature(s) for {m} adapters: give one per --adapter, in order",
                temperatures.len()
            );
            if let Some(t) = temperatures.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
                bail!("--temperatures must be positive (got {t})");
            }
        }
        if let BetaRule::Router { dir } = &self.mixing {
            ensure!(m > 1, "--router routes between two or more --adapter (got one)");
            ensure!(dir.is_dir(), "--router {}: no such directory", dir.display());
        }
        Ok(())
    }
}

/// One source on the host: an adapter (none for a full or head-only checkpoint) and its head.
pub struct Member {
    pub adapter: Option<Adapter<Tensor>>,
    pub head: ClassificationHead<Tensor>,
}

/// The sources of a [`ClassifierSpec`] on the host, ready to put on a backend.
pub struct Loaded {
    /// the tokenizer and the encoder: the base model, or a full checkpoint's fine-tuned one
    pub model: ModelDir,
    pub members: Vec<Member>,
    /// label names in id order: a checkpoint directory's, or the ids for a safetensors file
    pub labels: Vec<String>,
    pub mixing: BetaRule,
    /// the sources as given, for messages and records
    pub names: Vec<String>,
    /// the encoder is a full checkpoint's fine-tuned one (not the base model)
    pub fine_tuned: bool,
    /// the learned router ([`BetaRule::Router`])
    pub router: Option<crate::adapter::router::Router<Tensor>>,
}

/// The max length a checkpoint was trained with (`admix.json` beside it), if it says.
pub fn trained_max_len(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("admix.json")).ok()?;
    let info: serde_json::Value = serde_json::from_str(&text).ok()?;
    info["max_len"].as_u64().map(|n| n as usize)
}

/// Reads the sources of `spec` onto the host. `model` is the base model directory (default: the
/// fetched MiniLM); `max_len` the token limit (default: the first checkpoint's trained length, else
/// [`DEFAULT_MAX_LEN`] capped at the model's positions).
pub fn load(spec: &ClassifierSpec, model: Option<&Path>, max_len: Option<usize>) -> Result<Loaded> {
    spec.check()?;
    let dirs: Vec<Option<PathBuf>> =
        spec.sources.iter().map(|s| s.path.is_dir().then(|| s.checkpoint_dir())).collect();
    let max_len = max_len.or_else(|| dirs.iter().flatten().find_map(|d| trained_max_len(d)));
    let base = model.map(Path::to_path_buf).unwrap_or_else(crate::assets::default_model_dir);
    let mut model = ModelDir::open_or_default(&base, max_len, DEFAULT_MAX_LEN)?;
    let max_len = model.tokenizer.max_len();
    let (layers, hidden) = (model.config.num_hidden_layers, model.config.hidden_size);
    let mixed = spec.sources.len() > 1;
    let mut members = Vec::new();
    let mut labels: Option<Vec<String>> = None;
    let mut fine_tuned = false;
    for (source, dir) in spec.sources.iter().zip(&dirs) {
        ensure!(
            source.path.exists(),
            "cannot open {}: it does not exist (give a checkpoint directory or a safetensors file)",
            source.path.display()
        );
        let (member, these) = match dir {
            Some(dir) => {
                ensure!(
                    source.adapter.is_none() && source.head.is_none(),
                    "{}: `#NAME` picks an adapter in a safetensors file, not in a checkpoint directory",
                    source.label()
                );
                let ck = checkpoint::load(dir, layers, hidden)?;
                if let Some(t) = ck.model_type.as_deref().filter(|&t| t != model.config.model_type) {
                    bail!(
                        "{}: the checkpoint was saved for a `{t}` model, but {} is a `{}` model",
                        dir.display(),
                        model.dir.display(),
                        model.config.model_type
                    );
                }
                if let Some(d) = &ck.model_dir {
                    ensure!(!mixed, "{} holds a full model: only adapters can be mixed", dir.display());
                    model = ModelDir::open(d, max_len)?;
                    fine_tuned = true;
                }
                (Member { adapter: ck.adapter, head: ck.head }, ck.labels)
            }
            None => {
                let file = WeightFile::open(&source.path)?;
                let (a, h) = adapter::load_with_head(
                    &file,
                    source.adapter.as_deref(),
                    source.head.as_deref(),
                    spec.adapter_act,
                    layers,
                    hidden,
                )?;
                let ids = (0..h.num_labels).map(|i| i.to_string()).collect();
                (Member { adapter: Some(a), head: h }, ids)
            }
        };
        if mixed && member.adapter.is_none() {
            bail!("{} holds no adapter (a head-only model cannot be mixed)", source.label());
        }
        match &labels {
            None => labels = Some(these),
            Some(l) if *l != these => bail!(
                "{} has labels {these:?}, {} has {l:?}: only classifiers of the same labels can be mixed",
                source.label(),
                spec.sources[0].label()
            ),
            Some(_) => {}
        }
        members.push(member);
    }
    let labels = labels.context("no classifier given")?;
    // (whether it fits the adapters is checked where it joins them, `Mixture::routed`)
    let router = match &spec.mixing {
        BetaRule::Router { dir } => Some(crate::adapter::router::Router::load(dir)?),
        _ => None,
    };
    Ok(Loaded {
        router,
        model,
        members,
        labels,
        mixing: spec.mixing.clone(),
        names: spec.sources.iter().map(Source::label).collect(),
        fine_tuned,
    })
}

/// A classifier on a backend.
pub enum Built<B: Backend> {
    /// one model: a single source, or a static mix materialised in weight space
    Model(Model<B>),
    /// the AdpMixup mixture with per-input β
    Mixture(Mixture<B>),
}

/// One input's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub label: usize,
    pub probs: Vec<f32>,
    /// the logits of a single model (a mixture with per-input β has no single logit vector)
    pub logits: Option<Vec<f32>>,
    /// each source's weight in this input's mix (mixtures with per-input β)
    pub beta: Option<Vec<f32>>,
}

impl Loaded {
    /// The encoder, adapter(s) and head(s) on `be`.
    pub fn build<B: Backend>(&self, be: &B) -> Result<Built<B>> {
        self.build_on(be, &self.model.bert()?)
    }

    /// [`Loaded::build`] over an encoder already on the host (callers that build several
    /// classifiers over one encoder load it once).
    pub fn build_on<B: Backend>(&self, be: &B, bert: &Bert<Tensor>) -> Result<Built<B>> {
        let single =
            |adapter: Option<&Adapter<Tensor>>, head: &ClassificationHead<Tensor>| -> Result<Built<B>> {
                let adapter = adapter.map(|a| a.to_backend(be)).transpose()?;
                Ok(Built::Model(Model::new(be, bert.to_backend(be)?, adapter, head.to_backend(be)?, false)?))
            };
        if let [m] = self.members.as_slice() {
            return single(m.adapter.as_ref(), &m.head);
        }
        let adapters: Vec<&Adapter<Tensor>> =
            self.members.iter().map(|m| m.adapter.as_ref().expect("mixed members have adapters")).collect();
        let heads: Vec<&ClassificationHead<Tensor>> = self.members.iter().map(|m| &m.head).collect();
        match &self.mixing {
            BetaRule::Fixed(beta) => single(Some(&mix_adapters(&adapters, beta)?), &mix_heads(&heads, beta)?),
            _ => Ok(Built::Mixture(self.mixture_on(be, bert)?)),
        }
    }

    /// The sources as one [`Mixture`] with their rule (one source: β = 1), the learned router
    /// attached when the rule is the router's.
    pub fn mixture_on<B: Backend>(&self, be: &B, bert: &Bert<Tensor>) -> Result<Mixture<B>> {
        let rule = if self.members.len() == 1 { BetaRule::Fixed(vec![1.0]) } else { self.mixing.clone() };
        let mut refs = Vec::new();
        for (m, name) in self.members.iter().zip(&self.names) {
            let Some(adapter) = &m.adapter else {
                bail!("{name} holds a full or head-only model: only adapters are mixed or served");
            };
            refs.push((adapter, &m.head));
        }
        let mixture = Mixture::new(be, bert, &refs, rule)?;
        match (&self.router, &self.mixing) {
            (Some(r), BetaRule::Router { dir }) => mixture
                .routed(be, r, self.model.tokenizer.piece_table())
                .with_context(|| format!("--router {}", dir.display())),
            _ => Ok(mixture),
        }
    }
}

impl<B: Backend> Built<B> {
    /// The classifier as attacks and evaluation query it.
    pub fn classify(&self) -> &dyn Classify<B> {
        match self {
            Built::Model(m) => m,
            Built::Mixture(m) => m,
        }
    }

    /// The single model, for what needs its gradients (PGD, FGSM, HotFlip).
    pub fn model(&self) -> Option<&Model<B>> {
        match self {
            Built::Model(m) => Some(m),
            Built::Mixture(_) => None,
        }
    }

    /// Labels, probabilities and (single model) logits or (mixture) β of a batch.
    pub fn score(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Scored>> {
        match self {
            Built::Model(m) => {
                let (_, cols, logits) = be.download(&m.logits(be, batch)?)?;
                crate::model::classify::ensure_finite(&logits, "logit")?;
                Ok(logits
                    .chunks(cols)
                    .map(|l| {
                        let p = prediction(l.to_vec());
                        Scored { label: p.label, probs: p.probs, logits: Some(p.logits), beta: None }
                    })
                    .collect())
            }
            Built::Mixture(m) => {
                let out = m.run(be, batch)?;
                Ok(out
                    .probs
                    .into_iter()
                    .zip(out.beta)
                    .map(|(probs, beta)| Scored {
                        label: crate::model::classify::argmax(&probs),
                        probs,
                        logits: None,
                        beta: Some(beta),
                    })
                    .collect())
            }
        }
    }
}
