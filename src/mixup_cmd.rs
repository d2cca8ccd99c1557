//! `admix mixup`: the AdpMixup pipeline end to end (docs/mixup.md).
//!
//! Stages, each cached in `--out` and skipped by a re-run once finished (`stages.json` records
//! what finished and how long it took):
//! 1. `data`: seeded samples of MR's splits as JSONL (the preset's sizes, or all of MR);
//! 2. `train-clean`: the clean adapter + head;
//! 3. per known attack `k`: `attack-train-k` attacks (a sample of) the training split against the
//!    clean model; `train-adv-k` trains adapter `adv_k` on the clean training set plus the
//!    successful adversarial examples with their original labels (or on those alone,
//!    `--adv-only`);
//! 4. baselines: `train-adv-all` (one adapter on clean + every attack's examples, with two or
//!    more known attacks), `train-full` and `train-full-adv` (full fine-tuning on clean, and on
//!    clean + adversarial data);
//! 5. `attack-test-k` for every known and unseen attack: the fixed transfer sets, the test
//!    examples whose attack fooled the clean model;
//! 6. `evaluate`: every method on the clean test set and every transfer set, the β sweep, the τ
//!    ablation and the β attribution;
//! 7. `adaptive-<method>-k`: each method attacked directly (the mixture as a whole);
//! 8. the report: report.md, report.json, tradeoff.png.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize};

use admix::adapter::mix::{mix_adapters, mix_heads, BetaRule};
use admix::adapter::{Adapter, ClassificationHead};
use admix::attack::metrics::{AttackRecord, Outcome, Summary};
use admix::backend::cpu::Cpu;
use admix::backend::cuda::Cuda;
use admix::backend::TokenBatch;
use admix::backend::{Backend, Device};
use admix::data::batches;
use admix::data::labeled::{self, LabelSet};
use admix::data::{mr, Example};
use admix::model::bert::{mix_encoders, Bert};
use admix::model::classify::Model;
use admix::model::classify::{argmax, Classify};
use admix::model::mixture::Mixture;
use admix::model::tokenizer::TextTokenizer;
use admix::model::ModelDir;
use admix::pipeline::report::{self, Attribution, MethodRow, Report, SetInfo, Spec};
use admix::rng::Rng;
use admix::weights::Tensor;
use admix::{assets, io};

use crate::attack_cmd::{self, AttackArgs, AttackKind};
use crate::train_cmd::{self, TrainArgs};

