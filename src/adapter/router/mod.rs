//! The learned router (`BetaRule::Router`; admix's own addition, not the AdpMixup paper's): a
//! small MLP from what the members' passes already computed for an input ([`features`]) to β over
//! the members, `β = softmax(router(x))`. Trained ([`crate::train::router`]) to send clean inputs
//! to the clean adapter and each known attack's adversarial examples to that attack's adapter.
//!
//! On disk, beside the mixture, in AdapterHub's style: `router_config.json` (what it routes, its
//! shape, how it was trained) and `router.safetensors` (`router.{i}.weight`, `router.{i}.bias`
//! per linear layer, and the feature standardisation `router.feature_mean`, `router.feature_std`).

pub mod features;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use self::features::{MemberPasses, PieceTable};
use crate::adapter::Dense;
use crate::backend::{Activation, Backend, TokenBatch};
use crate::io;
use crate::weights::{Tensor, WeightFile};

pub const CONFIG: &str = "router_config.json";
pub const WEIGHTS: &str = "router.safetensors";

/// What a router routes and how it is shaped (`router_config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterConfig {
    /// `admix_router`
    pub kind: String,
    /// the members in the mixture's order (the clean adapter first), by name
    pub members: Vec<String>,
    pub num_labels: usize,
    /// the encoder's width (the pooled states' size)
    pub hidden_size: usize,
    /// the MLP's hidden width per layer (none: logistic regression)
    pub layers: Vec<usize>,
    /// between the MLP's layers
    pub activation: Activation,
    /// the feature vector's width ([`features::width`])
    pub features: usize,
    /// how it was trained (free-form: data sizes, epochs, dev routing accuracy)
    #[serde(default)]
    pub trained: serde_json::Value,
}

/// `router_config.json`'s `kind`.
pub const KIND: &str = "admix_router";

impl RouterConfig {
    /// A router over the members of a mixture (`members` by name, clean first) on a
    /// `hidden`-wide encoder over `num_labels` classes: its features are [`features::width`]'s;
    /// logistic regression until [`crate::train::router::fit`] (or the caller) sets `layers`.
    pub fn for_mixture(members: Vec<String>, num_labels: usize, hidden_size: usize) -> Self {
        let features = features::width(members.len(), num_labels, hidden_size);
        RouterConfig {
            kind: KIND.into(),
            members,
            num_labels,
            hidden_size,
            layers: vec![],
            activation: Activation::Relu,
            features,
            trained: serde_json::Value::Null,
        }
    }
}

/// A router's weights (`W`: host tensors or a backend's).
pub struct Router<W> {
    pub config: RouterConfig,
    /// hidden layers (each followed by the activation), then the output layer (→ m logits)
    pub layers: Vec<Dense<W>>,
    /// per-feature standardisation `(x − mean) / std`, applied on the host
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// What a training step's forward keeps for the backward.
pub struct Saved<A> {
    inputs: Vec<A>,
    pre: Vec<A>,
}

impl<W> Router<W> {
    pub fn m(&self) -> usize {
        self.config.members.len()
    }

    /// The same router with every weight mapped by `f`.
    pub fn map<V>(&self, mut f: impl FnMut(&W) -> Result<V>) -> Result<Router<V>> {
        let layers =
            self.layers.iter().map(|d| Ok(Dense { w: f(&d.w)?, b: f(&d.b)? })).collect::<Result<_>>()?;
        Ok(Router { config: self.config.clone(), layers, mean: self.mean.clone(), std: self.std.clone() })
    }

    /// Every weight with its name, mutable, in layer order.
    pub fn named_mut(&mut self) -> Vec<(String, &mut W)> {
        let mut out = vec![];
        for (i, d) in self.layers.iter_mut().enumerate() {
            out.push((format!("router.{i}.weight"), &mut d.w));
            out.push((format!("router.{i}.bias"), &mut d.b));
        }
        out
    }

    /// Standardised feature rows `[n, features]`.
    pub fn standardise(&self, x: &[f32]) -> Result<Vec<f32>> {
        let f = self.config.features;
        ensure!(f > 0 && x.len() % f == 0, "{} feature values do not split into rows of {f}", x.len());
        Ok(x.chunks(f)
            .flat_map(|r| r.iter().zip(&self.mean).zip(&self.std).map(|((v, m), s)| (v - m) / s))
            .collect())
    }

    /// The logits `[n, m]` of standardised rows already on the backend.
    pub fn logits<B: Backend<Weight = W>>(&self, be: &B, x: &B::Act) -> Result<B::Act> {
        let (last, hidden) = self.layers.split_last().context("a router without layers")?;
        let mut h = None;
        for d in hidden {
            h = Some(be.linear(h.as_ref().unwrap_or(x), &d.w, &d.b, self.config.activation, None)?);
        }
        be.linear(h.as_ref().unwrap_or(x), &last.w, &last.b, Activation::Identity, None)
    }

    /// β `[n][m]` of raw feature rows.
    pub fn beta_of<B: Backend<Weight = W>>(&self, be: &B, x: &[f32]) -> Result<Vec<Vec<f32>>> {
        let _range = crate::profile::range("mix: router");
        let rows = x.len() / self.config.features.max(1);
        let z = be.upload(rows, self.config.features, &self.standardise(x)?)?;
        let (_, m, logits) = be.download(&self.logits(be, &z)?)?;
        if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
            bail!("the router produced a non-finite logit ({v})");
        }
        Ok(logits.chunks(m).map(crate::adapter::mix::softmax).collect())
    }

    /// β of each sample of a batch from the members' passes over it.
    pub fn beta<B: Backend<Weight = W>>(
        &self,
        be: &B,
        passes: &MemberPasses,
        batch: &TokenBatch,
        table: &PieceTable,
    ) -> Result<Vec<Vec<f32>>> {
        ensure!(
            passes.members() == self.m(),
            "a router over {} members for a mixture of {}",
            self.m(),
            passes.members()
        );
        self.beta_of(be, &features::rows(passes, batch, table)?)
    }

