//! The run's trained models (the zoo) and every method the report compares, built from them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::report::{MethodRow, Spec};
use super::Ctx;
use crate::adapter::mix::{mix_adapters, mix_heads, one_member, BetaRule};
use crate::adapter::router::features::PieceTable;
use crate::adapter::router::Router;
use crate::adapter::{Adapter, ClassificationHead};
use crate::backend::Backend;
use crate::classifier::{self, ClassifierSpec};
use crate::model::bert::{mix_encoders, Bert};
use crate::model::classify::{Classify, Model};
use crate::model::mixture::Mixture;
use crate::model::ModelDir;
use crate::weights::Tensor;

/// One trained model on the host.
pub(super) struct Trained {
    /// the fine-tuned encoder (full fine-tuning), else the base one is used
    bert: Option<Bert<Tensor>>,
    adapter: Option<Adapter<Tensor>>,
    head: ClassificationHead<Tensor>,
    pub params: usize,
}

fn load_trained(dir: &Path, model: Option<&Path>) -> Result<Trained> {
    let loaded = classifier::load(&ClassifierSpec::checkpoint(dir), model, None)?;
    let mut params = 0;
    let mut count = |t: &Tensor| {
        params += t.data().len();
        Ok(())
    };
    let Some(member) = loaded.members.into_iter().next() else { bail!("{}: no classifier", dir.display()) };
    member.head.map(&mut count)?;
    if let Some(ad) = &member.adapter {
        ad.map(&mut count)?;
    }
    let bert = match loaded.fine_tuned {
        true => {
            let b = loaded.model.bert()?;
            b.map(&mut count)?;
            Some(b)
        }
        false => None,
    };
    Ok(Trained { bert, adapter: member.adapter, head: member.head, params })
}

/// The run's trained models, on the host, and what each method costs.
pub(super) struct Zoo {
    pub base: Bert<Tensor>,
    /// the learned router (after the `train-router` stage) and the tokenizer's piece table
    pub router: Option<(Router<Tensor>, PieceTable)>,
    /// clean, then one adversarial adapter per known attack
    pub members: Vec<Trained>,
    pub checkpoints: BTreeMap<String, Trained>,
}

impl Zoo {
    pub fn open(c: &Ctx) -> Result<Zoo> {
        let model = c.a.model.as_deref();
        let dir = ModelDir::open(&c.model_dir(), c.plan.max_len)?;
        let base = dir.bert()?;
        let router_dir = c.out.join("router");
        let router = match router_dir.join(crate::adapter::router::CONFIG).exists() {
            true => Some((Router::load(&router_dir)?, dir.tokenizer.piece_table())),
            false => None,
        };
        let mut members = vec![load_trained(&c.out.join("clean"), model)?];
        for k in &c.plan.known {
            members.push(load_trained(&c.out.join(format!("adv-{k}")), model)?);
        }
        if members.iter().any(|t| t.adapter.is_none()) {
            bail!("an adapter checkpoint of the run holds no adapter");
        }
        let mut checkpoints = BTreeMap::new();
        let mut dirs = vec![];
        if c.plan.known.len() > 1 {
            dirs.push("adv-all".to_string());
        }
        if c.plan.full {
            dirs.extend(["full".to_string(), "full-adv".to_string()]);
        }
        for d in dirs {
            let t = load_trained(&c.out.join(&d), model)?;
            checkpoints.insert(d, t);
        }
        Ok(Zoo { base, router, members, checkpoints })
    }

    fn member(&self, dir: &str, c: &Ctx) -> Option<&Trained> {
        if dir == "clean" {
            return self.members.first();
        }
        let k = c.plan.known.iter().position(|k| format!("adv-{k}") == dir)?;
        self.members.get(k + 1)
    }

    /// The checkpoint directory of member `i` (0 the clean adapter, then one per known attack).
    pub fn member_dir(i: usize, c: &Ctx) -> String {
        match i {
            0 => "clean".to_string(),
            i => format!("adv-{}", c.plan.known[i - 1]),
        }
    }