#[derive(Args)]
pub struct MixupArgs {
    /// Output directory: every stage's results, report.md, report.json and tradeoff.png
    #[arg(long, default_value = "runs/mixup")]
    out: PathBuf,
    /// Base model directory; default: the fetched MiniLM
    #[arg(long, env = "ADMIX_MODEL")]
    model: Option<PathBuf>,
    /// Your own data instead of MR: a labelled .tsv/.csv/.jsonl training file (with --dev and --test)
    #[arg(long, requires_all = ["dev", "test"])]
    train: Option<PathBuf>,
    /// Dev file (same format), with --train
    #[arg(long, requires = "train")]
    dev: Option<PathBuf>,
    /// Test file (same format), with --train
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// Sizes: `quick` (the CPU-sized main job, about 17 minutes on 2 cores) or `full` (all of MR)
    #[arg(long, default_value = "full", value_parser = ["quick", "full"])]
    preset: String,
    /// Training examples: a seeded sample of MR train (default: the preset's)
    #[arg(long)]
    train_examples: Option<usize>,
    /// Training examples attacked to make each adversarial training set (default: the preset's)
    #[arg(long)]
    adv_examples: Option<usize>,
    /// Dev examples (model selection after every epoch; default: the preset's)
    #[arg(long)]
    dev_examples: Option<usize>,
    /// Test examples (clean accuracy and the transfer sets; default: the preset's)
    #[arg(long)]
    test_examples: Option<usize>,
    /// Known attacks: one adversarial adapter each (default: the preset's)
    #[arg(long, value_enum, value_delimiter = ',')]
    known: Option<Vec<AttackKind>>,
    /// Unseen attacks: evaluated, never trained on (default: the preset's)
    #[arg(long, value_enum, value_delimiter = ',')]
    unseen: Option<Vec<AttackKind>>,
    /// Train each adversarial adapter on its adversarial examples alone (default: clean +
    /// adversarial, with the original labels)
    #[arg(long)]
    adv_only: bool,
    /// Adapter training epochs (default: the preset's)
    #[arg(long)]
    epochs: Option<usize>,
    /// Adapter learning rate (default: `admix train`'s)
    #[arg(long)]
    lr: Option<f32>,
    /// Training batch size (default: `admix train`'s)
    #[arg(long)]
    batch_size: Option<usize>,
    /// Training dropout (default: the model config's)
    #[arg(long)]
    dropout: Option<f32>,
    /// Full fine-tuning epochs (default: the preset's)
    #[arg(long)]
    full_epochs: Option<usize>,
    /// Skip the full fine-tuning baselines (full fine-tuning, full adversarial training, Model Soup)
    #[arg(long)]
    no_full: bool,
    /// AdpMixup's entropy temperature: β = softmax(−H/τ)
    #[arg(long, default_value_t = 0.1)]
    tau: f32,
    /// The τ ablation
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05,0.1,0.2,0.5,1,10")]
    taus: Vec<f32>,
    /// Step of the static β grid (the clean adapter's weight, 0 to 1)
    #[arg(long, default_value_t = 0.1)]
    beta_step: f32,
    /// Adaptive protocol: test examples attacked per method and attack (0 = skip; default: the
    /// preset's)
    #[arg(long)]
    adaptive_examples: Option<usize>,
    /// Most model queries per attacked example
    #[arg(long, default_value_t = 2000)]
    query_budget: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the models run: cpu, cuda (GPU 0) or emu (the kernels on the CPU's SIMT emulator)
    #[arg(long, value_enum, default_value = "cpu", env = "ADMIX_DEVICE")]
    device: Device,
    /// Worker threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
}

/// The sizes of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// `mr`, or the user's train/dev/test files
    #[serde(default = "mr_name")]
    pub data: String,
    pub train: Option<usize>,
    pub adv: Option<usize>,
    pub dev: Option<usize>,
    pub test: Option<usize>,
    pub known: Vec<String>,
    pub unseen: Vec<String>,
    pub epochs: usize,
    pub full_epochs: usize,
    pub adaptive: usize,
    pub adv_only: bool,
    pub full: bool,
    pub seed: u64,
    #[serde(default)]
    pub lr: Option<f32>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub dropout: Option<f32>,
}

fn mr_name() -> String {
    "mr".into()
}

fn attack_name(k: AttackKind) -> String {
    format!("{k:?}").to_lowercase()
}

impl Plan {
    fn of(a: &MixupArgs) -> Plan {
        let quick = a.preset == "quick";
        let names = |v: &[AttackKind]| v.iter().map(|&k| attack_name(k)).collect::<Vec<_>>();
        let known = a.known.clone().unwrap_or_else(|| {
            if quick {
                vec![AttackKind::Deepwordbug]
            } else {
                vec![AttackKind::Deepwordbug, AttackKind::Textbugger]
            }
        });
        let unseen = a.unseen.clone().unwrap_or_else(|| {
            if quick {
                vec![AttackKind::Pwws, AttackKind::Textbugger]
            } else {
                vec![AttackKind::Pwws, AttackKind::Textfooler]
            }
        });
        let pick = |v: Option<usize>, q: usize| v.or(quick.then_some(q));
        let data = match (&a.train, &a.dev, &a.test) {
            (Some(t), Some(d), Some(e)) => format!("{}, {}, {}", t.display(), d.display(), e.display()),
            _ => mr_name(),
        };
        Plan {
            data,
            train: pick(a.train_examples, 2000),
            adv: pick(a.adv_examples, 1000),
            dev: pick(a.dev_examples, 300),
            test: pick(a.test_examples, 300),
            known: names(&known),
            unseen: names(&unseen),
            epochs: a.epochs.unwrap_or(3),
            full_epochs: a.full_epochs.unwrap_or(if quick { 3 } else { 2 }),
            adaptive: a.adaptive_examples.unwrap_or(if quick { 20 } else { 100 }),
            adv_only: a.adv_only,
            full: !a.no_full,
            seed: a.seed,
            lr: a.lr,
            batch_size: a.batch_size,
            dropout: a.dropout,
        }
    }
}

