//! The model under attack, as the attacks see it: texts in, class probabilities out, every query
//! counted.
//!
//! [`Victim`] tokenizes a [`Text`] word by word and caches each fragment's wordpieces, so a
//! candidate that changes one word re-tokenizes only that word. It scores through a [`Scorer`]:
//! [`ModelScorer`] runs the forward pass itself (batches padded to their longest member), and
//! [`super::batching::BatchQueue`] gathers the requests of many examples attacked at once into
//! large batches. [`Goal`] is one example's untargeted goal (TextAttack's
//! `UntargetedClassification`): a query cache, the query count and the budget.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::words::Text;
use crate::backend::Backend;
use crate::backend::TokenBatch;
use crate::model::classify::{argmax, Classify};
use crate::model::tokenizer::{Template, TextInput, TextTokenizer};

/// Class probabilities of token rows (`[CLS] … [SEP]`, `<s> … </s>`, unpadded). `key` orders the requests of
/// concurrent examples (their index), so that batches are formed deterministically.
pub trait Scorer {
    fn probs(&self, key: usize, rows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>>;
}

/// Scores with a classifier on a backend, `batch_size` rows per forward pass, each batch padded
/// to its longest row. With `sep_id`, a row `[CLS] a [SEP] b [SEP]` is a sentence pair: the tokens
/// after its first `[SEP]` are segment 1, as BERT's tokenizer types them (rows are ids only, so a
/// literal `[SEP]` inside a first text would be taken for the boundary).
pub struct ModelScorer<'m, B: Backend> {
    pub be: &'m B,
    pub model: &'m dyn Classify<B>,
    pub pad_id: u32,
    pub sep_id: Option<u32>,
    pub batch_size: usize,
}

/// The token types of a row: 0 up to its first `sep`, 1 after it.
pub fn segment_types(row: &[u32], sep: Option<u32>) -> Vec<u32> {
    let first_end = sep.and_then(|s| row.iter().position(|&t| t == s)).map_or(row.len(), |i| i + 1);
    (0..row.len()).map(|j| u32::from(j >= first_end)).collect()
}

impl<B: Backend> Scorer for ModelScorer<'_, B> {
    fn probs(&self, _key: usize, rows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let padded: Vec<(Vec<u32>, Vec<u32>)> =
                chunk.iter().map(|r| (r.clone(), segment_types(r, self.sep_id))).collect();
            let batch = TokenBatch::from_rows(&padded, self.pad_id);
            out.extend(self.model.probs(self.be, &batch)?);
        }
        Ok(out)
    }
}

pub struct Victim<'s> {
    pub scorer: &'s dyn Scorer,
    pub tok: &'s TextTokenizer,
    pieces: HashMap<String, Vec<u32>>,
    template: Template,
    /// the example being attacked (orders concurrent requests)
    key: usize,
    /// this example's text does not tokenize word by word like a whole (a symbol glued to a word,
    /// say): tokenize whole texts instead
    whole_text: bool,
    /// the example's second text (a sentence pair), never perturbed, and its wordpieces
    pair: Option<(String, Vec<u32>)>,
}

impl<'s> Victim<'s> {
    pub fn new(scorer: &'s dyn Scorer, tok: &'s TextTokenizer) -> Result<Self> {
        let template = tok.template().cloned().context(
            "cannot tell the tokenizer's special tokens (its encodings of `a` and of the pair `a`, `b` do not have the pieces of `a` and `b` in them)",
        )?;
        Ok(Victim { scorer, tok, pieces: HashMap::new(), template, key: 0, whole_text: false, pair: None })
    }

    /// The special tokens around the texts.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The wordpieces of one word or separator, or (byte-level BPE) of a separator and the word
    /// after it (cached).
    pub fn fragment(&mut self, s: &str) -> Result<&[u32]> {
        if !self.pieces.contains_key(s) {
            let ids = self.tok.pieces(s)?;
            self.pieces.insert(s.to_string(), ids);
        }
        Ok(&self.pieces[s])
    }

    /// Starts example `key` (with `pair`, the fixed second text of a sentence pair: the attacks
    /// perturb the first): checks that its text tokenizes word by word exactly as a whole.
    pub fn begin(&mut self, key: usize, text: &Text, pair: Option<&str>) -> Result<()> {
        self.key = key;
        self.pair = pair.map(|p| Ok::<_, anyhow::Error>((p.to_string(), self.tok.pieces(p)?))).transpose()?;
        self.whole_text = self.needs_whole_text(text)?;
        Ok(())
    }

    /// `text` (and the example's pair) as the tokenizer takes it.
    fn input(&self, text: &Text) -> TextInput {
        TextInput { text: text.render(), pair: self.pair.as_ref().map(|(p, _)| p.clone()) }
    }

    /// Whether `text` tokenizes differently word by word than as a whole (then its candidates are
    /// tokenized whole).
    pub fn needs_whole_text(&mut self, text: &Text) -> Result<bool> {
        let by_words = self.ids_as(text, false)?;
        let whole = self.tok.encode_rows(&[self.input(text)])?.remove(0).0;
        Ok(by_words != whole)
    }