    /// The plainest spec of the same classifier, so that methods that are one model are scored
    /// once: a static β with all weight on one member is that member's checkpoint.
    pub fn canonical(spec: &Spec, c: &Ctx) -> Spec {
        match spec {
            Spec::Static { beta } => match one_member(beta) {
                Some(i) => Spec::Checkpoint { dir: Self::member_dir(i, c) },
                None => spec.clone(),
            },
            _ => spec.clone(),
        }
    }

    fn member_refs(&self) -> Vec<(&Adapter<Tensor>, &ClassificationHead<Tensor>)> {
        self.members.iter().map(|t| (t.adapter.as_ref().expect("checked in open"), &t.head)).collect()
    }

    fn static_mix(&self, beta: &[f32]) -> Result<(Adapter<Tensor>, ClassificationHead<Tensor>)> {
        let refs = self.member_refs();
        let adapters: Vec<&Adapter<Tensor>> = refs.iter().map(|r| r.0).collect();
        let heads: Vec<&ClassificationHead<Tensor>> = refs.iter().map(|r| r.1).collect();
        Ok((mix_adapters(&adapters, beta)?, mix_heads(&heads, beta)?))
    }

    /// The members as one mixture (with the router, once trained).
    pub fn mixture<B: Backend>(&self, be: &B, rule: BetaRule) -> Result<Mixture<B>> {
        let mixture = Mixture::new(be, &self.base, &self.member_refs(), rule)?;
        match &self.router {
            Some((r, table)) => mixture.routed(be, r, table.clone()),
            None => Ok(mixture),
        }
    }

    /// The classifier of `spec` on a backend.
    pub fn build<B: Backend + 'static>(&self, be: &B, spec: &Spec, c: &Ctx) -> Result<Box<dyn Classify<B>>> {
        let model =
            |bert: &Bert<Tensor>, adapter: Option<&Adapter<Tensor>>, head: &ClassificationHead<Tensor>| {
                let adapter = adapter.map(|a| a.to_backend(be)).transpose()?;
                Ok(Box::new(Model::new(be, bert.to_backend(be)?, adapter, head.to_backend(be)?, false)?)
                    as Box<dyn Classify<B>>)
            };
        match spec {
            Spec::Checkpoint { dir } => {
                let t = self
                    .member(dir, c)
                    .or_else(|| self.checkpoints.get(dir))
                    .with_context(|| format!("no checkpoint `{dir}`"))?;
                model(t.bert.as_ref().unwrap_or(&self.base), t.adapter.as_ref(), &t.head)
            }
            Spec::ModelSoup => {
                let (f, a) = (&self.checkpoints["full"], &self.checkpoints["full-adv"]);
                let bert = mix_encoders(
                    &[f.bert.as_ref().context("no encoder")?, a.bert.as_ref().context("no encoder")?],
                    &[0.5, 0.5],
                )?;
                model(&bert, None, &mix_heads(&[&f.head, &a.head], &[0.5, 0.5])?)
            }
            Spec::Static { beta } => {
                let (a, h) = self.static_mix(beta)?;
                model(&self.base, Some(&a), &h)
            }
            Spec::Entropy { tau } => Ok(Box::new(self.mixture(be, BetaRule::Entropy { tau: *tau })?)),
            Spec::MinEntropy => Ok(Box::new(self.mixture(be, BetaRule::MinEntropy)?)),
            Spec::Calibrated { tau, temperatures } => Ok(Box::new(
                self.mixture(be, BetaRule::Calibrated { tau: *tau, temperatures: temperatures.clone() })?,
            )),
            Spec::Router => {
                ensure!(self.router.is_some(), "the run has no trained router");
                Ok(Box::new(self.mixture(be, BetaRule::Router { dir: c.out.join("router") })?))
            }
            Spec::Oracle => {
                bail!("the oracle router knows each input's set: it is not a classifier to attack")
            }
        }
    }
}