/// Parses `args` as the flags of subcommand `name` (so every stage is exactly a command a user
/// could type).
fn parse<T: Args + FromArgMatches>(name: &'static str, args: &[String]) -> Result<T> {
    let cmd = T::augment_args(clap::Command::new(name).no_binary_name(true));
    let m = cmd.try_get_matches_from(args).with_context(|| format!("stage arguments: {}", args.join(" ")))?;
    Ok(T::from_arg_matches(&m)?)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Which stages finished, and their wall times.
#[derive(Default, Serialize, Deserialize)]
struct StageLog {
    plan: Option<Plan>,
    seconds: BTreeMap<String, f64>,
}

struct Stages {
    path: PathBuf,
    log: StageLog,
}

impl Stages {
    fn open(out: &Path, plan: &Plan) -> Result<Stages> {
        let path = out.join("stages.json");
        let log: StageLog = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?,
            Err(_) => StageLog::default(),
        };
        if let Some(p) = &log.plan {
            if p != plan {
                bail!(
                    "{} holds a run with other settings ({}); use another --out or delete it",
                    out.display(),
                    serde_json::to_string(p)?
                );
            }
        }
        let mut s = Stages { path, log };
        s.log.plan = Some(plan.clone());
        s.save()?;
        Ok(s)
    }

    fn save(&self) -> Result<()> {
        io::write_atomic(&self.path, serde_json::to_string_pretty(&self.log)?.as_bytes())
    }

    /// Runs `f` unless stage `name` finished before; returns the stage's wall time.
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        if let Some(&s) = self.log.seconds.get(name) {
            eprintln!("[mixup] {name}: done ({s:.0} s), skipped");
            return Ok(s);
        }
        eprintln!("[mixup] {name} ...");
        let t = Instant::now();
        f().with_context(|| format!("stage {name}"))?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("[mixup] {name}: {s:.0} s");
        self.log.seconds.insert(name.to_string(), s);
        self.save()?;
        Ok(s)
    }
}

/// Labelled examples as JSONL (labels by name).
fn jsonl(examples: &[Example], labels: &[String]) -> Result<String> {
    let mut s = String::new();
    for e in examples {
        s += &serde_json::to_string(&serde_json::json!({"text": e.text, "label": labels[e.label]}))?;
        s.push('\n');
    }
    Ok(s)
}

fn read_jsonl(path: &Path, labels: &[String]) -> Result<Vec<Example>> {
    train_cmd::labelled_examples(&path.display().to_string(), "", labels)
}

