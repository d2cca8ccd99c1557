//! Training a router: seeded, class-balanced (each epoch draws every member's inputs as often as
//! the most frequent member's), cross-entropy against the member each input should go to, admix's
//! AdamW on any backend; the epoch with the best balanced routing accuracy on dev is kept (the
//! lower dev loss breaks ties).

use anyhow::{ensure, Result};
use serde::Serialize;

use crate::adapter::router::{Router, RouterConfig};
use crate::backend::{Activation, Backend};
use crate::model::classify::{argmax, prediction, Param};
use crate::rng::Rng;
use crate::train::optim::{linear_schedule, AdamW, AdamWConfig};
use crate::weights::Tensor;

/// Feature rows and, for each, the member that should take it.
#[derive(Clone, Debug, Default)]
pub struct Routed {
    /// `[n, width]`, row-major
    pub x: Vec<f32>,
    pub member: Vec<usize>,
}

impl Routed {
    pub fn len(&self) -> usize {
        self.member.len()
    }

    pub fn is_empty(&self) -> bool {
        self.member.is_empty()
    }

    /// Appends rows that should all go to `member`.
    pub fn push(&mut self, rows: &[f32], width: usize, member: usize) {
        self.x.extend_from_slice(rows);
        self.member.extend(std::iter::repeat_n(member, rows.len() / width));
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FitConfig {
    /// hidden widths (none: logistic regression)
    pub layers: Vec<usize>,
    pub activation: Activation,
    pub epochs: usize,
    pub lr: f32,
    pub batch_size: usize,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            layers: vec![64],
            activation: Activation::Relu,
            epochs: 20,
            lr: 1e-3,
            batch_size: 64,
            weight_decay: 0.01,
            seed: 42,
        }
    }
}