    /// Token ids of a text, as the tokenizer gives them (for the example [`Victim::begin`] started).
    pub fn ids(&mut self, text: &Text) -> Result<Vec<u32>> {
        self.ids_as(text, self.whole_text)
    }

    /// Token ids of a text, word by word from cached pieces or (`whole`) as a whole.
    pub fn ids_as(&mut self, text: &Text, whole: bool) -> Result<Vec<u32>> {
        let max_len = self.tok.max_len();
        if whole {
            return Ok(self.tok.encode_rows(&[self.input(text)])?.remove(0).0);
        }
        let mut pieces = vec![];
        if self.tok.spaces_are_pieces() {
            // byte-level BPE: the separator before a word is part of its first piece (`Ġword`)
            for unit in text.parts().chunks(2) {
                let unit = unit.concat();
                if !unit.is_empty() {
                    pieces.extend_from_slice(self.fragment(&unit)?);
                }
            }
        } else {
            for part in text.parts() {
                if !part.is_empty() {
                    pieces.extend_from_slice(self.fragment(part)?);
                }
            }
        }
        let Some((_, second)) = &self.pair else {
            return Ok(self.template.single(pieces, max_len));
        };
        if pieces.len() + second.len() + self.template.pair_specials() > max_len {
            // a pair too long is truncated longest-first: leave that to the tokenizer
            return Ok(self.tok.encode_rows(&[self.input(text)])?.remove(0).0);
        }
        Ok(self.template.pair(&pieces, second))
    }

    /// Class probabilities of token rows.
    pub fn probs(&self, rows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(vec![]);
        }
        self.scorer.probs(self.key, rows)
    }
}

/// One example's untargeted goal: make the model predict anything but `label`.
pub struct Goal {
    pub label: usize,
    /// model queries so far (distinct inputs, the original included)
    pub queries: usize,
    pub budget: usize,
    cache: HashMap<Vec<u32>, Vec<f32>>,
}

impl Goal {
    pub fn new(label: usize, budget: usize) -> Self {
        Goal { label, queries: 0, budget, cache: HashMap::new() }
    }

    pub fn exhausted(&self) -> bool {
        self.queries >= self.budget
    }

    /// TextAttack's score of untargeted classification: `1 − p_label`.
    pub fn score(&self, probs: &[f32]) -> f32 {
        1.0 - probs[self.label]
    }

    pub fn succeeded(&self, probs: &[f32]) -> bool {
        argmax(probs) != self.label
    }

    /// Probabilities of token rows: cached rows are free, new ones cost a query each; rows past the
    /// budget are not evaluated (`None`).
    pub fn eval_ids(&mut self, victim: &Victim, rows: Vec<Vec<u32>>) -> Result<Vec<Option<Vec<f32>>>> {
        let fresh = self.plan(&rows);
        let probs = victim.probs(fresh.clone())?;
        self.answer(&fresh, probs)?;
        Ok(self.lookup(&rows))
    }

    /// The rows of `rows` that need a query (not cached, not repeated, within the budget), counted
    /// as queries: score them and hand the results to [`Goal::answer`]. (Several goals can share
    /// one forward batch this way.)
    pub fn plan(&mut self, rows: &[Vec<u32>]) -> Vec<Vec<u32>> {
        let mut fresh: Vec<Vec<u32>> = vec![];
        let mut seen = std::collections::HashSet::new();
        for r in rows {
            if !self.cache.contains_key(r) && seen.insert(r.clone()) {
                fresh.push(r.clone());
            }
        }
        fresh.truncate(self.budget.saturating_sub(self.queries));
        self.queries += fresh.len();
        fresh
    }

    /// Records the probabilities of the rows [`Goal::plan`] asked for.
    pub fn answer(&mut self, fresh: &[Vec<u32>], probs: Vec<Vec<f32>>) -> Result<()> {
        if probs.len() != fresh.len() {
            bail!("the scorer returned {} results for {} inputs", probs.len(), fresh.len());
        }
        for (r, p) in fresh.iter().zip(probs) {
            if p.iter().any(|v| !v.is_finite()) {
                bail!("the model returned non-finite probabilities");
            }
            self.cache.insert(r.clone(), p);
        }
        Ok(())
    }

    /// The cached probabilities of rows (`None` where never scored).
    pub fn lookup(&self, rows: &[Vec<u32>]) -> Vec<Option<Vec<f32>>> {
        rows.iter().map(|r| self.cache.get(r).cloned()).collect()
    }

    /// Probabilities of texts (see [`Goal::eval_ids`]).
    pub fn eval(&mut self, victim: &mut Victim, texts: &[Text]) -> Result<Vec<Option<Vec<f32>>>> {
        let rows = texts.iter().map(|t| victim.ids(t)).collect::<Result<Vec<_>>>()?;
        self.eval_ids(victim, rows)
    }
}