/// The run's train, dev and test splits and label names: MR, or the user's files.
fn splits(a: &MixupArgs) -> Result<([Vec<Example>; 3], Vec<String>)> {
    let (Some(train), Some(dev), Some(test)) = (&a.train, &a.dev, &a.test) else {
        let s = mr::load(&assets::mr_path())?;
        return Ok(([s.train, s.dev, s.test], mr::LABELS.iter().map(|s| s.to_string()).collect()));
    };
    let raw = labeled::read(train)?;
    let labels = LabelSet::from_examples(&raw, &train.display().to_string())?;
    let mut out = vec![];
    for (path, raw) in [(train, Some(raw)), (dev, None), (test, None)] {
        let raw = match raw {
            Some(r) => r,
            None => labeled::read(path)?,
        };
        let ex = labels.encode(raw, &path.display().to_string())?;
        if ex.iter().any(|e| e.pair.is_some()) {
            bail!("{}: sentence pairs cannot be attacked (the file has a text_pair column)", path.display());
        }
        out.push(ex);
    }
    let [tr, de, te]: [Vec<Example>; 3] = out.try_into().map_err(|_| anyhow::anyhow!("three splits"))?;
    Ok(([tr, de, te], labels.names))
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

/// The successful adversarial examples of an attack run, with their original labels.
fn adversarial(records: &[AttackRecord]) -> Vec<Example> {
    records
        .iter()
        .filter(|r| r.outcome == Outcome::Successful)
        .filter_map(|r| Some(Example { text: r.perturbed.clone()?, pair: None, label: r.label }))
        .collect()
}

pub fn mixup(a: MixupArgs) -> Result<()> {
    admix::init_threads(a.threads)?;
    let _ = a.device.cuda_backend()?; // a missing GPU is an error before any work
    if !(a.tau > 0.0 && a.tau.is_finite()) || a.taus.iter().any(|t| !(*t > 0.0 && t.is_finite())) {
        bail!("every τ must be positive");
    }
    if !(a.beta_step > 0.0 && a.beta_step <= 1.0) {
        bail!("--beta-step must be in (0, 1]");
    }
    let plan = Plan::of(&a);
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
    let dev_flag = format!("{:?}", a.device).to_lowercase();
    let mut common = vec!["--device".to_string(), dev_flag.clone()];
    if let Some(m) = &a.model {
        common.extend(["--model".to_string(), m.display().to_string()]);
    }
    if let Some(t) = a.threads {
        common.extend(["--threads".to_string(), t.to_string()]);
    }

    // 1. data
    let labels_file = data.join("labels.json");
    // read (and check) the data before any stage prints
    let fresh = if st.log.seconds.contains_key("data") { None } else { Some(splits(&a)?) };
    st.run("data", || {
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
    let p = |n: &str| data.join(n).display().to_string();
    let train_run = |name: &str, train: &str, dir: &Path, full: bool| -> Result<()> {
        let mut args = strings(&["--train", &p(train), "--dev", &p("dev.jsonl"), "--name", name]);
        args.extend(strings(&["--out", &dir.display().to_string(), "--seed", &plan.seed.to_string()]));
        if full {
            args.extend(strings(&["--full", "--epochs", &plan.full_epochs.to_string()]));
        } else {
            args.extend(strings(&["--adapter", "seq_bn", "--epochs", &plan.epochs.to_string()]));
            if let Some(lr) = plan.lr {
                args.extend(["--lr".to_string(), lr.to_string()]);
            }
        }
        if let Some(b) = plan.batch_size {
            args.extend(["--batch-size".to_string(), b.to_string()]);
        }
        if let Some(d) = plan.dropout {
            args.extend(["--dropout".to_string(), d.to_string()]);
        }
        args.extend(common.clone());
        train_cmd::train(parse::<TrainArgs>("train", &args)?)
    };
    let attack_run = |kind: &str, victim: &Path, input: &str, dir: &Path| -> Result<()> {
        let mut args =
            strings(&["--attack", kind, "--adapter", &victim.display().to_string(), "--data", &p(input)]);
        args.extend(strings(&[
            "--out",
            &dir.display().to_string(),
            "--query-budget",
            &a.query_budget.to_string(),
        ]));
        args.extend(strings(&["--seed", &plan.seed.to_string()]));
        args.extend(common.clone());
        attack_cmd::attack(parse::<AttackArgs>("attack", &args)?)
    };

    // 2. the clean adapter
    let clean_dir = out.join("clean");
    st.run("train-clean", || train_run("clean", "train.jsonl", &clean_dir, false))?;

    // 3. one adversarial adapter per known attack
    let train_set = read_jsonl(&data.join("train.jsonl"), &labels)?;
    let mut all_adv = vec![];
    for k in &plan.known {
        let dir = out.join(format!("attack-train-{k}"));
        st.run(&format!("attack-train-{k}"), || attack_run(k, &clean_dir, "adv-source.jsonl", &dir))?;
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
        all_adv.extend(adv);
        st.run(&format!("train-adv-{k}"), || {
            train_run(&format!("adv_{k}"), &file, &out.join(format!("adv-{k}")), false)
        })?;
    }
    let mixed: Vec<Example> = train_set.iter().cloned().chain(all_adv.iter().cloned()).collect();
    io::write_atomic(&data.join("adv-all.jsonl"), jsonl(&mixed, &labels)?.as_bytes())?;

    // 4. baselines
    if plan.known.len() > 1 {
        st.run("train-adv-all", || train_run("adv_all", "adv-all.jsonl", &out.join("adv-all"), false))?;
    }
    if plan.full {
        st.run("train-full", || train_run("full", "train.jsonl", &out.join("full"), true))?;
        st.run("train-full-adv", || train_run("full_adv", "adv-all.jsonl", &out.join("full-adv"), true))?;
    }

    // 5. transfer sets: the test examples whose attack fooled the clean model
    let mut sets = vec![];
    for k in plan.known.iter().chain(&plan.unseen) {
        let dir = out.join(format!("attack-test-{k}"));
        st.run(&format!("attack-test-{k}"), || attack_run(k, &clean_dir, "test.jsonl", &dir))?;
        sets.push((k.clone(), plan.known.contains(k), adversarial(&read_records(&dir)?)));
    }

    // 6.–7. evaluation and the adaptive attacks
    let test = read_jsonl(&data.join("test.jsonl"), &labels)?;
    let ctx = Ctx { out: &out, plan: &plan, a: &a, test: &test, sets: &sets, common: &common };
    let mut report = match a.device.cuda_backend()? {
        None => evaluate(&Cpu, &ctx, &mut st)?,
        Some(cuda) => evaluate::<Cuda>(&cuda, &ctx, &mut st)?,
    };
    report.total_seconds = st.log.seconds.values().sum();
    report.stage_seconds = st.log.seconds.clone();
    eprintln!("[mixup] this invocation: {:.0} s", started.elapsed().as_secs_f64());

    // 8. the report
    let md = report::markdown(&report);
    io::write_atomic(&out.join("report.md"), md.as_bytes())?;
    io::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let png = out.join("tradeoff.png");
    report::plot(&report, &png)?;
    println!("{md}");
    println!("plot: {}", png.display());
    println!("report: {} (JSON: {})", out.join("report.md").display(), out.join("report.json").display());
    Ok(())
}

struct Ctx<'a> {
    out: &'a Path,
    plan: &'a Plan,
    a: &'a MixupArgs,
    test: &'a [Example],
    /// (attack, known, adversarial test examples)
    sets: &'a [(String, bool, Vec<Example>)],
    common: &'a [String],
}

/// One trained model on the host.
struct Trained {
    /// the fine-tuned encoder (full fine-tuning), else the base one is used
    bert: Option<Bert<Tensor>>,
    adapter: Option<Adapter<Tensor>>,
    head: ClassificationHead<Tensor>,
    params: usize,
}

fn load_trained(dir: &Path, model: Option<&Path>) -> Result<Trained> {
    let ck = train_cmd::open_checkpoint(dir, model, None)?;
    let mut params = 0;
    let mut count = |t: &Tensor| {
        params += t.data().len();
        Ok(())
    };
    ck.ck.head.map(&mut count)?;
    if let Some(ad) = &ck.ck.adapter {
        ad.map(&mut count)?;
    }
    let bert = match &ck.ck.model_dir {
        Some(_) => {
            let b = ck.model.bert()?;
            b.map(&mut count)?;
            Some(b)
        }
        None => None,
    };
    Ok(Trained { bert, adapter: ck.ck.adapter, head: ck.ck.head, params })
}

/// The run's trained models, on the host, and what each method costs.
struct Zoo {
    base: Bert<Tensor>,
    /// clean, then one adversarial adapter per known attack
    members: Vec<Trained>,
    checkpoints: BTreeMap<String, Trained>,
}

impl Zoo {
    fn open(c: &Ctx) -> Result<Zoo> {
        let model = c.a.model.as_deref();
        let base =
            ModelDir::open(&model.map(Path::to_path_buf).unwrap_or_else(assets::default_model_dir), 64)?
                .bert()?;
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
        Ok(Zoo { base, members, checkpoints })
    }

    fn member(&self, dir: &str, c: &Ctx) -> Option<&Trained> {
        if dir == "clean" {
            return self.members.first();
        }
        let k = c.plan.known.iter().position(|k| format!("adv-{k}") == dir)?;
        self.members.get(k + 1)
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

    fn mixture<B: Backend>(&self, be: &B, rule: BetaRule) -> Result<Mixture<B>> {
        Mixture::new(be, &self.base, &self.member_refs(), rule)
    }

    /// The classifier of `spec` on a backend.
    fn build<B: Backend + 'static>(&self, be: &B, spec: &Spec, c: &Ctx) -> Result<Box<dyn Classify<B>>> {
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
        }
    }
}

/// The static β grid: the clean adapter's weight from 0 to 1, the rest split evenly over the
/// adversarial adapters.
fn beta_grid(step: f32, m: usize) -> Vec<Vec<f32>> {
    let n = (1.0 / step).round() as usize;
    (0..=n)
        .map(|i| {
            let c = (i as f32 * step).min(1.0);
            std::iter::once(c).chain(std::iter::repeat_n((1.0 - c) / (m - 1) as f32, m - 1)).collect()
        })
        .collect()
}

/// Batches of `examples` in length order: `(example indices, batch)`.
fn eval_batches(tok: &TextTokenizer, examples: &[Example]) -> Result<Vec<(Vec<usize>, TokenBatch)>> {
    if examples.is_empty() {
        return Ok(vec![]);
    }
    let (enc, _) = batches::encode(tok, examples)?;
    let lens: Vec<usize> = enc.iter().map(|e| e.ids.len()).collect();
    Ok(batches::eval_batches(&lens, 64)
        .into_iter()
        .map(|idx| {
            let (batch, _) = batches::make_batch(&enc, &idx, tok.pad_id());
            (idx, batch)
        })
        .collect())
}

fn accuracy(p: &[Vec<f32>], examples: &[Example]) -> f64 {
    if examples.is_empty() {
        return f64::NAN;
    }
    let right = p.iter().zip(examples).filter(|(p, e)| argmax(p) == e.label).count();
    100.0 * right as f64 / examples.len() as f64
}

/// Every method of the report and the sweeps, before evaluation.
fn method_rows(c: &Ctx, zoo: &Zoo, times: &BTreeMap<String, f64>) -> (Vec<MethodRow>, Vec<MethodRow>) {
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

/// What the `evaluate` stage keeps.
#[derive(Serialize, Deserialize)]
struct Evaluation {
    methods: Vec<MethodRow>,
    sweep: Vec<MethodRow>,
    attribution: Attribution,
}

/// Clean and transfer accuracy of every method, the sweeps, and the attribution table.
fn evaluation<B: Backend + 'static>(
    be: &B,
    c: &Ctx,
    zoo: &Zoo,
    times: &BTreeMap<String, f64>,
) -> Result<Evaluation> {
    let tok = &ModelDir::open(&c.a.model.clone().unwrap_or_else(assets::default_model_dir), 64)?.tokenizer;
    let (mut methods, mut sweep) = method_rows(c, zoo, times);
    let mut inputs: Vec<(String, &[Example])> = vec![("clean".into(), c.test)];
    inputs.extend(c.sets.iter().map(|(k, _, v)| (k.clone(), v.as_slice())));
    let batches: Vec<Vec<(Vec<usize>, TokenBatch)>> =
        inputs.iter().map(|(_, ex)| eval_batches(tok, ex)).collect::<Result<_>>()?;
    let bar = indicatif::ProgressBar::new((methods.len() + sweep.len()) as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} methods evaluated [{elapsed_precise}]",
    )?);
    let record = |row: &mut MethodRow, set: usize, acc: f64| {
        if set == 0 {
            row.clean = acc;
        } else {
            row.transfer.insert(inputs[set].0.clone(), acc);
        }
    };
    // single models and static mixes: one pass each
    for row in methods
        .iter_mut()
        .chain(sweep.iter_mut())
        .filter(|r| !matches!(r.spec, Spec::Entropy { .. } | Spec::MinEntropy))
    {
        let clf = zoo.build(be, &row.spec, c)?;
        for (set, bs) in batches.iter().enumerate() {
            let mut probs = vec![vec![]; inputs[set].1.len()];
            for (idx, batch) in bs {
                for (i, p) in idx.iter().zip(clf.probs(be, batch)?) {
                    probs[*i] = p;
                }
            }
            record(row, set, accuracy(&probs, inputs[set].1));
        }
        bar.inc(1);
    }
    // every β rule on one mixture: the members' passes shared
    let rules: Vec<(usize, BetaRule)> = sweep
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.spec {
            Spec::Entropy { tau } => Some((i, BetaRule::Entropy { tau })),
            Spec::MinEntropy => Some((i, BetaRule::MinEntropy)),
            _ => None,
        })
        .collect();
    let chosen =
        rules.iter().position(|(_, r)| *r == BetaRule::Entropy { tau: c.a.tau }).context("the chosen τ")?;
    let names: Vec<String> =
        std::iter::once("clean".to_string()).chain(c.plan.known.iter().map(|k| format!("adv_{k}"))).collect();
    let mut attribution = Attribution { members: names, rows: vec![] };
    let mixture = zoo.mixture(be, BetaRule::MinEntropy)?;
    let just: Vec<BetaRule> = rules.iter().map(|(_, r)| r.clone()).collect();
    for (set, bs) in batches.iter().enumerate() {
        let n = inputs[set].1.len();
        let mut probs = vec![vec![vec![]; n]; rules.len()];
        let m = mixture.m();
        let (mut counts, mut mean_beta) = (vec![0usize; m], vec![0f64; m]);
        for (idx, batch) in bs {
            for (r, out) in mixture.run_rules(be, batch, &just)?.into_iter().enumerate() {
                for (k, &i) in idx.iter().enumerate() {
                    probs[r][i] = out.probs[k].clone();
                    if r == chosen {
                        counts[argmax(&out.beta[k])] += 1;
                        for (s, v) in mean_beta.iter_mut().zip(&out.beta[k]) {
                            *s += *v as f64 / n as f64;
                        }
                    }
                }
            }
        }
        for (r, (row, _)) in rules.iter().enumerate() {
            record(&mut sweep[*row], set, accuracy(&probs[r], inputs[set].1));
        }
        let label = match set {
            0 => "clean test".to_string(),
            s => format!("{} ({})", inputs[s].0, if c.sets[s - 1].1 { "known" } else { "unseen" }),
        };
        attribution.rows.push(report::AttributionRow { set: label, examples: n, counts, mean_beta });
    }
    bar.inc(rules.len() as u64);
    bar.finish_and_clear();
    for row in methods.iter_mut().chain(sweep.iter_mut()) {
        row.finish(c.sets.iter().map(|(k, known, _)| (k.as_str(), *known)));
    }
    // the best static β (by the mean of clean and robust accuracy) and the chosen τ join the table
    let best = sweep
        .iter()
        .filter(|r| r.kind == "beta-sweep")
        .max_by(|x, y| x.score.total_cmp(&y.score))
        .context("empty β grid")?;
    let mut row = best.clone();
    if let Spec::Static { beta } = &row.spec {
        row.name = format!("AdpMixup, best static β (β_clean = {:.2})", beta[0]);
    }
    row.kind = "adpmixup".into();
    methods.push(row);
    let mut row = sweep[rules[chosen].0].clone();
    row.name = format!("AdpMixup, entropy β (τ = {})", c.a.tau);
    row.kind = "adpmixup".into();
    methods.push(row);
    Ok(Evaluation { methods, sweep, attribution })
}

