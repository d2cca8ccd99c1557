//! Weight-space mixing of adapters and heads (AdpMixup, docs/mixup.md).
//!
//! Three ways to use a mix θ(β) = Σᵢ βᵢ θᵢ over every adapter and head tensor:
//! - [`mix`]: materialise the mixed tensors once (a static β, Adapter Soup's uniform β, Model
//!   Soup over whole encoders, [`crate::model::bert::mix_encoders`]) and run the result as an ordinary model;
//! - [`stack`]: concatenate the tensors of `m` adapters (or heads) along their output dimension,
//!   so that one GEMM computes all `m` projections; [`RowMix`] then blends them per row with each
//!   sample's own β ([`crate::backend::Backend::mix_rows`]), which is the exact weight-space mix
//!   for every sample of a batch without a per-sample weight copy;
//! - [`BetaRule`]: how a sample's β is chosen (fixed, or from the prediction entropies of the
//!   individual adapters).

use anyhow::{bail, ensure, Result};

use super::{Adapter, ClassificationHead};
use crate::weights::Tensor;

/// Structures that name their tensors in a fixed order (adapters, heads, encoders).
pub type Named<T> = fn(&mut T) -> Vec<(String, &mut Tensor)>;

/// A copy of `parts[0]` whose every tensor is `f` of the corresponding tensors of all parts,
/// which must have the same tensors with the same shapes.
fn combine<T>(
    parts: &[&T],
    dup: impl Fn(&T) -> Result<T>,
    named: Named<T>,
    f: impl Fn(&[&Tensor]) -> Tensor,
) -> Result<T> {
    ensure!(!parts.is_empty(), "nothing to mix");
    let mut copies: Vec<T> = parts.iter().map(|p| dup(p)).collect::<Result<_>>()?;
    let mut out = dup(parts[0])?;
    let lists: Vec<Vec<(String, &mut Tensor)>> = copies.iter_mut().map(named).collect();
    let mine = named(&mut out);
    for (i, l) in lists.iter().enumerate() {
        if l.len() != mine.len() {
            bail!("cannot mix: part {i} has {} tensors, part 0 has {}", l.len(), mine.len());
        }
    }
    for (k, (name, t)) in mine.into_iter().enumerate() {
        let ins: Vec<&Tensor> = lists.iter().map(|l| &*l[k].1).collect();
        if let Some((i, other)) = ins.iter().enumerate().find(|(_, o)| o.shape() != ins[0].shape()) {
            bail!(
                "cannot mix `{name}`: shape {:?} in part 0, {:?} in part {i} (mixed models need the same shapes)",
                ins[0].shape(),
                other.shape()
            );
        }
        *t = f(&ins);
    }
    Ok(out)
}

/// `Σᵢ beta[i]·parts[i]`, tensor by tensor.
pub fn mix<T>(parts: &[&T], beta: &[f32], dup: impl Fn(&T) -> Result<T>, named: Named<T>) -> Result<T> {
    ensure!(beta.len() == parts.len(), "{} mixing weights for {} parts", beta.len(), parts.len());
    combine(parts, dup, named, |ts| {
        let mut out = vec![0f32; ts[0].data().len()];
        for (t, &b) in ts.iter().zip(beta) {
            for (o, v) in out.iter_mut().zip(t.data()) {
                *o += b * v;
            }
        }
        Tensor::from_vec(ts[0].shape().to_vec(), out)
    })
}

/// The parts' tensors concatenated along their first (output) dimension: `[m·out, …]`.
pub fn stack<T>(parts: &[&T], dup: impl Fn(&T) -> Result<T>, named: Named<T>) -> Result<T> {
    combine(parts, dup, named, |ts| {
        let mut shape = ts[0].shape().to_vec();
        shape[0] *= ts.len();
        Tensor::from_vec(shape, ts.iter().flat_map(|t| t.data().iter().copied()).collect())
    })
}

fn dup_adapter(a: &Adapter<Tensor>) -> Result<Adapter<Tensor>> {
    a.map(|t| Ok(t.clone()))
}

fn dup_head(h: &ClassificationHead<Tensor>) -> Result<ClassificationHead<Tensor>> {
    h.map(|t| Ok(t.clone()))
}

/// `Σᵢ βᵢ·adapterᵢ` (same kind, activation and shapes).
pub fn mix_adapters(parts: &[&Adapter<Tensor>], beta: &[f32]) -> Result<Adapter<Tensor>> {
    same_adapter_kind(parts)?;
    mix(parts, beta, dup_adapter, Adapter::named_mut)
}

