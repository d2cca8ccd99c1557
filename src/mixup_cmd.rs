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

use admix::adapter::mix::{mix_adapters, mix_encoders, mix_heads, BetaRule};
use admix::adapter::{Adapter, ClassificationHead};
use admix::attack::metrics::{AttackRecord, Outcome, Summary};
use admix::attack::victim::{argmax, Classify};
use admix::backend::cpu::Cpu;
use admix::backend::cuda::Cuda;
use admix::backend::{Backend, Device};
use admix::data::{mr, Example};
use admix::model::bert::Bert;
use admix::model::tokenizer::TextTokenizer;
use admix::model::weights::Tensor;
use admix::model::ModelDir;
use admix::pipeline::mixture::Mixture;
use admix::pipeline::report::{self, Attribution, MethodRow, Report, SetInfo};
use admix::train::batches;
use admix::train::model::Model;
use admix::train::rng::Rng;
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
    /// Sizes: `quick` (the CPU-sized main job, about 15 minutes on 2 cores) or `full` (all of MR)
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
        Plan {
            train: pick(a.train_examples, 2000),
            adv: pick(a.adv_examples, 1000),
            dev: pick(a.dev_examples, 300),
            test: pick(a.test_examples, 300),
            known: names(&known),
            unseen: names(&unseen),
            epochs: a.epochs.unwrap_or(3),
            full_epochs: a.full_epochs.unwrap_or(if quick { 1 } else { 2 }),
            adaptive: a.adaptive_examples.unwrap_or(if quick { 20 } else { 100 }),
            adv_only: a.adv_only,
            full: !a.no_full,
            seed: a.seed,
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

    fn seconds(&self, name: &str) -> f64 {
        self.log.seconds.get(name).copied().unwrap_or(0.0)
    }
}

/// A labelled example as a JSONL line (labels by name).
fn jsonl(examples: &[Example]) -> Result<String> {
    let mut s = String::new();
    for e in examples {
        s += &serde_json::to_string(&serde_json::json!({"text": e.text, "label": mr::LABELS[e.label]}))?;
        s.push('\n');
    }
    Ok(s)
}

fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let labels: Vec<String> = mr::LABELS.iter().map(|s| s.to_string()).collect();
    train_cmd::labelled_examples(&path.display().to_string(), "", &labels)
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
    train_cmd::set_threads(a.threads)?;
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
    st.run("data", || {
        let s = mr::load(&assets::mr_path())?;
        std::fs::create_dir_all(&data)?;
        let train = sample(s.train, plan.train, plan.seed);
        let adv_source = sample(train.clone(), plan.adv, plan.seed ^ 1);
        for (name, v) in [
            ("train", train),
            ("adv-source", adv_source),
            ("dev", sample(s.dev, plan.dev, plan.seed ^ 2)),
            ("test", sample(s.test, plan.test, plan.seed ^ 3)),
        ] {
            io::write_atomic(&data.join(format!("{name}.jsonl")), jsonl(&v)?.as_bytes())?;
        }
        Ok(())
    })?;
    let p = |n: &str| data.join(n).display().to_string();
    let train_run = |name: &str, train: &str, dir: &Path, full: bool| -> Result<()> {
        let mut args = strings(&["--train", &p(train), "--dev", &p("dev.jsonl"), "--name", name]);
        args.extend(strings(&["--out", &dir.display().to_string(), "--seed", &plan.seed.to_string()]));
        if full {
            args.extend(strings(&["--full", "--epochs", &plan.full_epochs.to_string()]));
        } else {
            args.extend(strings(&["--adapter", "seq_bn", "--epochs", &plan.epochs.to_string()]));
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
    let train_set = read_jsonl(&data.join("train.jsonl"))?;
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
        io::write_atomic(&data.join(&file), jsonl(&set)?.as_bytes())?;
        all_adv.extend(adv);
        st.run(&format!("train-adv-{k}"), || {
            train_run(&format!("adv_{k}"), &file, &out.join(format!("adv-{k}")), false)
        })?;
    }
    let mixed: Vec<Example> = train_set.iter().cloned().chain(all_adv.iter().cloned()).collect();
    io::write_atomic(&data.join("adv-all.jsonl"), jsonl(&mixed)?.as_bytes())?;

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
    let test = read_jsonl(&data.join("test.jsonl"))?;
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
    bert: Option<Bert<Tensor>>,
    adapter: Option<Adapter<Tensor>>,
    head: ClassificationHead<Tensor>,
    params: usize,
}

