//! AdpMixup end to end (`admix mixup`, docs/mixup.md): a typed [`MixupConfig`] in, the report out.
//!
//! Stages, each cached in `--out` and skipped by a re-run once finished (`stages.json` records the
//! plan, `stages/<name>.json` what finished and how long it took). The stages form a graph
//! ([`stages`]): each reads its inputs from the run directory, so any one runs alone once its needs
//! finished ([`run_stage`]), in this process or another sharing the directory:
//! 1. `data`: seeded samples of the splits as JSONL (MR or the user's files; without a dev file a
//!    stratified dev split carved from train);
//! 2. `train-clean`: the clean adapter + head;
//! 3. per known attack `k`: `attack-train-k` attacks (a sample of) the training split against the
//!    clean model; `train-adv-k` trains adapter `adv_k` on the clean training set plus the
//!    successful adversarial examples with their original labels (or on those alone,
//!    `--adv-only`);
//!    then `attack-dev-k` attacks the dev split the same way (adversarial dev sets, for tuning
//!    only) and `train-router` trains the learned router ([`crate::adapter::router`]) on the
//!    training split's clean sentences and the adversarial training examples, picking its epoch
//!    on dev;
//! 4. baselines: `train-adv-all` (one adapter on clean + every attack's examples, with two or
//!    more known attacks), `train-full` and `train-full-adv` (full fine-tuning on clean, and on
//!    clean + adversarial data);
//! 5. `attack-test-k` for every known and unseen attack: the fixed transfer sets, the test
//!    examples whose attack fooled the clean model;
//! 6. `evaluate`: the members' temperatures, each entropy rule's τ and a static β chosen on dev;
//!    every method on the clean test set and every transfer set, the β sweep, the τ ablation, the
//!    routing of every β rule (with the oracle router as an upper bound) and the β attribution;
//! 7. `adaptive-<method>-k`: each method attacked directly (the mixture as a whole);
//! 8. the report: report.md, report.json, tradeoff.png ([`report`]).
//!
//! With `--seeds N` the training stages and `evaluate` run once per training seed (`seed-<s>/`,
//! stages named `…-seed<s>`) against the first seed's data and attacks; the report adds every
//! method's mean ± sd over the seeds.
//!
//! Stages call training and the attacks as library jobs ([`TrainJob`], [`AttackJob`]). Every stage
//! writes its config beside its output — the jobs `train.json` and `job.json`, the others
//! `data/config.json`, `router.config.json`, `evaluation.config.json` and
//! `adaptive/<method>-<attack>.config.json` — the stage's record and its cache key: a finished
//! stage asked for with other settings is refused. The run's sizes are its [`plan::Plan`];
//! `methods.rs` builds every compared method from the trained models; `routing.rs` trains the
//! router; `evaluation.rs` scores them.

mod evaluation;
mod methods;
mod pipeline;
pub mod plan;
pub mod report;
mod routing;
mod stages;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use self::pipeline::{Pipeline, Step};
use self::plan::Plan;
use self::report::Report;
use crate::attack::run::AttackKind;
use crate::backend::{Device, Precision};
use crate::data::Example;
use crate::{assets, Choice};

/// The user's train, dev and test files (instead of MR). Without a dev file a seeded,
/// label-stratified dev split is carved from train ([`data::stratified_split`]) and not trained on:
/// GLUE's dev split is its test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataFiles {
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub test: PathBuf,
}

impl DataFiles {
    /// How the run's data is named in its plan and report.
    pub fn describe(&self) -> String {
        match &self.dev {
            Some(dev) => format!("{}, {}, {}", self.train.display(), dev.display(), self.test.display()),
            None => format!("{} (dev carved from it), {}", self.train.display(), self.test.display()),
        }
    }
}

/// The sizes a run starts from: `quick` (the CPU-sized main job) or `full` (all of MR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Quick,
    Full,
}

impl Choice for Preset {
    const WHAT: &'static str = "preset";
    const ALL: &'static [Self] = &[Preset::Quick, Preset::Full];
    fn name(self) -> &'static str {
        match self {
            Preset::Quick => "quick",
            Preset::Full => "full",
        }
    }
}

/// Which methods the adaptive stages attack: `all` of the main table (the oracle excepted), or the
/// `core` ones — the clean adapter, the adversarial adapters, adv-all, full adversarial training
/// and every AdpMixup rule chosen without the test sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdaptiveMethods {
    #[default]
    All,
    Core,
}

impl Choice for AdaptiveMethods {
    const WHAT: &'static str = "adaptive method set";
    const ALL: &'static [Self] = &[AdaptiveMethods::All, AdaptiveMethods::Core];
    fn name(self) -> &'static str {
        match self {
            AdaptiveMethods::All => "all",
            AdaptiveMethods::Core => "core",
        }
    }
}

