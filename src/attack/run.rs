//! Running an attack over many examples: the gradient attacks batch by batch, the black-box
//! recipes on many worker threads whose queries share forward batches ([`BatchQueue`]), with a
//! progress bar of the outcomes so far. [`AttackConfig`] says which attack and how.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::batching::BatchQueue;
use super::embedding::{self, Pgd};
use super::glove::{Glove, NeighbourCache};
use super::hotflip::{HotFlip, HotFlipConfig};
use super::metrics::{AttackRecord, Outcome};
use super::search::{Constraints, Ranking, Transformation};
use super::victim::{ModelScorer, Scorer, Victim};
use super::wordnet::WordNet;
use super::{deepwordbug, pwws, textbugger, textfooler, words};
use crate::backend::{Backend, Norm};
use crate::data::batches::{self, Encoded};
use crate::data::Example;
use crate::model::classify::{self, argmax, Classify, Model};
use crate::model::tokenizer::TextTokenizer;
use crate::rng::Rng;
use crate::weights::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

impl crate::Choice for AttackKind {
    const WHAT: &'static str = "attack";
    const ALL: &'static [Self] = &[
        AttackKind::Pgd,
        AttackKind::Fgsm,
        AttackKind::Hotflip,
        AttackKind::Deepwordbug,
        AttackKind::Pwws,
        AttackKind::Textfooler,
        AttackKind::Textbugger,
    ];
    fn name(self) -> &'static str {
        match self {
            AttackKind::Pgd => "pgd",
            AttackKind::Fgsm => "fgsm",
            AttackKind::Hotflip => "hotflip",
            AttackKind::Deepwordbug => "deepwordbug",
            AttackKind::Pwws => "pwws",
            AttackKind::Textfooler => "textfooler",
            AttackKind::Textbugger => "textbugger",
        }
    }
}

impl AttackKind {
    /// Whether the attack only queries the classifier (else it needs a single model's gradients).
    pub fn is_black_box(self) -> bool {
        !matches!(self, AttackKind::Pgd | AttackKind::Fgsm | AttackKind::Hotflip)
    }
}

/// How an attack runs: the attack, its budget and seed, how its queries are batched, and the
/// settings of the gradient attacks (`admix attack`'s flags, typed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackConfig {
    pub kind: AttackKind,
    /// most model queries per example, the original included (text attacks)
    pub query_budget: u64,
    pub seed: u64,
    /// most candidates (or, for pgd/fgsm, sequences) per forward batch
    pub batch_size: usize,
    /// text attacks: examples attacked at once
    pub workers: usize,
    /// text attacks: most tokens per forward batch
    pub max_batch_tokens: usize,
    /// pgd/fgsm: the ball's norm, radius ε, step α (default ε/4), steps, random start
    pub norm: Norm,
    pub eps: f32,
    pub alpha: Option<f32>,
    pub steps: usize,
    pub random_start: bool,
    /// hotflip: most words changed (fraction), least cosine to the replaced token, beam, top-k
    pub max_word_frac: f32,
    pub min_cos: f32,
    pub beam: usize,
    pub top_k: usize,
}

impl AttackConfig {
    /// `kind` with `admix attack`'s defaults.
    pub fn new(kind: AttackKind) -> AttackConfig {
        AttackConfig {
            kind,
            query_budget: 2000,
            seed: 42,
            batch_size: 32,
            workers: 256,
            max_batch_tokens: 8192,
            norm: Norm::L2,
            eps: 1.0,
            alpha: None,
            steps: 10,
            random_start: false,
            max_word_frac: 0.2,
            min_cos: 0.2,
            beam: 1,
            top_k: 8,
        }
    }

    /// Refuses settings no run can use.
    pub fn check(&self) -> Result<()> {
        if self.query_budget == 0 {
            bail!("the query budget must be at least 1 (the original input is a query)");
        }
        if self.batch_size == 0 || self.workers == 0 || self.max_batch_tokens == 0 {
            bail!("batch size, workers and max batch tokens must be at least 1");
        }
        Ok(())
    }
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
            Some(WordNet::load(&wordnet.map(Path::to_path_buf).unwrap_or_else(crate::assets::wordnet_dir))?)
        }
        _ => None,
    };
    let gl = match kind {
        AttackKind::Textfooler | AttackKind::Textbugger => {
            Some(Glove::load(&glove.map(Path::to_path_buf).unwrap_or_else(crate::assets::glove_dir))?)
        }
        _ => None,
    };
    Ok((wn, gl))
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

