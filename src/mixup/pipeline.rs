//! The pipeline's stages as a graph ([`Pipeline::graph`]) and what each does ([`Pipeline::exec`]):
//! every stage reads its inputs from the run directory and writes its outputs there, so any stage
//! runs alone once its needs finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::plan::Plan;
use super::report::{self, Report};
use super::stages::Stages;
use super::{evaluation, routing, Ctx, MixupConfig, StageNode};
use crate::attack::job::AttackJob;
use crate::attack::metrics::{AttackRecord, Outcome};
use crate::attack::run::AttackConfig;
use crate::classifier::ClassifierSpec;
use crate::data::labeled::{self, LabelSet};
use crate::data::{self, mr, Example};
use crate::rng::Rng;
use crate::train::job::{self, Placement, TrainJob, TrainSource};
use crate::train::router::FitConfig;
use crate::{assets, attack, io, Choice};

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

/// What a stage does. The training stages and `evaluate` run once per training seed (`u64`); the
/// data, the attacks against the clean adapter and the adaptive attacks are the first seed's.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Step {
    Data,
    TrainClean(u64),
    AttackTrain(String),
    TrainAdv(String, u64),
    AttackDev(String),
    TrainRouter(u64),
    TrainAdvAll(u64),
    TrainFull(u64),
    TrainFullAdv(u64),
    AttackTest(String),
    Evaluate(u64),
    /// one adaptive attack, or (`None`, before `evaluate` has named them) all of them
    Adaptive(Option<evaluation::AdaptiveStage>),
}

/// A run's settings, its directory and its stage log.
pub(super) struct Pipeline<'a> {
    a: &'a MixupConfig,
    plan: Plan,
    out: PathBuf,
    pub st: Stages,
}

/// What the evaluation stages read, loaded from the run directory.
struct Sets {
    test: Vec<Example>,
    sets: Vec<(String, bool, Vec<Example>)>,
    dev: Vec<Example>,
    dev_sets: Vec<(String, Vec<Example>)>,
}