/// One epoch of a fit.
#[derive(Clone, Debug, Serialize)]
pub struct Epoch {
    pub loss: f32,
    /// the mean over members of the share of each member's dev inputs it routes there
    pub dev_balanced_accuracy: f64,
    /// mean cross-entropy on dev (breaks ties of the accuracy)
    pub dev_loss: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FitReport {
    pub config: FitConfig,
    pub train_examples: Vec<usize>,
    pub dev_examples: Vec<usize>,
    pub epochs: Vec<Epoch>,
    /// 1-based
    pub best_epoch: usize,
}

/// Per member, the share of its inputs whose largest β is its own, and their mean.
pub fn routing_accuracy(beta: &[Vec<f32>], member: &[usize], m: usize) -> (Vec<f64>, f64) {
    let (mut right, mut all) = (vec![0usize; m], vec![0usize; m]);
    for (b, &k) in beta.iter().zip(member) {
        all[k] += 1;
        right[k] += (argmax(b) == k) as usize;
    }
    let per: Vec<f64> =
        right.iter().zip(&all).map(|(&r, &a)| if a == 0 { f64::NAN } else { r as f64 / a as f64 }).collect();
    let seen: Vec<f64> = per.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = seen.iter().sum::<f64>() / seen.len().max(1) as f64;
    (per, mean)
}

/// Trains a router of `shape`'s members and features (its layers and activation are `cfg`'s) on
/// `train`, keeping the epoch with the best dev balanced accuracy.
pub fn fit<B: Backend>(
    be: &B,
    cfg: &FitConfig,
    shape: RouterConfig,
    train: &Routed,
    dev: &Routed,
) -> Result<(Router<Tensor>, FitReport)> {
    let (f, m) = (shape.features, shape.members.len());
    ensure!(
        train.x.len() == train.len() * f && dev.x.len() == dev.len() * f,
        "feature rows of the wrong width"
    );
    let count = |r: &Routed| (0..m).map(|k| r.member.iter().filter(|&&v| v == k).count()).collect::<Vec<_>>();
    let (train_n, dev_n) = (count(train), count(dev));
    if let Some(k) = train_n.iter().position(|&n| n == 0) {
        anyhow::bail!("no training input for the router's member {k} (`{}`)", shape.members[k]);
    }
    ensure!(cfg.batch_size > 0 && cfg.epochs > 0, "the router needs a batch size and epochs");
    // standardisation from the training rows
    let n = train.len();
    let mut mean = vec![0f64; f];
    let mut sq = vec![0f64; f];
    for r in train.x.chunks(f) {
        for (j, &v) in r.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|s| (s / n as f64) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(s, &mu)| {
            let var = (s / n as f64 - (mu as f64).powi(2)).max(0.0);
            if var.sqrt() < 1e-6 {
                1.0
            } else {
                var.sqrt() as f32
            }
        })
        .collect();
    let mut shape = shape;
    shape.layers = cfg.layers.clone();
    shape.activation = cfg.activation;
    let host = Router::init(shape, mean, std, cfg.seed)?;
    let xs = host.standardise(&train.x)?;
    let dev_x = host.standardise(&dev.x)?;
    let mut router = host.to_backend(be)?;
    let mut grads = router.map(|w| be.zeros_like(w))?;
    let mut opt =
        AdamW::new(AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..AdamWConfig::default() });
    let mut rng = Rng::new(cfg.seed ^ 0x5eed);
    let by_member: Vec<Vec<usize>> =
        (0..m).map(|k| (0..n).filter(|&i| train.member[i] == k).collect()).collect();
    let per_epoch = train_n.iter().max().copied().unwrap_or(0) * m;
    let total = (per_epoch.div_ceil(cfg.batch_size) * cfg.epochs) as u64;
    let (mut epochs, mut best): (Vec<Epoch>, Option<(f64, f64, usize, Router<Tensor>)>) = (vec![], None);
    for _ in 0..cfg.epochs {
        // every member drawn as often as the most frequent one: all of its inputs, then a seeded
        // sample of them again
        let mut order = vec![];
        for idx in &by_member {
            let want = per_epoch / m;
            order.extend(idx.iter().cycle().take(want.min(idx.len())));
            order.extend((idx.len()..want).map(|_| idx[(rng.next_u64() % idx.len() as u64) as usize]));
        }
        rng.shuffle(&mut order);
        let mut loss_sum = 0f64;
        for rows in order.chunks(cfg.batch_size) {
            let x: Vec<f32> = rows.iter().flat_map(|&i| xs[i * f..(i + 1) * f].iter().copied()).collect();
            let labels: Vec<u32> = rows.iter().map(|&i| train.member[i] as u32).collect();
            let (logits, saved) = router.forward_train(be, be.upload(rows.len(), f, &x)?)?;
            let (loss, dlogits) = be.cross_entropy(&logits, &labels)?;
            ensure!(loss.is_finite(), "the router's loss is {loss}");
            loss_sum += loss as f64 * rows.len() as f64;
            for (_, g) in grads.named_mut() {
                be.fill_zero(g)?;
            }
            router.backward(be, &saved, &dlogits, &mut grads)?;
            let lr = cfg.lr * linear_schedule(opt.step, 0, total);
            let params = router
                .named_mut()
                .into_iter()
                .zip(grads.named_mut())
                .map(|((name, weight), (_, grad))| Param { name, weight, grad })
                .collect();
            opt.update(be, params, lr)?;
        }
        let (dev_acc, dev_loss) = match dev.is_empty() {
            true => (f64::NAN, f64::NAN),
            false => {
                let z = be.upload(dev.len(), f, &dev_x)?;
                let (_, cols, logits) = be.download(&router.logits(be, &z)?)?;
                let logits: Vec<Vec<f32>> = logits.chunks(cols).map(|l| l.to_vec()).collect();
                let nll: f64 = logits
                    .iter()
                    .zip(&dev.member)
                    .map(|(l, &k)| -(prediction(l.clone()).probs[k].max(1e-30) as f64).ln())
                    .sum();
                (routing_accuracy(&logits, &dev.member, m).1, nll / dev.len() as f64)
            }
        };
        epochs.push(Epoch {
            loss: (loss_sum / order.len() as f64) as f32,
            dev_balanced_accuracy: dev_acc,
            dev_loss,
        });
        // the first epoch, then any that routes dev better, or as well with a lower dev loss
        // (without dev: the last)
        let better = |(acc, loss, _, _): &(f64, f64, usize, Router<Tensor>)| {
            dev.is_empty() || dev_acc > *acc || (dev_acc == *acc && dev_loss < *loss)
        };
        if best.as_ref().is_none_or(better) {
            best = Some((dev_acc, dev_loss, epochs.len(), router.map(|w| be.weight_to_host(w))?));
        }
    }
    let (_, _, best_epoch, mut out) = best.expect("at least one epoch");
    let report =
        FitReport { config: cfg.clone(), train_examples: train_n, dev_examples: dev_n, epochs, best_epoch };
    out.config.trained = serde_json::to_value(&report)?;
    Ok((out, report))
}