/// `Σᵢ βᵢ·headᵢ`.
pub fn mix_heads(parts: &[&ClassificationHead<Tensor>], beta: &[f32]) -> Result<ClassificationHead<Tensor>> {
    same_head_kind(parts)?;
    mix(parts, beta, dup_head, ClassificationHead::named_mut)
}

/// The adapters stacked for per-sample mixing: every bottleneck's down projection `[m·r, H]`,
/// up projection `[m·H, r]` and their biases, adapter `i` in block `i`.
pub fn stack_adapters(parts: &[&Adapter<Tensor>]) -> Result<Adapter<Tensor>> {
    same_adapter_kind(parts)?;
    stack(parts, dup_adapter, Adapter::named_mut)
}

/// The heads stacked for per-sample mixing: dense `[m·H, H]`, output `[m·labels, H]`.
pub fn stack_heads(parts: &[&ClassificationHead<Tensor>]) -> Result<ClassificationHead<Tensor>> {
    same_head_kind(parts)?;
    stack(parts, dup_head, ClassificationHead::named_mut)
}

fn same_head_kind(parts: &[&ClassificationHead<Tensor>]) -> Result<()> {
    for p in parts {
        if p.layers() != parts[0].layers() || p.activation != parts[0].activation {
            bail!(
                "cannot mix head `{}` ({} layers, {:?}) with `{}` ({} layers, {:?})",
                parts[0].name,
                parts[0].layers(),
                parts[0].activation,
                p.name,
                p.layers(),
                p.activation
            );
        }
    }
    Ok(())
}

fn same_adapter_kind(parts: &[&Adapter<Tensor>]) -> Result<()> {
    for p in parts {
        if p.kind != parts[0].kind || p.activation != parts[0].activation {
            bail!(
                "cannot mix adapter `{}` ({:?}, {:?}) with `{}` ({:?}, {:?})",
                parts[0].name,
                parts[0].kind,
                parts[0].activation,
                p.name,
                p.kind,
                p.activation
            );
        }
    }
    Ok(())
}

/// Per-sample mixing weights of one batch: `beta[b·m + i]` is sequence `b`'s weight on adapter
/// `i` of a stacked adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct RowMix {
    pub m: usize,
    pub beta: Vec<f32>,
}

impl RowMix {
    pub fn new(m: usize, beta: Vec<f32>) -> Result<Self> {
        ensure!(m > 0 && beta.len() % m == 0, "{} mixing weights do not split into rows of {m}", beta.len());
        ensure!(beta.iter().all(|b| b.is_finite()), "a mixing weight is not finite");
        Ok(RowMix { m, beta })
    }

    /// The same β for each of `batch` sequences.
    pub fn uniform_rows(beta: &[f32], batch: usize) -> Result<Self> {
        RowMix::new(beta.len(), beta.repeat(batch))
    }

    pub fn batch(&self) -> usize {
        self.beta.len() / self.m
    }

    /// `[rows.len(), m]`: the β of each row, given the sequence each row belongs to.
    pub fn per_row(&self, seqs: impl Iterator<Item = usize>) -> Vec<f32> {
        seqs.flat_map(|s| self.beta[s * self.m..(s + 1) * self.m].iter().copied()).collect()
    }
}

/// How a sample's β over the adapters is chosen.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaRule {
    /// the same β for every sample
    Fixed(Vec<f32>),
    /// `β = softmax(−H/τ)` over the adapters' prediction entropies `Hᵢ`
    Entropy { tau: f32 },
    /// all weight on the adapter with the least entropy (τ → 0)
    MinEntropy,
    /// entropy β over temperature-scaled predictions: member `i`'s probabilities become
    /// `softmax(ln p / Tᵢ)` (`Tᵢ` fitted on dev by NLL, [`fit_temperature`]) before the entropies
    Calibrated { tau: f32, temperatures: Vec<f32> },
    /// the learned router saved in `dir` (admix's own rule, [`crate::adapter::router`]): β from
    /// the members' passes and the input's wordpieces
    Router { dir: std::path::PathBuf },
}