/// The static β grid: the clean adapter's weight from 0 to 1, the rest split evenly over the
/// adversarial adapters.
pub(super) fn beta_grid(step: f32, m: usize) -> Vec<Vec<f32>> {
    let n = (1.0 / step).round() as usize;
    (0..=n)
        .map(|i| {
            let c = (i as f32 * step).min(1.0);
            std::iter::once(c).chain(std::iter::repeat_n((1.0 - c) / (m - 1) as f32, m - 1)).collect()
        })
        .collect()
}

/// Every method of the report and the sweeps, before evaluation.
pub(super) fn method_rows(
    c: &Ctx,
    zoo: &Zoo,
    times: &BTreeMap<String, f64>,
) -> (Vec<MethodRow>, Vec<MethodRow>) {
    let secs = |s: &str| times.get(s).copied().unwrap_or(0.0);
    let clean_cost = secs("train-clean");
    let gen: f64 = c.plan.known.iter().map(|k| secs(&format!("attack-train-{k}"))).sum();
    let adv_train: f64 = c.plan.known.iter().map(|k| secs(&format!("train-adv-{k}"))).sum();
    let all_params: usize = zoo.members.iter().map(|t| t.params).sum();
    let ck = |d: &str| Spec::Checkpoint { dir: d.to_string() };
    let params_of = |d: &str| zoo.checkpoints.get(d).map_or(0, |t| t.params);
    let mut main =
        vec![MethodRow::new("clean adapter", "baseline", ck("clean"), zoo.members[0].params, clean_cost)];
    for (i, k) in c.plan.known.iter().enumerate() {
        let cost = clean_cost + secs(&format!("attack-train-{k}")) + secs(&format!("train-adv-{k}"));
        let name = format!("adversarial adapter ({k})");
        main.push(MethodRow::new(
            &name,
            "baseline",
            ck(&format!("adv-{k}")),
            zoo.members[i + 1].params,
            cost,
        ));
    }
    if c.plan.known.len() > 1 {
        let cost = clean_cost + gen + secs("train-adv-all");
        main.push(MethodRow::new(
            "adversarial training, adapter (all attacks)",
            "baseline",
            ck("adv-all"),
            params_of("adv-all"),
            cost,
        ));
    }
    if c.plan.full {
        let (full, adv) = (secs("train-full"), clean_cost + gen + secs("train-full-adv"));
        main.push(MethodRow::new("full fine-tuning", "baseline", ck("full"), params_of("full"), full));
        main.push(MethodRow::new(
            "full adversarial training",
            "baseline",
            ck("full-adv"),
            params_of("full-adv"),
            adv,
        ));
        let both = params_of("full") + params_of("full-adv");
        main.push(MethodRow::new(
            "Model Soup (full + full adversarial)",
            "baseline",
            Spec::ModelSoup,
            both,
            full + adv,
        ));
    }
    let mix_cost = clean_cost + gen + adv_train;
    let m = zoo.members.len();
    let uniform = Spec::Static { beta: vec![1.0 / m as f32; m] };
    main.push(MethodRow::new("Adapter Soup (uniform)", "baseline", uniform, all_params, mix_cost));
    let mut sweep = vec![];
    for beta in beta_grid(c.a.beta_step, m) {
        let name = format!("static β_clean = {:.2}", beta[0]);
        sweep.push(MethodRow::new(&name, "beta-sweep", Spec::Static { beta }, all_params, mix_cost));
    }
    let mut taus = c.a.taus.clone();
    if !taus.contains(&c.a.tau) {
        taus.push(c.a.tau);
    }
    taus.sort_by(f32::total_cmp);
    for tau in taus {
        sweep.push(MethodRow::new(
            &format!("entropy β, τ = {tau}"),
            "tau-sweep",
            Spec::Entropy { tau },
            all_params,
            mix_cost,
        ));
    }
    sweep.push(MethodRow::new("min-entropy β (τ → 0)", "tau-sweep", Spec::MinEntropy, all_params, mix_cost));
    (main, sweep)
}