fn evaluate<B: Backend + 'static>(be: &B, c: &Ctx, st: &mut Stages) -> Result<Report> {
    let zoo = Zoo::open(c)?;
    let file = c.out.join("evaluation.json");
    let times = st.log.seconds.clone();
    st.run("evaluate", || {
        let e = evaluation(be, c, &zoo, &times)?;
        io::write_atomic(&file, serde_json::to_string_pretty(&e)?.as_bytes())
    })?;
    let mut e: Evaluation = serde_json::from_str(&std::fs::read_to_string(&file)?)
        .with_context(|| format!("{}: bad evaluation", file.display()))?;

    // the adaptive protocol: every method of the table attacked directly
    if c.plan.adaptive > 0 {
        let tok =
            &ModelDir::open(&c.a.model.clone().unwrap_or_else(assets::default_model_dir), 64)?.tokenizer;
        let victims: Vec<Example> = c.test.iter().take(c.plan.adaptive).cloned().collect();
        let attacks: Vec<String> = c.plan.known.iter().chain(&c.plan.unseen).cloned().collect();
        let dir = c.out.join("adaptive");
        std::fs::create_dir_all(&dir)?;
        for row in e.methods.iter_mut() {
            let clf = zoo.build(be, &row.spec, c)?;
            for k in &attacks {
                let stage = format!("adaptive-{}-{k}", report::slug(&row.name));
                let file = dir.join(format!("{}.json", &stage["adaptive-".len()..]));
                st.run(&stage, || {
                    let mut args =
                        strings(&["--attack", k, "--adapter", &c.out.join("clean").display().to_string()]);
                    args.extend(strings(&[
                        "--query-budget",
                        &c.a.query_budget.to_string(),
                        "--seed",
                        &c.plan.seed.to_string(),
                    ]));
                    args.extend(c.common.iter().cloned());
                    let aa = parse::<AttackArgs>("attack", &args)?;
                    let kind =
                        <AttackKind as clap::ValueEnum>::from_str(k, true).map_err(anyhow::Error::msg)?;
                    let (wn, gl) = attack_cmd::resources(kind, None, None)?;
                    let records =
                        attack_cmd::black_box(be, &*clf, tok, &victims, &aa, wn.as_ref(), gl.as_ref())?;
                    io::write_atomic(&file, serde_json::to_string_pretty(&Summary::of(&records))?.as_bytes())
                })?;
                let summary: Summary = serde_json::from_str(&std::fs::read_to_string(&file)?)
                    .with_context(|| format!("{}: bad summary", file.display()))?;
                row.adaptive.insert(k.clone(), summary.accuracy_under_attack);
            }
        }
    }
    let sets = c
        .sets
        .iter()
        .map(|(k, known, v)| SetInfo { attack: k.clone(), known: *known, examples: v.len() })
        .collect();
    Ok(Report::new(
        serde_json::to_value(c.plan)?,
        c.test.len(),
        sets,
        e.methods,
        e.sweep,
        e.attribution,
        c.a.tau,
    ))
}