/// Runs the attack of `a` on `examples` against a classifier. The gradient attacks (PGD, FGSM,
/// HotFlip) need a single `model`; the black-box ones query `clf` as a whole.
#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend>(
    be: &B,
    clf: &dyn Classify<B>,
    model: Option<&Model<B>>,
    tok: &TextTokenizer,
    word_table: &Tensor,
    examples: &[Example],
    a: &AttackConfig,
    wordnet: Option<&WordNet>,
    glove: Option<&Glove>,
) -> Result<Vec<AttackRecord>> {
    if a.kind.is_black_box() {
        return black_box(be, clf, tok, examples, a, wordnet, glove);
    }
    let Some(m) = model else {
        bail!("{} needs the gradients of a single model: a mixture with per-input β is attacked by the black-box attacks (deepwordbug, pwws, textfooler, textbugger)", a.kind.title());
    };
    let bar = progress(examples.len());
    let mut tally = Tally::default();
    let mut records = Vec::with_capacity(examples.len());
    let budget = a.query_budget as usize;
    match a.kind {
        AttackKind::Pgd | AttackKind::Fgsm => {
            let cfg = match a.kind {
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
            for chunk in (0..examples.len()).collect::<Vec<_>>().chunks(a.batch_size) {
                let recs = embedding_batch(be, m, &data, chunk, examples, tok.pad_id(), &cfg, &mut rng)?;
                tally.add(&bar, &recs);
                records.extend(recs);
            }
        }
        AttackKind::Hotflip => {
            // examples run in lockstep, `--workers` at a time; forward batches of about
            // `--max-batch-tokens` tokens (MR sentences are ~30 tokens)
            let rows = (a.max_batch_tokens / 32).max(1);
            let scorer = ModelScorer { be, model: m, pad_id: tok.pad_id(), sep_id: None, batch_size: rows };
            let mut victim = Victim::new(&scorer, tok)?;
            let tokens =
                (0..word_table.shape()[0]).map(|v| tok.spelled_word(v as u32).unwrap_or_default()).collect();
            let cfg = HotFlipConfig {
                max_word_frac: a.max_word_frac,
                min_cos: a.min_cos,
                beam: a.beam,
                top_k: a.top_k,
            };
            let hotflip = HotFlip::new(be, word_table, tokens, cfg)?;
            let items: Vec<(usize, &str, usize)> =
                examples.iter().enumerate().map(|(i, e)| (i, e.text.as_str(), e.label)).collect();
            for chunk in items.chunks(a.workers) {
                let recs = hotflip.attack_all(be, m, &mut victim, chunk, budget)?;
                tally.add(&bar, &recs);
                records.extend(recs);
            }
        }
        _ => unreachable!("black-box attacks returned above"),
    }
    bar.finish_and_clear();
    Ok(records)
}

/// A black-box text attack (DeepWordBug, PWWS, TextFooler, TextBugger) on `examples` against any
/// classifier: a checkpoint's model, or a system such as an AdpMixup mixture, queried as a whole.
pub fn black_box<B: Backend>(
    be: &B,
    clf: &dyn Classify<B>,
    tok: &TextTokenizer,
    examples: &[Example],
    a: &AttackConfig,
    wordnet: Option<&WordNet>,
    glove: Option<&Glove>,
) -> Result<Vec<AttackRecord>> {
    let bar = progress(examples.len());
    let budget = a.query_budget as usize;
    let records = match a.kind {
        AttackKind::Pgd | AttackKind::Fgsm | AttackKind::Hotflip => {
            bail!("{} needs gradients: it is not a black-box attack", a.kind.title())
        }
        kind => {
            // sentence pairs need token types; single texts keep type 0 throughout
            let sep_id = examples.iter().any(|e| e.pair.is_some()).then(|| tok.segment_end()).flatten();
            let scorer = ModelScorer { be, model: clf, pad_id: tok.pad_id(), sep_id, batch_size: usize::MAX };
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
    super::attack_text(victim, i, &e.text, e.pair.as_deref(), e.label, budget, t, ranking, c)
}

/// Attacks the examples on `--workers` threads at once, their model queries batched together by a
/// [`BatchQueue`] that this thread serves with `scorer`. Records come back in example order.
fn concurrently(
    scorer: &dyn Scorer,
    tok: &TextTokenizer,
    examples: &[Example],
    a: &AttackConfig,
    bar: &ProgressBar,
    attack_one: impl Fn(&mut Victim, usize, &Example) -> Result<AttackRecord> + Sync,
) -> Result<Vec<AttackRecord>> {
    let workers = (a.workers).min(examples.len()).max(1);
    let queue = BatchQueue::new(workers, a.max_batch_tokens);
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
                pair: examples[i].pair.clone(),
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