impl std::fmt::Display for BetaRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BetaRule::Fixed(b) => write!(f, "static β = {b:?}"),
            BetaRule::Entropy { tau } => write!(f, "entropy β, τ = {tau}"),
            BetaRule::MinEntropy => write!(f, "min-entropy β"),
            BetaRule::Calibrated { tau, temperatures } => {
                write!(f, "calibrated entropy β, τ = {tau}, temperatures {temperatures:?}")
            }
            BetaRule::Router { dir } => write!(f, "learned router {}", dir.display()),
        }
    }
}

/// Shannon entropy (nats) of a probability vector.
pub fn entropy(p: &[f32]) -> f32 {
    -p.iter().filter(|&&v| v > 0.0).map(|&v| v * v.ln()).sum::<f32>()
}

/// `softmax(z)`, the exponentials summed in f64.
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = z.iter().map(|&v| ((v - top) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// Temperature scaling of a probability vector: `softmax(ln p / t)` (the same as dividing the
/// logits by `t`).
pub fn calibrate(p: &[f32], t: f32) -> Vec<f32> {
    let z: Vec<f64> = p.iter().map(|&v| (v.max(1e-30) as f64).ln() / t as f64).collect();
    let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - top).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// The temperature `t` in [0.05, 20] that minimises the mean negative log-likelihood of
/// `labels` under [`calibrate`]d `probs` (Guo et al.'s temperature scaling; the NLL is convex in
/// `1/t`, searched by golden section).
pub fn fit_temperature(probs: &[Vec<f32>], labels: &[usize]) -> Result<f32> {
    ensure!(
        !probs.is_empty() && probs.len() == labels.len(),
        "temperature scaling needs labelled predictions"
    );
    let logp: Vec<Vec<f64>> =
        probs.iter().map(|p| p.iter().map(|&v| (v.max(1e-30) as f64).ln()).collect()).collect();
    let nll = |inv_t: f64| -> f64 {
        logp.iter()
            .zip(labels)
            .map(|(l, &y)| {
                let top = l.iter().copied().fold(f64::NEG_INFINITY, f64::max) * inv_t;
                let lse = top + l.iter().map(|v| (v * inv_t - top).exp()).sum::<f64>().ln();
                lse - l[y] * inv_t
            })
            .sum::<f64>()
    };
    let (mut a, mut b) = (1.0 / 20.0, 1.0 / 0.05);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..100 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = nll(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = nll(d);
        }
    }
    Ok((2.0 / (a + b)) as f32)
}

/// The member a β puts all its weight on, if it does: then the mix is that member exactly
/// (θ = 1·θᵢ + Σ 0·θⱼ = θᵢ).
pub fn one_member(beta: &[f32]) -> Option<usize> {
    let i = beta.iter().position(|&v| v == 1.0)?;
    beta.iter().enumerate().all(|(j, &v)| j == i || v == 0.0).then_some(i)
}

fn softmax_neg(h: &[f32], tau: f32) -> Vec<f32> {
    let z: Vec<f32> = h.iter().map(|h| -h / tau).collect();
    let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - top).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

impl BetaRule {
    /// Whether β depends on the input (the adapters must be run first).
    pub fn is_adaptive(&self) -> bool {
        !matches!(self, BetaRule::Fixed(_))
    }

    /// One sample's β from each adapter's class probabilities on it (a fixed β as it is; the
    /// router's β needs more than the probabilities: [`crate::adapter::router::Router::beta`]).
    pub fn beta(&self, member_probs: &[&[f32]]) -> Result<Vec<f32>> {
        Ok(match self {
            BetaRule::Fixed(b) => b.clone(),
            BetaRule::Entropy { tau } => {
                softmax_neg(&member_probs.iter().map(|p| entropy(p)).collect::<Vec<_>>(), *tau)
            }
            BetaRule::Calibrated { tau, temperatures } => {
                ensure!(
                    temperatures.len() == member_probs.len(),
                    "{} temperatures for {} adapters",
                    temperatures.len(),
                    member_probs.len()
                );
                let h: Vec<f32> =
                    member_probs.iter().zip(temperatures).map(|(p, &t)| entropy(&calibrate(p, t))).collect();
                softmax_neg(&h, *tau)
            }
            BetaRule::MinEntropy => {
                let h: Vec<f32> = member_probs.iter().map(|p| entropy(p)).collect();
                let best = (0..h.len()).fold(0, |b, i| if h[i] < h[b] { i } else { b });
                (0..h.len()).map(|i| if i == best { 1.0 } else { 0.0 }).collect()
            }
            BetaRule::Router { dir } => {
                bail!("the router in {} gives β from the members' passes", dir.display())
            }
        })
    }
}