impl<'a> Pipeline<'a> {
    /// The run of `a` (its checked `plan`), its directory created and its plan recorded.
    pub(super) fn open(a: &'a MixupConfig, plan: Plan) -> Result<Pipeline<'a>> {
        drop(a.device.open(a.precision)?); // a missing GPU (or bf16 CPU) is an error before any work
        std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
        let st = Stages::open(&a.out, &plan)?;
        Ok(Pipeline { a, plan, out: a.out.clone(), st })
    }

    /// The run of `a` as it stands, nothing written.
    pub(super) fn read_only(a: &'a MixupConfig, plan: Plan) -> Pipeline<'a> {
        Pipeline { a, plan, out: a.out.clone(), st: Stages::at(&a.out) }
    }

    /// Every stage with its needs, in run order.
    pub(super) fn graph(&self) -> Result<Vec<(Step, StageNode)>> {
        let plan = &self.plan;
        let s = |x: &str| x.to_string();
        let each = |prefix: &str, suffix: &str| {
            plan.known.iter().map(|k| format!("{prefix}-{k}{suffix}")).collect::<Vec<_>>()
        };
        let mut steps: Vec<(Step, String, Vec<String>)> = vec![(Step::Data, s("data"), vec![])];
        let attacks = |steps: &mut Vec<(Step, String, Vec<String>)>, stage: &str| {
            for k in &plan.known {
                steps.push((Step::AttackTrain(k.clone()), format!("attack-train-{k}"), vec![s(stage)]));
            }
        };
        for (i, seed) in self.seeds().into_iter().enumerate() {
            let x = self.suffix(seed);
            let clean = format!("train-clean{x}");
            steps.push((Step::TrainClean(seed), clean.clone(), vec![s("data")]));
            if i == 0 {
                attacks(&mut steps, &clean);
            }
            for k in &plan.known {
                let need = vec![format!("attack-train-{k}")];
                steps.push((Step::TrainAdv(k.clone(), seed), format!("train-adv-{k}{x}"), need));
            }
            if i == 0 {
                for k in &plan.known {
                    steps.push((Step::AttackDev(k.clone()), format!("attack-dev-{k}"), vec![clean.clone()]));
                }
            }
            let mut router_needs = vec![clean.clone()];
            router_needs.extend(each("train-adv", &x));
            router_needs.extend(each("attack-dev", ""));
            steps.push((Step::TrainRouter(seed), format!("train-router{x}"), router_needs));
            if plan.known.len() > 1 {
                steps.push((Step::TrainAdvAll(seed), format!("train-adv-all{x}"), each("attack-train", "")));
            }
            if plan.full {
                steps.push((Step::TrainFull(seed), format!("train-full{x}"), vec![s("data")]));
                steps.push((
                    Step::TrainFullAdv(seed),
                    format!("train-full-adv{x}"),
                    each("attack-train", ""),
                ));
            }
            if i == 0 {
                for k in plan.known.iter().chain(&plan.unseen) {
                    steps.push((
                        Step::AttackTest(k.clone()),
                        format!("attack-test-{k}"),
                        vec![clean.clone()],
                    ));
                }
            }
            // evaluate needs the data, the attacks and every stage of its own seed (the first
            // seed's names have no suffix: every stage so far)
            let all: Vec<String> = steps
                .iter()
                .map(|(_, n, _)| n)
                .filter(|n| n.ends_with(&x) || *n == "data" || n.starts_with("attack-"))
                .cloned()
                .collect();
            steps.push((Step::Evaluate(seed), format!("evaluate{x}"), all));
        }
        if plan.adaptive > 0 {
            let named = match self.st.finished("evaluate")? {
                Some(_) => {
                    let sets = self.sets()?;
                    evaluation::adaptive_stages(&self.ctx(&sets, &self.out))?
                }
                None => vec![],
            };
            if named.is_empty() {
                steps.push((Step::Adaptive(None), s("adaptive"), vec![s("evaluate")]));
            }
            for stage in named {
                let name = stage.name.clone();
                steps.push((Step::Adaptive(Some(stage)), name, vec![s("evaluate")]));
            }
        }
        let mut waves: BTreeMap<String, usize> = BTreeMap::new();
        Ok(steps
            .into_iter()
            .map(|(step, name, needs)| {
                let wave = 1 + needs.iter().map(|n| waves[n]).max().unwrap_or(0);
                waves.insert(name.clone(), wave);
                (step, StageNode { name, needs, wave })
            })
            .collect())
    }

    fn data(&self) -> PathBuf {
        self.out.join("data")
    }

    /// The training seeds: `--seed` (the surrogate: the attacks run against its clean adapter)
    /// and the `--seeds` − 1 after it.
    fn seeds(&self) -> Vec<u64> {
        (0..self.plan.seeds.max(1) as u64).map(|i| self.plan.seed + i).collect()
    }

    /// The first seed's models are in the run directory, another seed's in `seed-<seed>/`.
    fn seed_dir(&self, seed: u64) -> PathBuf {
        match seed == self.plan.seed {
            true => self.out.clone(),
            false => self.out.join(format!("seed-{seed}")),
        }
    }

    /// The first seed's stages have plain names, another seed's end in `-seed<seed>`.
    fn suffix(&self, seed: u64) -> String {
        match seed == self.plan.seed {
            true => String::new(),
            false => format!("-seed{seed}"),
        }
    }

    fn labels(&self) -> Result<Vec<String>> {
        let file = self.data().join("labels.json");
        match std::fs::read_to_string(&file) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: bad labels", file.display())),
            // runs made before labels.json existed were MR runs
            Err(_) => Ok(mr::LABELS.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<Example>> {
        read_jsonl(&self.data().join(name), &self.labels()?)
    }

    /// The successful adversarial examples of a finished attack stage.
    fn adversarial(&self, stage: &str) -> Result<Vec<Example>> {
        Ok(adversarial(&read_records(&self.out.join(stage))?))
    }

    /// Writes a training set as JSONL into the data directory.
    fn write(&self, name: &str, examples: &[Example]) -> Result<()> {
        io::write_atomic(&self.data().join(name), jsonl(examples, &self.labels()?)?.as_bytes())
    }

    /// The training split and every known attack's adversarial training examples: `adv-all.jsonl`
    /// (adapter and full adversarial training).
    fn write_adv_all(&self) -> Result<()> {
        let mut set = self.read("train.jsonl")?;
        for k in &self.plan.known {
            set.extend(self.adversarial(&format!("attack-train-{k}"))?);
        }
        self.write("adv-all.jsonl", &set)
    }

    fn train_job(&self, seed: u64, name: &str, train: &str, dir: &str, full: bool) -> TrainJob {
        let (a, plan) = (self.a, &self.plan);
        let data = self.data();
        let mut job = TrainJob::new(
            TrainSource::Files { train: data.join(train), dev: Some(data.join("dev.jsonl")) },
            self.seed_dir(seed).join(dir),
        );
        job.name = name.to_string();
        job.seed = seed;
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
        job.max_len = plan.max_len;
        job.device = a.device;
        job.precision = a.precision;
        job.model = a.model.clone();
        job
    }

    /// Trains `job` as stage `stage`, `before` (writing its training set) run first.
    fn train(&self, stage: &str, job: TrainJob, before: impl FnOnce() -> Result<()>) -> Result<()> {
        self.st.run_job(stage, &job.out.join("train.json"), &job, || {
            before()?;
            job::run(&job).map(drop)
        })?;
        Ok(())
    }

    /// Attack `kind` on the clean adapter over data file `input`, as stage `stage`.
    fn attack(&self, stage: &str, kind: &str, input: &str) -> Result<()> {
        let mut attack = AttackConfig::new(Choice::parse(kind)?);
        attack.query_budget = self.a.query_budget;
        attack.seed = self.plan.seed;
        let dir = self.out.join(stage);
        let job = AttackJob {
            victim: ClassifierSpec::checkpoint(&self.out.join("clean")),
            model: self.a.model.clone(),
            // the clean adapter's trained length: the run's --max-len
            max_len: None,
            data: self.data().join(input).display().to_string(),
            split: "test".into(),
            num_examples: None,
            device: self.a.device,
            precision: self.a.precision,
            wordnet: None,
            glove: None,
            attack,
            out: Some(dir.clone()),
        };
        self.st.run_job(stage, &dir.join("job.json"), &job, || attack::job::run(&job).map(drop))?;
        Ok(())
    }

    /// Runs one stage (skipped when it finished before).
    pub(super) fn exec(&self, step: &Step) -> Result<()> {
        let plan = &self.plan;
        match step {
            Step::Data => self.stage_data(),
            Step::TrainClean(seed) => {
                let job = self.train_job(*seed, "clean", "train.jsonl", "clean", false);
                self.train(&format!("train-clean{}", self.suffix(*seed)), job, || Ok(()))
            }
            Step::AttackTrain(k) => self.attack(&format!("attack-train-{k}"), k, "adv-source.jsonl"),
            Step::TrainAdv(k, seed) => {
                let file = format!("adv-{k}.jsonl");
                let job = self.train_job(*seed, &format!("adv_{k}"), &file, &format!("adv-{k}"), false);
                self.train(&format!("train-adv-{k}{}", self.suffix(*seed)), job, || {
                    let adv = self.adversarial(&format!("attack-train-{k}"))?;
                    if adv.is_empty() {
                        bail!("{k} found no adversarial example on the training split: nothing to train adv_{k} on");
                    }
                    let set = match plan.adv_only {
                        true => adv,
                        false => self.read("train.jsonl")?.into_iter().chain(adv).collect(),
                    };
                    self.write(&file, &set)
                })
            }
            Step::AttackDev(k) => self.attack(&format!("attack-dev-{k}"), k, "dev.jsonl"),
            Step::TrainRouter(seed) => self.stage_router(*seed),
            Step::TrainAdvAll(seed) => {
                let job = self.train_job(*seed, "adv_all", "adv-all.jsonl", "adv-all", false);
                self.train(&format!("train-adv-all{}", self.suffix(*seed)), job, || self.write_adv_all())
            }
            Step::TrainFull(seed) => {
                let job = self.train_job(*seed, "full", "train.jsonl", "full", true);
                self.train(&format!("train-full{}", self.suffix(*seed)), job, || Ok(()))
            }
            Step::TrainFullAdv(seed) => {
                let job = self.train_job(*seed, "full_adv", "adv-all.jsonl", "full-adv", true);
                self.train(&format!("train-full-adv{}", self.suffix(*seed)), job, || self.write_adv_all())
            }
            Step::AttackTest(k) => self.attack(&format!("attack-test-{k}"), k, "test.jsonl"),
            Step::Evaluate(seed) => {
                let sets = self.sets()?;
                let dir = self.seed_dir(*seed);
                let c = self.ctx(&sets, &dir);
                let stage = format!("evaluate{}", self.suffix(*seed));
                crate::with_backend!(self.a.device.open(self.a.precision)?, be => evaluation::evaluate(&be, &c, &self.st, &stage))
            }
            Step::Adaptive(stage) => {
                let sets = self.sets()?;
                let c = self.ctx(&sets, &self.out);
                let stages = match stage {
                    Some(s) => vec![s.clone()],
                    None => evaluation::adaptive_stages(&c)?,
                };
                for s in &stages {
                    crate::with_backend!(self.a.device.open(self.a.precision)?, be => evaluation::adaptive(&be, &c, &self.st, s))?;
                }
                Ok(())
            }
        }
    }

    /// Seeded samples of the splits (and a dev split carved from train when there is no dev file).
    fn stage_data(&self) -> Result<()> {
        let (plan, data) = (&self.plan, self.data());
        // read (and check) the data before the stage prints
        let fresh = match self.st.finished("data")? {
            None => Some(splits(self.a, plan)?),
            Some(_) => None,
        };
        let record = DataRecord {
            data: plan.data.clone(),
            train: plan.train,
            adv: plan.adv,
            dev: plan.dev,
            test: plan.test,
            seed: plan.seed,
        };
        self.st.run_recorded("data", &data.join("config.json"), &record, || {
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
            io::write_atomic(&data.join("labels.json"), serde_json::to_string(&labels)?.as_bytes())
        })?;
        Ok(())
    }

    /// The learned router, on the training split and the adversarial training examples (clean
    /// first), its epoch picked on dev and the dev adversarial sets.
    fn stage_router(&self, seed: u64) -> Result<()> {
        let (plan, out) = (&self.plan, &self.seed_dir(seed));
        let mut train = vec![self.read("train.jsonl")?];
        let mut dev = vec![self.read("dev.jsonl")?];
        for k in &plan.known {
            train.push(self.adversarial(&format!("attack-train-{k}"))?);
            dev.push(self.adversarial(&format!("attack-dev-{k}"))?);
        }
        let router_data = routing::RouterData {
            train: train.iter().map(Vec::as_slice).collect(),
            dev: dev.iter().map(Vec::as_slice).collect(),
        };
        let member_dirs: Vec<(String, PathBuf)> = std::iter::once(("clean".to_string(), out.join("clean")))
            .chain(plan.known.iter().map(|k| (format!("adv_{k}"), out.join(format!("adv-{k}")))))
            .collect();
        let fit = FitConfig { seed, ..FitConfig::default() };
        let record = routing::RouterRecord {
            fit: fit.clone(),
            members: member_dirs.iter().map(|(n, _)| n.clone()).collect(),
            train: train.iter().map(Vec::len).collect(),
            dev: dev.iter().map(Vec::len).collect(),
        };
        let stage = format!("train-router{}", self.suffix(seed));
        self.st.run_recorded(&stage, &out.join("router.config.json"), &record, || {
            let dirs: Vec<(String, &Path)> =
                member_dirs.iter().map(|(n, d)| (n.clone(), d.as_path())).collect();
            let a = self.a;
            let report = crate::with_backend!(a.device.open(a.precision)?, be => routing::train_router(
                &be, a.model.as_deref(), plan.max_len, &dirs, &router_data, &fit, &out.join("router"))?);
            let last = report.epochs[report.best_epoch - 1].dev_balanced_accuracy;
            eprintln!(
                "[mixup] router: epoch {} of {}, dev balanced routing accuracy {:.1}%",
                report.best_epoch,
                fit.epochs,
                100.0 * last
            );
            Ok(())
        })?;
        Ok(())
    }

    /// The test and dev splits, the transfer sets and the dev adversarial sets.
    fn sets(&self) -> Result<Sets> {
        let plan = &self.plan;
        let mut sets = vec![];
        for k in plan.known.iter().chain(&plan.unseen) {
            sets.push((k.clone(), plan.known.contains(k), self.adversarial(&format!("attack-test-{k}"))?));
        }
        let mut dev_sets = vec![];
        for k in &plan.known {
            dev_sets.push((k.clone(), self.adversarial(&format!("attack-dev-{k}"))?));
        }
        Ok(Sets { test: self.read("test.jsonl")?, sets, dev: self.read("dev.jsonl")?, dev_sets })
    }

    /// The evaluation stages' context for the models in `dir` (a seed's directory).
    fn ctx<'s>(&'s self, sets: &'s Sets, dir: &'s Path) -> Ctx<'s> {
        Ctx {
            out: dir,
            plan: &self.plan,
            a: self.a,
            test: &sets.test,
            sets: &sets.sets,
            dev: &sets.dev,
            dev_sets: &sets.dev_sets,
        }
    }

    /// The report of a finished run: report.md, report.json and tradeoff.png.
    pub(super) fn report(&self) -> Result<Report> {
        let sets = self.sets()?;
        let others: Vec<PathBuf> = self.seeds()[1..].iter().map(|&s| self.seed_dir(s)).collect();
        let mut report = evaluation::report(&self.ctx(&sets, &self.out), &self.seeds(), &others)?;
        let seconds = self.st.seconds()?;
        report.total_seconds = seconds.values().sum();
        report.stage_seconds = seconds;
        report.targets = report::study_targets(&report);
        let md = report::markdown(&report);
        io::write_atomic(&self.out.join("report.md"), md.as_bytes())?;
        io::write_atomic(&self.out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
        report::plot(&report, &self.out.join("tradeoff.png"))?;
        Ok(report)
    }
}
