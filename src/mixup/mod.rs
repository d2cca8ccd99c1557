//! AdpMixup end to end (`admix mixup`, docs/mixup.md): a typed [`MixupConfig`] in, the report out.
//!
//! Stages, each cached in `--out` and skipped by a re-run once finished (`stages.json` records
//! what finished and how long it took):
//! 1. `data`: seeded samples of MR's splits as JSONL (the preset's sizes, or all of MR);
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
//! Stages call training and the attacks as library jobs ([`TrainJob`], [`AttackJob`]). Every stage
//! writes its config beside its output — the jobs `train.json` and `job.json`, the others
//! `data/config.json`, `router.config.json`, `evaluation.config.json` and
//! `adaptive/<method>-<attack>.config.json` — the stage's record and its cache key: a finished
//! stage asked for with other settings is refused. The run's sizes are its [`plan::Plan`];
//! `methods.rs` builds every compared method from the trained models; `routing.rs` trains the
//! router; `evaluation.rs` scores them.

mod evaluation;
mod methods;
pub mod plan;
pub mod report;
mod routing;
mod stages;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use self::plan::Plan;
use self::report::Report;
use self::stages::Stages;
use crate::attack::job::AttackJob;
use crate::attack::metrics::{AttackRecord, Outcome};
use crate::attack::run::{AttackConfig, AttackKind};
use crate::backend::{Device, Precision};
use crate::classifier::ClassifierSpec;
use crate::data::labeled::{self, LabelSet};
use crate::data::{self, mr, Example};
use crate::rng::Rng;
use crate::train::job::{self, Placement, TrainJob, TrainSource};
use crate::train::router::FitConfig;
use crate::{assets, attack, io, Choice};

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
    pub full_epochs: Option<usize>,
    /// skip full fine-tuning, full adversarial training and Model Soup
    pub no_full: bool,
    /// AdpMixup's entropy temperature, and the τ ablation
    pub tau: f32,
    pub taus: Vec<f32>,
    /// step of the static β grid
    pub beta_step: f32,
    /// test examples attacked per method and attack (0 = skip)
    pub adaptive_examples: Option<usize>,
    pub query_budget: u64,
    pub seed: u64,
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
            full_epochs: None,
            no_full: false,
            tau: 0.1,
            taus: vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0],
            beta_step: 0.1,
            adaptive_examples: None,
            query_budget: 2000,
            seed: 42,
            device: Device::Cpu,
            precision: None,
        }
    }
}

/// The `data` stage's record (`data/config.json`): where the splits came from and how they were
/// sampled.
#[derive(Serialize)]
struct DataRecord {
    data: String,
    train: Option<usize>,
    adv: Option<usize>,
    dev: Option<usize>,
    test: Option<usize>,
    seed: u64,
}

/// Labelled examples as JSONL (labels by name; a sentence pair's second text as `text_pair`).
fn jsonl(examples: &[Example], labels: &[String]) -> Result<String> {
    io::jsonl(examples.iter().map(|e| match &e.pair {
        None => serde_json::json!({"text": e.text, "label": labels[e.label]}),
        Some(p) => serde_json::json!({"text": e.text, "text_pair": p, "label": labels[e.label]}),
    }))
}

fn read_jsonl(path: &Path, labels: &[String]) -> Result<Vec<Example>> {
    data::labelled_examples(&path.display().to_string(), "", labels)
}

/// The run's train, dev and test splits and label names: MR, or the user's files (a dev split of
/// `plan.dev` examples, default a tenth of train, carved from train when there is no dev file).
fn splits(a: &MixupConfig, plan: &Plan) -> Result<([Vec<Example>; 3], Vec<String>)> {
    let Some(files) = &a.files else {
        let s = mr::load(&assets::mr_path())?;
        return Ok(([s.train, s.dev, s.test], mr::LABELS.iter().map(|s| s.to_string()).collect()));
    };
    let raw = labeled::read(&files.train)?;
    let labels = LabelSet::from_examples(&raw, &files.train.display().to_string())?;
    let read = |path: &Path, raw: Option<Vec<labeled::RawExample>>| -> Result<Vec<Example>> {
        labels.encode(raw.map_or_else(|| labeled::read(path), Ok)?, &path.display().to_string())
    };
    let train = read(&files.train, Some(raw))?;
    let test = read(&files.test, None)?;
    let (train, dev) = match &files.dev {
        Some(dev) => (train, read(dev, None)?),
        None => {
            let n = plan.dev.unwrap_or(train.len() / 10);
            if n == 0 || n >= train.len() {
                bail!("cannot carve a dev split of {n} from {} training examples", train.len());
            }
            data::stratified_split(train, n, plan.seed ^ 4)
        }
    };
    Ok(([train, dev, test], labels.names))
}

/// A seeded sample of `n` examples (all of them, in their order, when `n` is `None`).
fn sample(mut v: Vec<Example>, n: Option<usize>, seed: u64) -> Vec<Example> {
    if let Some(n) = n.filter(|&n| n < v.len()) {
        Rng::new(seed).shuffle(&mut v);
        v.truncate(n);
    }
    v
}