fn count(t: &Tensor, n: &mut usize) -> Result<()> {
    *n += t.data().len();
    Ok(())
}

fn load_trained(dir: &Path, model: Option<&Path>) -> Result<Trained> {
    let ck = train_cmd::open_checkpoint(dir, model, None)?;
    let mut params = 0;
    ck.ck.head.map(|t| count(t, &mut params))?;
    if let Some(ad) = &ck.ck.adapter {
        ad.map(|t| count(t, &mut params))?;
    }
    let bert = match &ck.ck.model_dir {
        Some(_) => {
            let b = ck.model.bert()?;
            b.map(|t| count(t, &mut params))?;
            Some(b)
        }
        None => None,
    };
    Ok(Trained { bert, adapter: ck.ck.adapter, head: ck.ck.head, params })
}

/// A method of the report, on a backend.
struct System<B: Backend> {
    row: MethodRow,
    clf: Box<dyn Classify<B>>,
}

fn single<B: Backend + 'static>(be: &B, base: &Bert<Tensor>, t: &Trained) -> Result<Box<dyn Classify<B>>> {
    let bert = t.bert.as_ref().unwrap_or(base).to_backend(be)?;
    let adapter = t.adapter.as_ref().map(|x| x.to_backend(be)).transpose()?;
    Ok(Box::new(Model::new(be, bert, adapter, t.head.to_backend(be)?, false)?))
}

/// Class probabilities of `examples` under `clf`, in example order.
fn probs<B: Backend>(
    be: &B,
    clf: &dyn Classify<B>,
    tok: &TextTokenizer,
    examples: &[Example],
) -> Result<Vec<Vec<f32>>> {
    if examples.is_empty() {
        return Ok(vec![]);
    }
    let (enc, _) = batches::encode(tok, examples)?;
    let lens: Vec<usize> = enc.iter().map(|e| e.ids.len()).collect();
    let mut out = vec![vec![]; examples.len()];
    for idx in batches::eval_batches(&lens, 64) {
        let (batch, _) = batches::make_batch(&enc, &idx, tok.pad_id());
        for (i, p) in idx.iter().zip(clf.probs(be, &batch)?) {
            out[*i] = p;
        }
    }
    Ok(out)
}

