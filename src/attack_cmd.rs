//! `admix attack`: run one attack on a split against a checkpoint, TextAttack-style output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use admix::assets;
use admix::attack::batching::BatchQueue;
use admix::attack::embedding::{self, Pgd};
use admix::attack::glove::{Glove, NeighbourCache};
use admix::attack::hotflip::{HotFlip, HotFlipConfig};
use admix::attack::metrics::{AttackRecord, Outcome, Summary};
use admix::attack::search::{Constraints, Ranking, Transformation};
use admix::attack::victim::{ModelScorer, Scorer, Victim};
use admix::attack::wordnet::WordNet;
use admix::attack::{self as atk, deepwordbug, pwws, textbugger, textfooler, words};
use admix::backend::cpu::Cpu;
use admix::backend::cuda::Cuda;
use admix::backend::{Backend, Device, Norm};
use admix::data::batches::{self, Encoded};
use admix::data::Example;
use admix::model::classify::Model;
use admix::model::classify::{self, argmax, Classify};
use admix::rng::Rng;

use crate::train_cmd::{self, OpenCheckpoint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    Pgd,
    Fgsm,
    Hotflip,
    Deepwordbug,
    Pwws,
    Textfooler,
    Textbugger,
}

impl AttackKind {
    /// The attack's usual name.
    pub fn title(self) -> &'static str {
        match self {
            AttackKind::Pgd => "PGD",
            AttackKind::Fgsm => "FGSM",
            AttackKind::Hotflip => "HotFlip",
            AttackKind::Deepwordbug => "DeepWordBug",
            AttackKind::Pwws => "PWWS",
            AttackKind::Textfooler => "TextFooler",
            AttackKind::Textbugger => "TextBugger",
        }
    }
}