/// A pipeline run (`admix mixup`'s flags, typed). Sizes left `None` are the preset's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixupConfig {
    /// every stage's results, report.md, report.json and tradeoff.png
    pub out: PathBuf,
    /// base model directory (default: the fetched MiniLM)
    pub model: Option<PathBuf>,
    /// the user's data instead of MR
    pub files: Option<DataFiles>,
    pub preset: Preset,
    pub train_examples: Option<usize>,
    pub adv_examples: Option<usize>,
    pub dev_examples: Option<usize>,
    pub test_examples: Option<usize>,
    /// known attacks (one adversarial adapter each) and unseen ones (evaluated only)
    pub known: Option<Vec<AttackKind>>,
    pub unseen: Option<Vec<AttackKind>>,
    /// train each adversarial adapter on its adversarial examples alone
    pub adv_only: bool,
    pub epochs: Option<usize>,
    pub lr: Option<f32>,
    pub batch_size: Option<usize>,
    pub dropout: Option<f32>,
    /// token limit of every stage (training, attacks, evaluation; default 64)
    pub max_len: Option<usize>,
    pub full_epochs: Option<usize>,
    /// skip full fine-tuning, full adversarial training and Model Soup
    pub no_full: bool,
    /// AdpMixup's entropy temperature, and the τ ablation
    pub tau: f32,
    pub taus: Vec<f32>,
    /// step of the static β grid
    pub beta_step: f32,
    /// test examples attacked per method and attack (0 = skip), and which methods
    pub adaptive_examples: Option<usize>,
    pub adaptive_methods: AdaptiveMethods,
    pub query_budget: u64,
    pub seed: u64,
    /// training seeds: `seed` (the surrogate the attacks run against) and the `seeds − 1` after it
    pub seeds: usize,
    pub device: Device,
    /// the GEMMs' precision in every stage (default: the device's own)
    pub precision: Option<Precision>,
}

impl MixupConfig {
    /// A run into `out` with `admix mixup`'s defaults.
    pub fn new(out: PathBuf, preset: Preset) -> MixupConfig {
        MixupConfig {
            out,
            model: None,
            files: None,
            preset,
            train_examples: None,
            adv_examples: None,
            dev_examples: None,
            test_examples: None,
            known: None,
            unseen: None,
            adv_only: false,
            epochs: None,
            lr: None,
            batch_size: None,
            dropout: None,
            max_len: None,
            full_epochs: None,
            no_full: false,
            tau: 0.1,
            taus: vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0],
            beta_step: 0.1,
            adaptive_examples: None,
            adaptive_methods: AdaptiveMethods::All,
            query_budget: 2000,
            seed: 42,
            seeds: 1,
            device: Device::Cpu,
            precision: None,
        }
    }
}

/// One stage of a run's graph: its name and the stages that must have finished before it runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageNode {
    pub name: String,
    pub needs: Vec<String>,
    /// 1 + the largest wave among its needs: the stages of one wave can run at once
    pub wave: usize,
}

/// The checked plan of a config.
fn checked_plan(a: &MixupConfig) -> Result<Plan> {
    if !(a.tau > 0.0 && a.tau.is_finite()) || a.taus.iter().any(|t| !(*t > 0.0 && t.is_finite())) {
        bail!("every τ must be positive");
    }
    if !(a.beta_step > 0.0 && a.beta_step <= 1.0) {
        bail!("--beta-step must be in (0, 1]");
    }
    let plan = Plan::of(a);
    if plan.known.is_empty() {
        bail!("--known needs at least one attack");
    }
    for k in plan.known.iter().chain(&plan.unseen) {
        if !["deepwordbug", "pwws", "textfooler", "textbugger"].contains(&k.as_str()) {
            bail!("`{k}` is not a black-box text attack (use deepwordbug, pwws, textfooler, textbugger)");
        }
    }
    if let Some(k) = plan.known.iter().find(|k| plan.unseen.contains(k)) {
        bail!("`{k}` is both known and unseen");
    }
    Ok(plan)
}

/// Runs (or resumes) the whole pipeline into `a.out` and returns the report (also written there as
/// report.md, report.json and tradeoff.png).
pub fn run(a: &MixupConfig) -> Result<Report> {
    let p = Pipeline::open(a, checked_plan(a)?)?;
    let started = Instant::now();
    for (step, _) in p.graph()? {
        p.exec(&step)?;
    }
    let report = p.report()?;
    eprintln!("[mixup] this invocation: {:.0} s", started.elapsed().as_secs_f64());
    Ok(report)
}

/// Runs one stage of `a`'s run, its needs finished (by this or another process sharing `a.out`):
/// how a scheduler spreads a study over machines. `adaptive` runs every adaptive stage.
pub fn run_stage(a: &MixupConfig, name: &str) -> Result<()> {
    let p = Pipeline::open(a, checked_plan(a)?)?;
    let graph = p.graph()?;
    let family = name == "adaptive";
    let chosen: Vec<&(Step, StageNode)> =
        graph.iter().filter(|(s, n)| n.name == name || (family && matches!(s, Step::Adaptive(_)))).collect();
    if chosen.is_empty() {
        let names: Vec<&str> = graph.iter().map(|(_, n)| n.name.as_str()).collect();
        bail!("no stage `{name}` in this run (its stages: {})", names.join(", "));
    }
    for (step, node) in chosen {
        for need in &node.needs {
            if p.st.finished(need)?.is_none() {
                bail!("stage {} needs stage {need}, which has not finished", node.name);
            }
        }
        p.exec(step)?;
    }
    Ok(())
}

/// The stage graph of `a`'s run, in an order that runs every stage after its needs. The adaptive
/// stages are named once `evaluate` has finished; before, one node `adaptive` stands for them.
pub fn stages(a: &MixupConfig) -> Result<Vec<StageNode>> {
    let p = Pipeline::read_only(a, checked_plan(a)?);
    Ok(p.graph()?.into_iter().map(|(_, n)| n).collect())
}

/// What the evaluation stages read.
struct Ctx<'a> {
    out: &'a Path,
    plan: &'a Plan,
    a: &'a MixupConfig,
    test: &'a [Example],
    /// (attack, known, adversarial test examples)
    sets: &'a [(String, bool, Vec<Example>)],
    /// the dev split and each known attack's adversarial dev examples (tuning only)
    dev: &'a [Example],
    dev_sets: &'a [(String, Vec<Example>)],
}

impl Ctx<'_> {
    /// The base model directory.
    fn model_dir(&self) -> PathBuf {
        self.a.model.clone().unwrap_or_else(assets::default_model_dir)
    }
}