fn accuracy(p: &[Vec<f32>], examples: &[Example]) -> f64 {
    if examples.is_empty() {
        return f64::NAN;
    }
    let right = p.iter().zip(examples).filter(|(p, e)| argmax(p) == e.label).count();
    100.0 * right as f64 / examples.len() as f64
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

fn evaluate<B: Backend + 'static>(be: &B, c: &Ctx, st: &mut Stages) -> Result<Report> {
    let model = ModelDir::open(&c.a.model.clone().unwrap_or_else(assets::default_model_dir), 64)?;
    let tok = &model.tokenizer;
    let base = model.bert()?;
    let clean = load_trained(&c.out.join("clean"), c.a.model.as_deref())?;
    let advs: Vec<(String, Trained)> = c
        .plan
        .known
        .iter()
        .map(|k| Ok((k.clone(), load_trained(&c.out.join(format!("adv-{k}")), c.a.model.as_deref())?)))
        .collect::<Result<_>>()?;
    let mut members: Vec<(&Adapter<Tensor>, &ClassificationHead<Tensor>)> = vec![];
    for t in std::iter::once(&clean).chain(advs.iter().map(|(_, t)| t)) {
        members.push((t.adapter.as_ref().context("an adapter checkpoint without an adapter")?, &t.head));
    }
    let m = members.len();
    let names: Vec<String> =
        std::iter::once("clean".to_string()).chain(c.plan.known.iter().map(|k| format!("adv_{k}"))).collect();
    let adv_cost: f64 = c
        .plan
        .known
        .iter()
        .map(|k| st.seconds(&format!("attack-train-{k}")) + st.seconds(&format!("train-adv-{k}")))
        .sum();
    let clean_cost = st.seconds("train-clean");
    let all_params: usize = clean.params + advs.iter().map(|(_, t)| t.params).sum::<usize>();
    let row = |name: &str, kind: &str, params: usize, secs: f64| MethodRow::new(name, kind, params, secs);
    let mut systems: Vec<System<B>> = vec![];
    let mut sweep: Vec<System<B>> = vec![];

    systems.push(System {
        row: row("clean adapter", "baseline", clean.params, clean_cost),
        clf: single(be, &base, &clean)?,
    });
    for (k, t) in &advs {
        let secs =
            clean_cost + st.seconds(&format!("attack-train-{k}")) + st.seconds(&format!("train-adv-{k}"));
        systems.push(System {
            row: row(&format!("adversarial adapter ({k})"), "baseline", t.params, secs),
            clf: single(be, &base, t)?,
        });
    }
    if m > 2 {
        let t = load_trained(&c.out.join("adv-all"), c.a.model.as_deref())?;
        let secs = clean_cost + adv_cost
            - c.plan.known.iter().map(|k| st.seconds(&format!("train-adv-{k}"))).sum::<f64>()
            + st.seconds("train-adv-all");
        systems.push(System {
            row: row("adversarial training, adapter (all attacks)", "baseline", t.params, secs),
            clf: single(be, &base, &t)?,
        });
    }
    if c.plan.full {
        let full = load_trained(&c.out.join("full"), c.a.model.as_deref())?;
        let full_adv = load_trained(&c.out.join("full-adv"), c.a.model.as_deref())?;
        let gen: f64 = c.plan.known.iter().map(|k| st.seconds(&format!("attack-train-{k}"))).sum();
        let (s_full, s_adv) = (st.seconds("train-full"), clean_cost + gen + st.seconds("train-full-adv"));
        systems.push(System {
            row: row("full fine-tuning", "baseline", full.params, s_full),
            clf: single(be, &base, &full)?,
        });
        systems.push(System {
            row: row("full adversarial training", "baseline", full_adv.params, s_adv),
            clf: single(be, &base, &full_adv)?,
        });
        let soup = Trained {
            bert: Some(mix_encoders(
                &[full.bert.as_ref().context("no encoder")?, full_adv.bert.as_ref().context("no encoder")?],
                &[0.5, 0.5],
            )?),
            adapter: None,
            head: mix_heads(&[&full.head, &full_adv.head], &[0.5, 0.5])?,
            params: full.params + full_adv.params,
        };
        systems.push(System {
            row: row("Model Soup (full + full adversarial)", "baseline", soup.params, s_full + s_adv),
            clf: single(be, &base, &soup)?,
        });
    }
    let uniform = vec![1.0 / m as f32; m];
    let soup = Trained {
        bert: None,
        adapter: Some(mix_adapters(&members.iter().map(|x| x.0).collect::<Vec<_>>(), &uniform)?),
        head: mix_heads(&members.iter().map(|x| x.1).collect::<Vec<_>>(), &uniform)?,
        params: all_params,
    };
    systems.push(System {
        row: row("Adapter Soup (uniform)", "baseline", all_params, clean_cost + adv_cost),
        clf: single(be, &base, &soup)?,
    });
    let mix_cost = clean_cost + adv_cost;
    for beta in beta_grid(c.a.beta_step, m) {
        let t = Trained {
            bert: None,
            adapter: Some(mix_adapters(&members.iter().map(|x| x.0).collect::<Vec<_>>(), &beta)?),
            head: mix_heads(&members.iter().map(|x| x.1).collect::<Vec<_>>(), &beta)?,
            params: all_params,
        };
        let label = format!("static β_clean = {:.2}", beta[0]);
        let mut r = row(&label, "beta-sweep", all_params, mix_cost);
        r.beta = Some(beta.clone());
        sweep.push(System { row: r, clf: single(be, &base, &t)? });
    }
    let mut taus = c.a.taus.clone();
    if !taus.contains(&c.a.tau) {
        taus.push(c.a.tau);
    }
    taus.sort_by(f32::total_cmp);
    for &tau in &taus {
        let mut r = row(&format!("entropy β, τ = {tau}"), "tau-sweep", all_params, mix_cost);
        r.tau = Some(tau);
        sweep.push(System {
            row: r,
            clf: Box::new(Mixture::new(be, &base, &members, BetaRule::Entropy { tau })?),
        });
    }
    let mut r = row("min-entropy β (τ → 0)", "tau-sweep", all_params, mix_cost);
    r.tau = Some(0.0);
    sweep.push(System { row: r, clf: Box::new(Mixture::new(be, &base, &members, BetaRule::MinEntropy)?) });

    // clean and transfer accuracy of everything
    let bar = indicatif::ProgressBar::new((systems.len() + sweep.len()) as u64);
    bar.set_message("evaluating");
    for s in systems.iter_mut().chain(sweep.iter_mut()) {
        s.row.clean = accuracy(&probs(be, &*s.clf, tok, c.test)?, c.test);
        for (k, _, set) in c.sets {
            s.row.transfer.insert(k.clone(), accuracy(&probs(be, &*s.clf, tok, set)?, set));
        }
        s.row.finish(c.sets.iter().map(|(k, known, _)| (k.as_str(), *known)));
        bar.inc(1);
    }
    bar.finish_and_clear();
    // the best static β (by the mean of clean and robust accuracy) and the chosen τ join the table
    let best = sweep
        .iter()
        .filter(|s| s.row.kind == "beta-sweep")
        .max_by(|x, y| x.row.score.total_cmp(&y.row.score))
        .context("empty β grid")?;
    let beta = best.row.beta.clone().context("a β row without β")?;
    let t = Trained {
        bert: None,
        adapter: Some(mix_adapters(&members.iter().map(|x| x.0).collect::<Vec<_>>(), &beta)?),
        head: mix_heads(&members.iter().map(|x| x.1).collect::<Vec<_>>(), &beta)?,
        params: all_params,
    };
    let mut r = best.row.clone();
    r.name = format!("AdpMixup, best static β (β_clean = {:.2})", beta[0]);
    r.kind = "adpmixup".into();
    systems.push(System { row: r, clf: single(be, &base, &t)? });
    let chosen = sweep.iter().find(|s| s.row.tau == Some(c.a.tau)).context("the chosen τ")?;
    let mut r = chosen.row.clone();
    r.name = format!("AdpMixup, entropy β (τ = {})", c.a.tau);
    r.kind = "adpmixup".into();
    let mix = Mixture::new(be, &base, &members, BetaRule::Entropy { tau: c.a.tau })?;

    // attribution: which member gets the largest β, per input set
    let mut attribution = Attribution { members: names.clone(), rows: vec![] };
    for (set, examples) in std::iter::once(("clean test".to_string(), c.test.to_vec())).chain(
        c.sets
            .iter()
            .map(|(k, known, v)| (format!("{k} ({})", if *known { "known" } else { "unseen" }), v.clone())),
    ) {
        let mut counts = vec![0usize; m];
        let mut mean_beta = vec![0f64; m];
        if !examples.is_empty() {
            let (enc, _) = batches::encode(tok, &examples)?;
            let lens: Vec<usize> = enc.iter().map(|e| e.ids.len()).collect();
            for idx in batches::eval_batches(&lens, 64) {
                let (batch, _) = batches::make_batch(&enc, &idx, tok.pad_id());
                for b in mix.betas(be, &batch)? {
                    counts[argmax(&b)] += 1;
                    for (s, v) in mean_beta.iter_mut().zip(&b) {
                        *s += *v as f64 / examples.len() as f64;
                    }
                }
            }
        }
        attribution.rows.push(report::AttributionRow { set, examples: examples.len(), counts, mean_beta });
    }
    systems.push(System { row: r, clf: Box::new(mix) });

    // the adaptive protocol: every method of the table attacked directly
    if c.plan.adaptive > 0 {
        let victims: Vec<Example> = c.test.iter().take(c.plan.adaptive).cloned().collect();
        let attacks: Vec<String> = c.plan.known.iter().chain(&c.plan.unseen).cloned().collect();
        let dir = c.out.join("adaptive");
        std::fs::create_dir_all(&dir)?;
        for s in systems.iter_mut() {
            for k in &attacks {
                let stage = format!("adaptive-{}-{k}", report::slug(&s.row.name));
                let file = dir.join(format!("{}.json", &stage["adaptive-".len()..]));
                let clf = &*s.clf;
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
                        attack_cmd::black_box(be, clf, tok, &victims, &aa, wn.as_ref(), gl.as_ref())?;
                    let summary = Summary::of(&records);
                    io::write_atomic(&file, serde_json::to_string_pretty(&summary)?.as_bytes())
                })?;
                let summary: Summary = serde_json::from_str(&std::fs::read_to_string(&file)?)
                    .with_context(|| format!("{}: bad summary", file.display()))?;
                s.row.adaptive.insert(k.clone(), summary.accuracy_under_attack);
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
        systems.into_iter().map(|s| s.row).collect(),
        sweep.into_iter().map(|s| s.row).collect(),
        attribution,
        c.a.tau,
    ))
}
