//! Greedy search with word importance ranking (TextAttack's `GreedyWordSwapWIR`), the search of
//! the black-box recipes: rank the words, then visit them in that order, each time keeping the
//! candidate replacement that raises the goal's score most, until the model is fooled.

use anyhow::Result;

use super::victim::{Goal, Victim};
use super::words::{is_stopword, levenshtein, Text};

/// How words are ranked before the greedy pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranking {
    /// by the score of the text with the word replaced by `[UNK]` (DeepWordBug)
    Unk,
    /// by the score of the text with the word deleted (TextFooler, TextBugger)
    Delete,
    /// PWWS: `softmax(unk scores)ᵢ · (best score among word i's replacements)`
    WeightedSaliency,
}

/// Replacement candidates for one word of a text.
pub trait Transformation {
    /// Replacements for word `i` of `text` (`original` is the unattacked text).
    fn replacements(&mut self, text: &Text, original: &Text, i: usize) -> Vec<String>;
}

/// Constraints on candidates beyond "not a stopword, each word changed at most once".
#[derive(Clone, Copy, Debug, Default)]
pub struct Constraints {
    /// most Levenshtein edits between the original and a candidate text (DeepWordBug: 30)
    pub max_edit_distance: Option<usize>,
}

/// The current best text of a search and its probabilities.
#[derive(Clone, Debug)]
pub struct State {
    pub text: Text,
    pub probs: Vec<f32>,
}

/// Words that may be modified: non-empty and not stopwords.
pub fn modifiable(text: &Text) -> Vec<usize> {
    (0..text.num_words()).filter(|&i| !text.word(i).is_empty() && !is_stopword(text.word(i))).collect()
}

fn candidates(
    t: &mut dyn Transformation,
    text: &Text,
    original: &Text,
    i: usize,
    c: &Constraints,
) -> Vec<Text> {
    let rendered = original.render();
    let mut out = vec![];
    for r in t.replacements(text, original, i) {
        if r == text.word(i) {
            continue;
        }
        let cand = text.with_word(i, &r);
        if let Some(max) = c.max_edit_distance {
            if levenshtein(&rendered, &cand.render()) > max {
                continue;
            }
        }
        if !out.contains(&cand) {
            out.push(cand);
        }
    }
    out
}

/// Runs the greedy search from `start` (the original text, with its probabilities).
pub fn greedy_wir(
    victim: &mut Victim,
    goal: &mut Goal,
    start: State,
    t: &mut dyn Transformation,
    ranking: Ranking,
    c: &Constraints,
) -> Result<State> {
    let original = start.text.clone();
    let indices = modifiable(&original);
    // 1. importance of each word: the score with the word replaced by [UNK] (or deleted)
    let blank = if ranking == Ranking::Delete { "" } else { "[UNK]" };
    let unk: Vec<Text> = indices.iter().map(|&i| original.with_word(i, blank)).collect();
    let unk_probs = goal.eval(victim, &unk)?;
    if goal.exhausted() && unk_probs.iter().any(Option::is_none) {
        return Ok(start);
    }
    let unk_scores: Vec<f32> =
        unk_probs.iter().map(|p| p.as_ref().map_or(f32::NEG_INFINITY, |p| goal.score(p))).collect();
    let importance: Vec<f32> = match ranking {
        Ranking::Unk | Ranking::Delete => unk_scores,
        Ranking::WeightedSaliency => {
            let max = unk_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = unk_scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
            let z: f64 = exps.iter().sum();
            let mut out = Vec::with_capacity(indices.len());
            for (k, &i) in indices.iter().enumerate() {
                let cands = candidates(t, &original, &original, i, c);
                let best = if cands.is_empty() {
                    0.0
                } else {
                    let probs = goal.eval(victim, &cands)?;
                    if goal.exhausted() && probs.iter().any(Option::is_none) {
                        return Ok(start);
                    }
                    probs.iter().flatten().map(|p| goal.score(p)).fold(0.0f32, f32::max)
                };
                out.push((exps[k] / z) as f32 * best);
            }
            out
        }
    };
    let mut order: Vec<usize> = (0..indices.len()).collect();
    order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]));
    // 2. greedy pass in that order
    let mut cur = start;
    for k in order {
        let i = indices[k];
        let cands = candidates(t, &cur.text, &original, i, c);
        if cands.is_empty() {
            continue;
        }
        let probs = goal.eval(victim, &cands)?;
        let best = cands
            .into_iter()
            .zip(probs)
            .filter_map(|(t, p)| p.map(|p| (t, p)))
            .max_by(|a, b| goal.score(&a.1).total_cmp(&goal.score(&b.1)));
        if let Some((text, probs)) = best {
            if goal.score(&probs) > goal.score(&cur.probs) {
                cur = State { text, probs };
                if goal.succeeded(&cur.probs) {
                    break;
                }
            }
        }
        if goal.exhausted() {
            break;
        }
    }
    Ok(cur)
}
