//! Adversarial attacks on a classifier (docs/attacks.md has the definitions).
//!
//! - [`embedding`]: FGSM / FGM and K-step PGD on the word embeddings (L2 or L∞ ball per sequence),
//!   and FreeLB's gradient accumulation for training;
//! - [`hotflip`]: gradient-guided wordpiece flips scored for the whole vocabulary by one GEMM;
//! - black-box recipes over [`search::greedy_wir`]: [`deepwordbug`] (character edits),
//!   [`pwws`] (WordNet synonyms, [`wordnet`]), [`textfooler`] (GloVe neighbours, [`glove`]) and
//!   [`textbugger`] (character and word bugs);
//! - [`metrics`]: outcomes and TextAttack's summary; [`victim`]: the model as the attacks query it.

pub mod batching;
pub mod deepwordbug;
pub mod embedding;
pub mod glove;
pub mod hotflip;
pub mod job;
pub mod metrics;
pub mod pwws;
pub mod run;
pub mod search;
pub mod textbugger;
pub mod textfooler;
pub mod victim;
pub mod wordnet;
pub mod words;

use anyhow::Result;

use self::metrics::{AttackRecord, Outcome};
use self::search::{Constraints, Ranking, State, Transformation};
use self::victim::{Goal, Victim};
use self::words::Text;
use crate::model::classify::argmax;

/// Builds an example's record from the original and the final state of its attack.
pub fn record(
    index: usize,
    pair: Option<&str>,
    original: &State,
    last: &State,
    goal: &Goal,
    skipped: bool,
) -> AttackRecord {
    let outcome = if skipped {
        Outcome::Skipped
    } else if goal.succeeded(&last.probs) {
        Outcome::Successful
    } else {
        Outcome::Failed
    };
    let perturbed = (outcome != Outcome::Skipped).then(|| last.text.render());
    AttackRecord {
        index,
        original: original.text.render(),
        pair: pair.map(str::to_string),
        perturbed,
        label: goal.label,
        original_prediction: argmax(&original.probs),
        perturbed_prediction: argmax(&last.probs),
        original_probs: original.probs.clone(),
        perturbed_probs: last.probs.clone(),
        outcome,
        queries: goal.queries,
        words: original.text.num_words(),
        perturbed_words: last.text.changed_words(&original.text).len(),
        delta_norm: None,
    }
}

/// Attacks one text with a black-box recipe (transformation + ranking + constraints) within
/// `budget` queries (the original's included). Of a sentence pair (`pair`, the second text) only
/// the first text is perturbed.
#[allow(clippy::too_many_arguments)]
pub fn attack_text(
    victim: &mut Victim,
    index: usize,
    text: &str,
    pair: Option<&str>,
    label: usize,
    budget: usize,
    t: &mut dyn Transformation,
    ranking: Ranking,
    c: &Constraints,
) -> Result<AttackRecord> {
    anyhow::ensure!(budget >= 1, "the query budget must be at least 1 (the original input is a query)");
    let text = Text::parse(text);
    victim.begin(index, &text, pair)?;
    let mut goal = Goal::new(label, budget);
    let probs = goal.eval(victim, std::slice::from_ref(&text))?.remove(0).expect("budget >= 1");
    let original = State { text, probs };
    if goal.succeeded(&original.probs) {
        return Ok(record(index, pair, &original, &original, &goal, true));
    }
    let last = search::greedy_wir(victim, &mut goal, original.clone(), t, ranking, c)?;
    Ok(record(index, pair, &original, &last, &goal, false))
}