fn read_records(dir: &Path) -> Result<Vec<AttackRecord>> {
    let path = dir.join("results.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}: bad record", path.display(), i + 1))
        })
        .collect()
}

/// The successful adversarial examples of an attack run, with their original labels (and a
/// sentence pair's second text, which the attacks leave as it is).
fn adversarial(records: &[AttackRecord]) -> Vec<Example> {
    records
        .iter()
        .filter(|r| r.outcome == Outcome::Successful)
        .filter_map(|r| Some(Example { text: r.perturbed.clone()?, pair: r.pair.clone(), label: r.label }))
        .collect()
}

/// Runs (or resumes) the pipeline into `a.out` and returns the report (also written there as
/// report.md, report.json and tradeoff.png).
pub fn run(a: &MixupConfig) -> Result<Report> {
    drop(a.device.open(a.precision)?); // a missing GPU (or bf16 CPU) is an error before any work
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
    let out = a.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let started = Instant::now();
    let mut st = Stages::open(&out, &plan)?;
    let data = out.join("data");

    // 1. data
    let labels_file = data.join("labels.json");
    // read (and check) the data before any stage prints
    let fresh = if st.log.seconds.contains_key("data") { None } else { Some(splits(a, &plan)?) };
    let record = DataRecord {
        data: plan.data.clone(),
        train: plan.train,
        adv: plan.adv,
        dev: plan.dev,
        test: plan.test,
        seed: plan.seed,
    };
    st.run_recorded("data", &data.join("config.json"), &record, || {
        let ([train, dev, test], labels) = fresh.context("the splits")?;
        std::fs::create_dir_all(&data)?;
        let train = sample(train, plan.train, plan.seed);
        let adv_source = sample(train.clone(), plan.adv, plan.seed ^ 1);
        for (name, v) in [
            ("train", train),
            ("adv-source", adv_source),
            ("dev", sample(dev, plan.dev, plan.seed ^ 2)),
            ("test", sample(test, plan.test, plan.seed ^ 3)),
        ] {
            if v.is_empty() {
                bail!("the {name} split is empty");
            }
            io::write_atomic(&data.join(format!("{name}.jsonl")), jsonl(&v, &labels)?.as_bytes())?;
        }
        io::write_atomic(&labels_file, serde_json::to_string(&labels)?.as_bytes())
    })?;
    let labels: Vec<String> = match std::fs::read_to_string(&labels_file) {
        Ok(t) => {
            serde_json::from_str(&t).with_context(|| format!("{}: bad labels", labels_file.display()))?
        }
        // runs made before labels.json existed were MR runs
        Err(_) => mr::LABELS.iter().map(|s| s.to_string()).collect(),
    };
    let p = |n: &str| data.join(n);
    let train_job = |name: &str, train: &str, dir: &Path, full: bool| -> TrainJob {
        let mut job =
            TrainJob::new(TrainSource::Files { train: p(train), dev: Some(p("dev.jsonl")) }, dir.into());
        job.name = name.to_string();
        job.seed = plan.seed;
        if full {
            job.full = true;
            job.epochs = plan.full_epochs;
        } else {
            job.adapter = Some(Placement::SeqBn);
            job.epochs = plan.epochs;
            job.lr = plan.lr;
        }
        if let Some(b) = plan.batch_size {
            job.batch_size = b;
        }
        job.dropout = plan.dropout;
        job.device = a.device;
        job.precision = a.precision;
        job.model = a.model.clone();
        job
    };
    let train_run = |st: &mut Stages, stage: &str, job: TrainJob| -> Result<f64> {
        st.run_job(stage, &job.out.join("train.json"), &job, || job::run(&job).map(drop))
    };
    let attack_job = |kind: &str, victim: &Path, input: &str, dir: &Path| -> Result<AttackJob> {
        let mut attack = AttackConfig::new(Choice::parse(kind)?);
        attack.query_budget = a.query_budget;
        attack.seed = plan.seed;
        Ok(AttackJob {
            victim: ClassifierSpec::checkpoint(victim),
            model: a.model.clone(),
            max_len: None,
            data: p(input).display().to_string(),
            split: "test".into(),
            num_examples: None,
            device: a.device,
            precision: a.precision,
            wordnet: None,
            glove: None,
            attack,
            out: Some(dir.to_path_buf()),
        })
    };
    let attack_run = |st: &mut Stages, stage: &str, job: AttackJob| -> Result<f64> {
        let record = job.out.as_ref().expect("stage jobs write their results").join("job.json");
        st.run_job(stage, &record, &job, || attack::job::run(&job).map(drop))
    };

    // 2. the clean adapter
    let clean_dir = out.join("clean");
    train_run(&mut st, "train-clean", train_job("clean", "train.jsonl", &clean_dir, false))?;

    // 3. one adversarial adapter per known attack
    let train_set = read_jsonl(&data.join("train.jsonl"), &labels)?;
    let mut all_adv = vec![];
    let mut adv_sets = vec![];
    for k in &plan.known {
        let dir = out.join(format!("attack-train-{k}"));
        attack_run(
            &mut st,
            &format!("attack-train-{k}"),
            attack_job(k, &clean_dir, "adv-source.jsonl", &dir)?,
        )?;
        let adv = adversarial(&read_records(&dir)?);
        if adv.is_empty() {
            bail!("{k} found no adversarial example on the training split: nothing to train adv_{k} on");
        }
        let file = format!("adv-{k}.jsonl");
        let set: Vec<Example> = if plan.adv_only {
            adv.clone()
        } else {
            train_set.iter().cloned().chain(adv.iter().cloned()).collect()
        };
        io::write_atomic(&data.join(&file), jsonl(&set, &labels)?.as_bytes())?;
        all_adv.extend(adv.iter().cloned());
        adv_sets.push(adv);
        let job = train_job(&format!("adv_{k}"), &file, &out.join(format!("adv-{k}")), false);
        train_run(&mut st, &format!("train-adv-{k}"), job)?;
    }
    // 3b. dev adversarial sets (the known attacks on the dev split against the clean adapter: for
    // tuning only), and the learned router
    let dev = read_jsonl(&data.join("dev.jsonl"), &labels)?;
    let mut dev_sets = vec![];
    for k in &plan.known {
        let dir = out.join(format!("attack-dev-{k}"));
        attack_run(&mut st, &format!("attack-dev-{k}"), attack_job(k, &clean_dir, "dev.jsonl", &dir)?)?;
        dev_sets.push((k.clone(), adversarial(&read_records(&dir)?)));
    }
    let member_dirs: Vec<(String, PathBuf)> = std::iter::once(("clean".to_string(), clean_dir.clone()))
        .chain(plan.known.iter().map(|k| (format!("adv_{k}"), out.join(format!("adv-{k}")))))
        .collect();
    let router_data = routing::RouterData {
        train: std::iter::once(train_set.as_slice()).chain(adv_sets.iter().map(Vec::as_slice)).collect(),
        dev: std::iter::once(dev.as_slice()).chain(dev_sets.iter().map(|(_, v)| v.as_slice())).collect(),
    };
    let fit = FitConfig { seed: plan.seed, ..FitConfig::default() };
    let record = routing::RouterRecord {
        fit: fit.clone(),
        members: member_dirs.iter().map(|(n, _)| n.clone()).collect(),
        train: router_data.train.iter().map(|v| v.len()).collect(),
        dev: router_data.dev.iter().map(|v| v.len()).collect(),
    };
    st.run_recorded("train-router", &out.join("router.config.json"), &record, || {
        let dirs: Vec<(String, &Path)> = member_dirs.iter().map(|(n, d)| (n.clone(), d.as_path())).collect();
        let report = crate::with_backend!(a.device.open(a.precision)?, be => routing::train_router(
            &be, a.model.as_deref(), &dirs, &router_data, &fit, &out.join("router"))?);
        let last = report.epochs[report.best_epoch - 1].dev_balanced_accuracy;
        eprintln!(
            "[mixup] router: epoch {} of {}, dev balanced routing accuracy {:.1}%",
            report.best_epoch,
            fit.epochs,
            100.0 * last
        );
        Ok(())
    })?;
    let mixed: Vec<Example> = train_set.iter().cloned().chain(all_adv.iter().cloned()).collect();
    io::write_atomic(&data.join("adv-all.jsonl"), jsonl(&mixed, &labels)?.as_bytes())?;

    // 4. baselines
    if plan.known.len() > 1 {
        train_run(
            &mut st,
            "train-adv-all",
            train_job("adv_all", "adv-all.jsonl", &out.join("adv-all"), false),
        )?;
    }
    if plan.full {
        train_run(&mut st, "train-full", train_job("full", "train.jsonl", &out.join("full"), true))?;
        train_run(
            &mut st,
            "train-full-adv",
            train_job("full_adv", "adv-all.jsonl", &out.join("full-adv"), true),
        )?;
    }

    // 5. transfer sets: the test examples whose attack fooled the clean model
    let mut sets = vec![];
    for k in plan.known.iter().chain(&plan.unseen) {
        let dir = out.join(format!("attack-test-{k}"));
        attack_run(&mut st, &format!("attack-test-{k}"), attack_job(k, &clean_dir, "test.jsonl", &dir)?)?;
        sets.push((k.clone(), plan.known.contains(k), adversarial(&read_records(&dir)?)));
    }

    // 6.–7. evaluation and the adaptive attacks
    let test = read_jsonl(&data.join("test.jsonl"), &labels)?;
    let ctx = Ctx { out: &out, plan: &plan, a, test: &test, sets: &sets, dev: &dev, dev_sets: &dev_sets };
    let mut report =
        crate::with_backend!(a.device.open(a.precision)?, be => evaluation::evaluate(&be, &ctx, &mut st)?);
    report.total_seconds = st.log.seconds.values().sum();
    report.stage_seconds = st.log.seconds.clone();
    eprintln!("[mixup] this invocation: {:.0} s", started.elapsed().as_secs_f64());

    // 8. the report
    let md = report::markdown(&report);
    io::write_atomic(&out.join("report.md"), md.as_bytes())?;
    io::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let png = out.join("tradeoff.png");
    report::plot(&report, &png)?;
    Ok(report)
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