    /// A training step's forward from standardised rows: the logits and what the backward needs.
    pub fn forward_train<B: Backend<Weight = W>>(
        &self,
        be: &B,
        x: B::Act,
    ) -> Result<(B::Act, Saved<B::Act>)> {
        let (last, hidden) = self.layers.split_last().context("a router without layers")?;
        let (mut inputs, mut pre) = (vec![], vec![]);
        let mut x = x;
        for d in hidden {
            let p = be.linear(&x, &d.w, &d.b, Activation::Identity, None)?;
            inputs.push(x);
            x = be.activation(&p, self.config.activation)?;
            pre.push(p);
        }
        let logits = be.linear(&x, &last.w, &last.b, Activation::Identity, None)?;
        inputs.push(x);
        Ok((logits, Saved { inputs, pre }))
    }

    /// Backward from the logits' gradient: accumulates into `grads` (the router's shape) and
    /// returns the gradient of the standardised input.
    pub fn backward<B: Backend<Weight = W>>(
        &self,
        be: &B,
        s: &Saved<B::Act>,
        dlogits: &B::Act,
        grads: &mut Router<B::Act>,
    ) -> Result<B::Act> {
        let n = self.layers.len() - 1;
        let mut dx = dlogits.clone();
        for i in (0..=n).rev() {
            if i < n {
                dx = be.activation_backward(dx, &s.pre[i], self.config.activation)?;
            }
            let g = &mut grads.layers[i];
            dx = be
                .linear_backward(&dx, &s.inputs[i], &self.layers[i].w, Some((&mut g.w, &mut g.b)), true)?
                .context("router dx")?;
        }
        Ok(dx)
    }
}

impl Router<Tensor> {
    /// A router of the given shape with seeded random weights (PyTorch's `nn.Linear` init:
    /// uniform in ±1/√fan_in) and the given standardisation.
    pub fn init(config: RouterConfig, mean: Vec<f32>, std: Vec<f32>, seed: u64) -> Result<Self> {
        ensure!(config.members.len() >= 2, "a router routes between two or more members");
        ensure!(
            mean.len() == config.features && std.len() == config.features,
            "standardisation of the wrong width"
        );
        let mut rng = crate::rng::Rng::new(seed);
        let mut dims = vec![config.features];
        dims.extend(&config.layers);
        dims.push(config.members.len());
        let layers = dims
            .windows(2)
            .map(|w| {
                let bound = 1.0 / (w[0] as f64).sqrt();
                let mut u = |n: usize| -> Vec<f32> {
                    (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect()
                };
                let wt = u(w[1] * w[0]);
                let b = u(w[1]);
                Dense { w: Tensor::from_vec(vec![w[1], w[0]], wt), b: Tensor::from_vec(vec![w[1]], b) }
            })
            .collect();
        Ok(Router { config, layers, mean, std })
    }

    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<Router<B::Weight>> {
        self.map(|t| be.weight(t))
    }

    /// Writes `router_config.json` and `router.safetensors` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![];
        for (i, d) in self.layers.iter().enumerate() {
            tensors.push((format!("router.{i}.weight"), d.w.shape().to_vec(), d.w.data().to_vec()));
            tensors.push((format!("router.{i}.bias"), d.b.shape().to_vec(), d.b.data().to_vec()));
        }
        let f = self.config.features;
        tensors.push(("router.feature_mean".into(), vec![f], self.mean.clone()));
        tensors.push(("router.feature_std".into(), vec![f], self.std.clone()));
        io::write_safetensors(&dir.join(WEIGHTS), &tensors)?;
        io::write_atomic(&dir.join(CONFIG), serde_json::to_string_pretty(&self.config)?.as_bytes())
    }

    /// Reads a router written by [`Router::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: not a router directory (cannot read {})", dir.display(), path.display())
        })?;
        let config: RouterConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a router config", path.display()))?;
        if config.kind != KIND {
            bail!("{}: kind `{}` is not an admix router", path.display(), config.kind);
        }
        let file = WeightFile::open(&dir.join(WEIGHTS))?;
        let mut dims = vec![config.features];
        dims.extend(&config.layers);
        dims.push(config.members.len());
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                Ok(Dense {
                    w: file.tensor(&format!("router.{i}.weight"), &[w[1], w[0]])?,
                    b: file.tensor(&format!("router.{i}.bias"), &[w[1]])?,
                })
            })
            .collect::<Result<_>>()?;
        let f = config.features;
        let mean = file.tensor("router.feature_mean", &[f])?.data().to_vec();
        let std = file.tensor("router.feature_std", &[f])?.data().to_vec();
        if let Some(s) = std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            bail!("{}: a feature's standard deviation is {s}", dir.join(WEIGHTS).display());
        }
        Ok(Router { config, layers, mean, std })
    }

    /// Whether this router fits a mixture of `m` members over `labels` classes on a `hidden`-wide
    /// encoder.
    pub fn check_fits(&self, m: usize, labels: usize, hidden: usize) -> Result<()> {
        let c = &self.config;
        ensure!(
            c.members.len() == m && c.num_labels == labels && c.hidden_size == hidden,
            "the router routes {} members over {} labels on a {}-wide encoder; this mixture has {m} over {labels} on {hidden}",
            c.members.len(),
            c.num_labels,
            c.hidden_size
        );
        ensure!(
            c.features == features::width(m, labels, hidden),
            "the router reads {} features, a mixture of {m} members gives {}",
            c.features,
            features::width(m, labels, hidden)
        );
        Ok(())
    }
}