#[derive(Args)]
pub struct AttackArgs {
    /// The attack
    #[arg(long, value_enum)]
    attack: AttackKind,
    /// The victim: a checkpoint directory (adapter + head; a run directory means its best/)
    #[arg(long)]
    adapter: PathBuf,
    /// Base model directory; default: the fetched MiniLM
    #[arg(long, env = "ADMIX_MODEL")]
    model: Option<PathBuf>,
    /// `mr`, or a labelled .tsv/.csv/.jsonl file
    #[arg(long, default_value = "mr")]
    data: String,
    /// MR split: train, dev or test
    #[arg(long, default_value = "test")]
    split: String,
    /// Attack the first N examples (default: all)
    #[arg(short = 'n', long)]
    num_examples: Option<usize>,
    /// Output directory: results.jsonl (one line per example) and summary.json
    #[arg(long)]
    out: Option<PathBuf>,
    /// Most model queries per example, the original included (text attacks)
    #[arg(long, default_value_t = 2000)]
    query_budget: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most candidates (or, for pgd/fgsm, sequences) per forward batch
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Text attacks: examples attacked at once (their queries share forward batches; HotFlip runs
    /// them in lockstep)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Text attacks: most tokens per forward batch
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch_tokens: u64,
    /// Default: the max length the checkpoint was trained with (admix.json), else 128
    #[arg(long)]
    max_len: Option<usize>,
    /// pgd/fgsm: the ball's norm
    #[arg(long, value_enum, default_value = "l2")]
    norm: Norm,
    /// pgd/fgsm: ball radius ε (per sequence)
    #[arg(long, default_value_t = 1.0)]
    eps: f32,
    /// pgd: step size α (default ε/4)
    #[arg(long)]
    alpha: Option<f32>,
    /// pgd: ascent steps
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// pgd: start from a random point of the ball
    #[arg(long)]
    random_start: bool,
    /// hotflip: most words changed, as a fraction of the words
    #[arg(long, default_value_t = 0.2)]
    max_word_frac: f32,
    /// hotflip: least embedding cosine between a new token and the one it replaces
    #[arg(long, default_value_t = 0.2)]
    min_cos: f32,
    /// hotflip: beam width (1 = greedy)
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// hotflip: flips confirmed by forward passes per beam and step
    #[arg(long, default_value_t = 8)]
    top_k: usize,
    /// pwws, textfooler: the WordNet 3.0 database directory; default: the fetched one
    #[arg(long)]
    wordnet: Option<PathBuf>,
    /// textfooler, textbugger: the GloVe 6B 50d directory; default: the fetched one
    #[arg(long)]
    glove: Option<PathBuf>,
    /// Where the model runs: cpu, cuda (GPU 0) or emu (the kernels on the CPU's SIMT emulator)
    #[arg(long, value_enum, default_value = "cpu", env = "ADMIX_DEVICE")]
    device: Device,
    /// cpu: score with bf16 GEMMs (AVX512-BF16 CPUs; bf16 inputs, f32 accumulation, as on the GPU)
    /// instead of the f32 reference
    #[arg(long)]
    cpu_bf16: bool,
    /// Worker threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
}

pub fn attack(a: AttackArgs) -> Result<()> {
    admix::init_threads(a.threads)?;
    if a.query_budget == 0 {
        bail!("the query budget must be at least 1 (the original input is a query)");
    }
    if a.cpu_bf16 {
        if a.device != Device::Cpu {
            bail!("--cpu-bf16 is for --device cpu (the CUDA path is bf16 already)");
        }
        admix::backend::cpu::bf16::enable()?;
    }
    let OpenCheckpoint { model: model_dir, ck, .. } =
        train_cmd::open_checkpoint(&a.adapter, a.model.as_deref(), a.max_len)?;
    let mut examples = train_cmd::labelled_examples(&a.data, &a.split, &ck.labels)?;
    if examples.iter().any(|e| e.pair.is_some()) {
        bail!("attacks on sentence pairs are not supported (the data has a text_pair column)");
    }
    if let Some(n) = a.num_examples {
        examples.truncate(n);
    }
    if examples.is_empty() {
        bail!("no examples to attack");
    }
    let (wordnet, glove) = resources(a.attack, a.wordnet.as_deref(), a.glove.as_deref())?;
    let host_bert = model_dir.bert()?;
    let word_table = host_bert.emb.word.clone();
    let started = Instant::now();
    let records = match a.device.cuda_backend()? {
        None => {
            let m = victim_model(&Cpu, &host_bert, &ck)?;
            run(&Cpu, &m, &model_dir, &word_table, &examples, &a, wordnet.as_ref(), glove.as_ref())?
        }
        Some(cuda) => {
            let m = victim_model(&cuda, &host_bert, &ck)?;
            run::<Cuda>(&cuda, &m, &model_dir, &word_table, &examples, &a, wordnet.as_ref(), glove.as_ref())?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let summary = Summary::of(&records);
    let queries: usize = records.iter().map(|r| r.queries).sum();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {} ({} examples, {:.1} s, {:.1} examples/s, {:.0} queries/s)",
        a.attack.title(),
        what(&a),
        records.len(),
        secs,
        records.len() as f64 / secs,
        queries as f64 / secs
    )?;
    write!(out, "{}", summary.table())?;
    if let Some(dir) = &a.out {
        write_results(dir, &records, &summary, &a, secs)?;
        writeln!(out, "results in {}", dir.display())?;
    }
    Ok(())
}

/// The lexical resources an attack needs: WordNet (PWWS, TextFooler), GloVe (TextFooler,
/// TextBugger); default paths: the fetched ones.
pub fn resources(
    kind: AttackKind,
    wordnet: Option<&Path>,
    glove: Option<&Path>,
) -> Result<(Option<WordNet>, Option<Glove>)> {
    let wn = match kind {
        AttackKind::Pwws | AttackKind::Textfooler => {
            Some(WordNet::load(&wordnet.map(Path::to_path_buf).unwrap_or_else(assets::wordnet_dir))?)
        }
        _ => None,
    };
    let gl = match kind {
        AttackKind::Textfooler | AttackKind::Textbugger => {
            Some(Glove::load(&glove.map(Path::to_path_buf).unwrap_or_else(assets::glove_dir))?)
        }
        _ => None,
    };
    Ok((wn, gl))
}

fn what(a: &AttackArgs) -> String {
    if a.data == "mr" {
        format!("MR {}", a.split)
    } else {
        a.data.clone()
    }
}

/// The checkpoint's classifier (encoder, adapter, head) on a backend, frozen.
fn victim_model<B: Backend>(
    be: &B,
    bert: &admix::model::bert::Bert<admix::weights::Tensor>,
    ck: &admix::train::checkpoint::Loaded,
) -> Result<Model<B>> {
    let adapter = ck.adapter.as_ref().map(|x| x.to_backend(be)).transpose()?;
    Model::new(be, bert.to_backend(be)?, adapter, ck.head.to_backend(be)?, false)
}

fn write_results(
    dir: &Path,
    records: &[AttackRecord],
    summary: &Summary,
    a: &AttackArgs,
    secs: f64,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut lines = String::new();
    for r in records {
        lines += &serde_json::to_string(r)?;
        lines.push('\n');
    }
    admix::io::write_atomic(&dir.join("results.jsonl"), lines.as_bytes())?;
    let json = serde_json::json!({
        "attack": a.attack.title(),
        "data": what(a),
        "checkpoint": a.adapter,
        "device": format!("{:?}", a.device).to_lowercase(),
        "cpu_bf16": a.cpu_bf16,
        "seconds": secs,
        "summary": summary,
    });
    admix::io::write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&json)?.as_bytes())
}

fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    bar
}

/// Outcomes so far, for the progress bar.
#[derive(Default)]
struct Tally {
    successful: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    fn add(&mut self, bar: &ProgressBar, records: &[AttackRecord]) {
        for r in records {
            match r.outcome {
                Outcome::Successful => self.successful += 1,
                Outcome::Failed => self.failed += 1,
                Outcome::Skipped => self.skipped += 1,
            }
        }
        bar.inc(records.len() as u64);
        bar.set_message(format!(
            "{} successful, {} failed, {} skipped",
            self.successful, self.failed, self.skipped
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn run<B: Backend>(
    be: &B,
    m: &Model<B>,
    model_dir: &admix::model::ModelDir,
    word_table: &admix::weights::Tensor,
    examples: &[Example],
    a: &AttackArgs,
    wordnet: Option<&WordNet>,
    glove: Option<&Glove>,
) -> Result<Vec<AttackRecord>> {
    let tok = &model_dir.tokenizer;
    let bar = progress(examples.len());
    let mut tally = Tally::default();
    let mut records = Vec::with_capacity(examples.len());
    let budget = a.query_budget as usize;
    match a.attack {
        AttackKind::Pgd | AttackKind::Fgsm => {
            let cfg = match a.attack {
                AttackKind::Fgsm => Pgd::fgsm(a.norm, a.eps),
                _ => Pgd {
                    norm: a.norm,
                    eps: a.eps,
                    alpha: a.alpha.unwrap_or(a.eps / 4.0),
                    steps: a.steps,
                    random_start: a.random_start,
                },
            };
            let (data, _) = batches::encode(tok, examples)?;
            let mut rng = Rng::new(a.seed);
            for chunk in (0..examples.len()).collect::<Vec<_>>().chunks(a.batch_size as usize) {
                let recs = embedding_batch(be, m, &data, chunk, examples, tok.pad_id(), &cfg, &mut rng)?;
                tally.add(&bar, &recs);
                records.extend(recs);
            }
        }
        AttackKind::Hotflip => {
            // examples run in lockstep, `--workers` at a time; forward batches of about
            // `--max-batch-tokens` tokens (MR sentences are ~30 tokens)
            let rows = (a.max_batch_tokens as usize / 32).max(1);
            let scorer = ModelScorer { be, model: m, pad_id: tok.pad_id(), batch_size: rows };
            let mut victim = Victim::new(&scorer, tok)?;
            let tokens =
                (0..word_table.shape()[0]).map(|v| tok.id_to_token(v as u32).unwrap_or_default()).collect();
            let cfg = HotFlipConfig {
                max_word_frac: a.max_word_frac,
                min_cos: a.min_cos,
                beam: a.beam,
                top_k: a.top_k,
            };
            let hotflip = HotFlip::new(be, word_table, tokens, cfg)?;
            let items: Vec<(usize, &str, usize)> =
                examples.iter().enumerate().map(|(i, e)| (i, e.text.as_str(), e.label)).collect();
            for chunk in items.chunks(a.workers as usize) {
                let recs = hotflip.attack_all(be, m, &mut victim, chunk, budget)?;
                tally.add(&bar, &recs);
                records.extend(recs);
            }
        }
        _ => {
            bar.finish_and_clear();
            return black_box(be, m, tok, examples, a, wordnet, glove);
        }
    }
    bar.finish_and_clear();
    Ok(records)
}

/// A black-box text attack (DeepWordBug, PWWS, TextFooler, TextBugger) on `examples` against any
/// classifier: a checkpoint's model, or a system such as an AdpMixup mixture, queried as a whole.
pub fn black_box<B: Backend>(
    be: &B,
    clf: &dyn Classify<B>,
    tok: &admix::model::tokenizer::TextTokenizer,
    examples: &[Example],
    a: &AttackArgs,
    wordnet: Option<&WordNet>,
    glove: Option<&Glove>,
) -> Result<Vec<AttackRecord>> {
    let bar = progress(examples.len());
    let budget = a.query_budget as usize;
    let records = match a.attack {
        AttackKind::Pgd | AttackKind::Fgsm | AttackKind::Hotflip => {
            bail!("{} needs gradients: it is not a black-box attack", a.attack.title())
        }
        kind => {
            let scorer = ModelScorer { be, model: clf, pad_id: tok.pad_id(), batch_size: usize::MAX };
            let (k, min_cos, vocab) = match kind {
                AttackKind::Textfooler => (textfooler::NEIGHBOURS, textfooler::MIN_COS, textfooler::VOCAB),
                _ => (textbugger::NEIGHBOURS, -1.0, textbugger::VOCAB),
            };
            let neighbours = glove.map(|g| NeighbourCache::new(g, k, min_cos, vocab));
            concurrently(&scorer, tok, examples, a, &bar, |victim, i, e| {
                let rng = Rng::new(a.seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                match kind {
                    AttackKind::Deepwordbug => {
                        let mut t = deepwordbug::CharEdits { rng };
                        recipe(victim, i, e, budget, &mut t, deepwordbug::RANKING, &deepwordbug::CONSTRAINTS)
                    }
                    AttackKind::Pwws => {
                        let mut t = pwws::Synonyms::new(wordnet.expect("WordNet loaded for pwws"));
                        recipe(victim, i, e, budget, &mut t, pwws::RANKING, &pwws::CONSTRAINTS)
                    }
                    AttackKind::Textfooler => {
                        let cache = neighbours.as_ref().expect("GloVe loaded for textfooler");
                        let mut t =
                            textfooler::Neighbours { cache, wordnet: wordnet.expect("WordNet loaded") };
                        recipe(victim, i, e, budget, &mut t, textfooler::RANKING, &textfooler::CONSTRAINTS)
                    }
                    _ => {
                        let cache = neighbours.as_ref().expect("GloVe loaded for textbugger");
                        let mut t = textbugger::Bugs { cache, rng };
                        recipe(victim, i, e, budget, &mut t, textbugger::RANKING, &textbugger::CONSTRAINTS)
                    }
                }
            })?
        }
    };
    bar.finish_and_clear();
    Ok(records)
}

fn recipe(
    victim: &mut Victim,
    i: usize,
    e: &Example,
    budget: usize,
    t: &mut dyn Transformation,
    ranking: Ranking,
    c: &Constraints,
) -> Result<AttackRecord> {
    atk::attack_text(victim, i, &e.text, e.label, budget, t, ranking, c)
}

/// Attacks the examples on `--workers` threads at once, their model queries batched together by a
/// [`BatchQueue`] that this thread serves with `scorer`. Records come back in example order.
fn concurrently(
    scorer: &dyn Scorer,
    tok: &admix::model::tokenizer::TextTokenizer,
    examples: &[Example],
    a: &AttackArgs,
    bar: &ProgressBar,
    attack_one: impl Fn(&mut Victim, usize, &Example) -> Result<AttackRecord> + Sync,
) -> Result<Vec<AttackRecord>> {
    let workers = (a.workers as usize).min(examples.len()).max(1);
    let queue = BatchQueue::new(workers, a.max_batch_tokens as usize);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done: Mutex<Vec<Option<AttackRecord>>> = Mutex::new(vec![None; examples.len()]);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let _member = queue.member();
                let mut victim = match Victim::new(&queue, tok) {
                    Ok(v) => v,
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        return;
                    }
                };
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= examples.len() {
                        break;
                    }
                    match attack_one(&mut victim, i, &examples[i]) {
                        Ok(r) => {
                            tally
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .add(bar, std::slice::from_ref(&r));
                            done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            let e = e.context(format!("example {i}"));
                            first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                }
            });
        }
        queue.serve(scorer);
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(done
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every example attacked"))
        .collect())
}

/// PGD/FGSM on one batch of examples: the clean forward decides who is skipped, the rest are
/// attacked together.
#[allow(clippy::too_many_arguments)]
fn embedding_batch<B: Backend>(
    be: &B,
    m: &Model<B>,
    data: &[Encoded],
    idx: &[usize],
    examples: &[Example],
    pad: u32,
    cfg: &Pgd,
    rng: &mut Rng,
) -> Result<Vec<AttackRecord>> {
    let (batch, labels) = batches::make_batch(data, idx, pad);
    let (_, cols, clean) = be.download(&m.logits(be, &batch)?)?;
    let clean: Vec<Vec<f32>> = clean.chunks(cols).map(|l| classify::prediction(l.to_vec()).probs).collect();
    let attacked: Vec<usize> = (0..idx.len()).filter(|&k| argmax(&clean[k]) == labels[k] as usize).collect();
    let mut adv: Vec<Option<(Vec<f32>, f32)>> = vec![None; idx.len()];
    if !attacked.is_empty() {
        let sel: Vec<usize> = attacked.iter().map(|&k| idx[k]).collect();
        let (ab, al) = batches::make_batch(data, &sel, pad);
        let out = embedding::pgd(be, m, &ab, &al, cfg, rng)?;
        let (_, h, delta) = be.download(&out.delta)?;
        let norms = embedding::norms(&delta, &ab, h, cfg.norm);
        for (j, &k) in attacked.iter().enumerate() {
            adv[k] = Some((classify::prediction(out.logits[j].clone()).probs, norms[j]));
        }
    }
    Ok(idx
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let label = labels[k] as usize;
            let words = words::Text::parse(&examples[i].text).num_words();
            let (probs, norm, outcome) = match &adv[k] {
                None => (clean[k].clone(), None, Outcome::Skipped),
                Some((p, n)) => {
                    let o = if argmax(p) != label { Outcome::Successful } else { Outcome::Failed };
                    (p.clone(), Some(*n), o)
                }
            };
            AttackRecord {
                index: i,
                original: examples[i].text.clone(),
                perturbed: None,
                label,
                original_prediction: argmax(&clean[k]),
                perturbed_prediction: argmax(&probs),
                original_probs: clean[k].clone(),
                perturbed_probs: probs,
                outcome,
                // the clean forward, K gradient passes and the final forward
                queries: if outcome == Outcome::Skipped { 1 } else { cfg.steps + 2 },
                words,
                perturbed_words: 0,
                delta_norm: norm,
            }
        })
        .collect())
}
