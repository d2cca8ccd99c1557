//! HotFlip-style wordpiece attack (white-box, discrete).
//!
//! The first-order gain of replacing the token at position `i` by vocabulary entry `v` is
//! `s(i, v) = (E[v] − e_i)·∇_{e_i}L`. For every position and the whole vocabulary at once this
//! is one GEMM: the gradient rows `G` and the looked-up rows `e_i`, stacked as `[G; e]`, times
//! `Eᵀ` (the backend's linear op with the word table as its weight) gives both `G·Eᵀ` and the dot
//! products `e_i·E[v]` for the cosine constraint. The allowed flips are then masked and the best
//! `top_k` per beam confirmed by real forward passes, all candidates of a step in one batch.
//!
//! Constraints: only whole words of one wordpiece are replaced, by vocabulary entries that are
//! whole lower-case words (so the text re-tokenizes to exactly what was scored); never special
//! tokens; never stopwords (at `i` or as `v`); each word at most once; at most `⌈ρ·words⌉`
//! words; `cos(E[v], e_i) ≥ τ`.

use std::cmp::Ordering;

use anyhow::{ensure, Context, Result};

use super::metrics::AttackRecord;
use super::search::State;
use super::victim::{Goal, Victim};
use super::words::{is_stopword, Text};
use crate::backend::TokenBatch;
use crate::backend::{Activation, Backend, TopkFlips, TOPK_MAX};
use crate::model::classify::Model;
use crate::weights::Tensor;

#[cfg(test)]
mod tests {
    #[test]
    fn the_word_budget_is_a_ceiling_of_the_fraction() {
        assert_eq!(super::max_words(0.2, 5), 1);
        assert_eq!(super::max_words(0.2, 6), 2);
        assert_eq!(super::max_words(0.2, 0), 0);
        assert_eq!(super::max_words(1.0, 7), 7);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HotFlipConfig {
    /// most words changed, as a fraction of the words (ρ)
    pub max_word_frac: f32,
    /// least cosine between the new and the old token's embedding (τ)
    pub min_cos: f32,
    /// beam width (1 = greedy)
    pub beam: usize,
    /// flips confirmed by a forward pass per beam and step
    pub top_k: usize,
}

impl Default for HotFlipConfig {
    fn default() -> Self {
        HotFlipConfig { max_word_frac: 0.2, min_cos: 0.2, beam: 1, top_k: 8 }
    }
}

/// The vocabulary side, computed once: which entries may be flipped in, their strings and norms,
/// and the word table on the host and on the backend.
pub struct HotFlip<B: Backend> {
    pub cfg: HotFlipConfig,
    allowed: Vec<bool>,
    tokens: Vec<String>,
    norms: Vec<f32>,
    word: Tensor,
    word_dev: B::Weight,
    zero_bias: B::Weight,
}

/// Whole lower-case words of two or more ASCII letters that are not stopwords.
fn flippable_token(t: &str) -> bool {
    t.len() >= 2 && t.bytes().all(|b| b.is_ascii_lowercase()) && !is_stopword(t)
}

impl<B: Backend> HotFlip<B> {
    /// `word`: the model's word-embedding table `[V, H]` on the host; `tokens[v]`: the word entry
    /// `v` spells after a space ([`crate::model::tokenizer::TextTokenizer::spelled_word`]; empty:
    /// none).
    pub fn new(be: &B, word: &Tensor, tokens: Vec<String>, cfg: HotFlipConfig) -> Result<Self> {
        ensure!(cfg.beam >= 1, "HotFlip needs a beam of at least 1");
        ensure!((1..=TOPK_MAX).contains(&cfg.top_k), "HotFlip's top-k must be in 1..={TOPK_MAX}");
        ensure!((0.0..=1.0).contains(&cfg.max_word_frac), "the changed-word fraction must be in [0, 1]");
        let (v, h) = (word.shape()[0], word.shape()[1]);
        ensure!(tokens.len() <= v, "{} token strings for a vocabulary of {v}", tokens.len());
        let allowed = (0..v).map(|i| tokens.get(i).is_some_and(|t| flippable_token(t))).collect();
        let norms =
            word.data().chunks(h).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12)).collect();
        Ok(HotFlip {
            cfg,
            allowed,
            tokens,
            norms,
            word: word.clone(),
            word_dev: be.weight(word)?,
            zero_bias: be.weight(&Tensor::from_vec(vec![v], vec![0.0; v]))?,
        })
    }

    fn row(&self, id: u32) -> &[f32] {
        let h = self.word.shape()[1];
        &self.word.data()[id as usize * h..][..h]
    }
}

/// One flip to try: word `word` (at token position `pos`) becomes vocabulary entry `v`.
#[derive(Clone, Copy, Debug)]
struct Flip {
    beam: usize,
    word: usize,
    v: u32,
    gain: f32,
}

/// A beam: a text, its ids, and which token position each flippable word sits at.
#[derive(Clone)]
struct Beam {
    state: State,
    ids: Vec<u32>,
    changed: Vec<usize>,
}

/// Token position of each word that is one wordpiece, not a stopword, and inside the truncation.
fn flippable_words(victim: &mut Victim, text: &Text, max_len: usize) -> Result<Vec<(usize, usize)>> {
    let mut out = vec![];
    let (mut pos, last) = (victim.template().first.len(), victim.template().last.len());
    if victim.tok.spaces_are_pieces() {
        // byte-level BPE: a word after a space is one piece `Ġword` with that space
        for (i, unit) in text.parts().chunks(2).enumerate() {
            let glued = unit.concat();
            let n = if glued.is_empty() { 0 } else { victim.fragment(&glued)?.len() };
            if let [sep, word] = unit {
                if n == 1 && sep.ends_with(' ') && pos + last < max_len && !is_stopword(word) {
                    out.push((i, pos));
                }
            }
            pos += n;
        }
        return Ok(out);
    }
    for (k, part) in text.parts().iter().enumerate() {
        let n = if part.is_empty() { 0 } else { victim.fragment(part)?.len() };
        if k % 2 == 1 && n == 1 && pos + last < max_len && !is_stopword(part) {
            out.push((k / 2, pos));
        }
        pos += n;
    }
    Ok(out)
}

impl<B: Backend> HotFlip<B> {
    /// The best `top_k` allowed flips of each beam (against its example's label) by first-order
    /// gain, from one gradient pass over all beams and one scoring GEMM.
    fn propose(
        &self,
        be: &B,
        model: &Model<B>,
        victim: &mut Victim,
        beams: &[&Beam],
        labels: &[u32],
    ) -> Result<Vec<Flip>> {
        let max_len = victim.tok.max_len();
        let rows: Vec<(Vec<u32>, Vec<u32>)> =
            beams.iter().map(|b| (b.ids.clone(), vec![0; b.ids.len()])).collect();
        let batch = TokenBatch::from_rows(&rows, victim.tok.pad_id());
        let _range = crate::profile::range("attack step: hotflip");
        let out = model.input_gradient(be, &batch, labels, None)?;
        let (_, h, grad) = be.download(&out.input_grad.context("no input gradient")?)?;
        // the positions to score: flippable, unchanged words of every beam
        let mut sites = vec![]; // (beam, word, token position)
        for (b, beam) in beams.iter().enumerate() {
            for (w, pos) in flippable_words(victim, &beam.state.text, max_len)? {
                if !beam.changed.contains(&w) {
                    sites.push((b, w, pos));
                }
            }
        }
        if sites.is_empty() {
            return Ok(vec![]);
        }
        let n = sites.len();
        let mut x = Vec::with_capacity(2 * n * h);
        for &(b, _, pos) in &sites {
            x.extend_from_slice(&grad[(b * batch.seq + pos) * h..][..h]);
        }
        for &(b, _, pos) in &sites {
            x.extend_from_slice(self.row(beams[b].ids[pos]));
        }
        let prod = be.linear(
            &be.upload(2 * n, h, &x)?,
            &self.word_dev,
            &self.zero_bias,
            Activation::Identity,
            None,
        )?;
        // the masked top-k per site on the backend (a kernel on the GPU), then per beam on the host
        let (mut base, mut old, mut old_norm) = (vec![], vec![], vec![]);
        for &(b, _, pos) in &sites {
            let id = beams[b].ids[pos];
            let g = &grad[(b * batch.seq + pos) * h..][..h];
            base.push(g.iter().zip(self.row(id)).map(|(a, b)| a * b).sum::<f32>());
            old.push(id);
            old_norm.push(self.norms[id as usize]);
        }
        let q = TopkFlips {
            sites: n,
            base: &base,
            old: &old,
            old_norm: &old_norm,
            norms: &self.norms,
            allowed: &self.allowed,
            min_cos: self.cfg.min_cos,
            k: self.cfg.top_k,
        };
        let mut best: Vec<Vec<Flip>> = vec![vec![]; beams.len()];
        for (&(b, w, _), top) in sites.iter().zip(be.topk_flips(&prod, &q)?) {
            for (v, gain) in top {
                push_top(&mut best[b], Flip { beam: b, word: w, v, gain }, self.cfg.top_k);
            }
        }
        Ok(best.into_iter().flatten().collect())
    }

    /// Attacks one text (see [`HotFlip::attack_all`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attack(
        &self,
        be: &B,
        model: &Model<B>,
        victim: &mut Victim,
        index: usize,
        text: &str,
        label: usize,
        budget: usize,
    ) -> Result<AttackRecord> {
        Ok(self.attack_all(be, model, victim, &[(index, text, label)], budget)?.remove(0))
    }

    /// Attacks texts `(index, text, label)` in lockstep: per step, one gradient pass and one
    /// scoring GEMM for the beams of every example still running (`GROUP` beams at a time), then
    /// one forward batch for all their candidates. Per example a beam search over flips until the
    /// model is fooled, the word budget is spent or no flip is allowed; gradient passes count as
    /// queries too.
    pub fn attack_all(
        &self,
        be: &B,
        model: &Model<B>,
        victim: &mut Victim,
        items: &[(usize, &str, usize)],
        budget: usize,
    ) -> Result<Vec<AttackRecord>> {
        ensure!(budget >= 1, "the query budget must be at least 1 (the original input is a query)");
        struct Run {
            index: usize,
            whole: bool,
            goal: Goal,
            original: State,
            beams: Vec<Beam>,
            best: Beam,
            steps_left: usize,
            skipped: bool,
        }
        // the originals, in one batch
        let mut runs = Vec::with_capacity(items.len());
        let mut fresh_all = vec![];
        for &(index, text, label) in items {
            let text = Text::parse(text);
            let whole = victim.needs_whole_text(&text)?;
            let ids = victim.ids_as(&text, whole)?;
            let mut goal = Goal::new(label, budget);
            fresh_all.push(goal.plan(std::slice::from_ref(&ids)));
            let state = State { text, probs: vec![] };
            let beam = Beam { state: state.clone(), ids, changed: vec![] };
            let steps_left = max_words(self.cfg.max_word_frac, state.text.num_words());
            runs.push(Run {
                index,
                whole,
                goal,
                original: state,
                beams: vec![beam.clone()],
                best: beam,
                steps_left,
                skipped: false,
            });
        }
        self.score_all(victim, &mut runs.iter_mut().map(|r| &mut r.goal).collect::<Vec<_>>(), fresh_all)?;
        for r in &mut runs {
            let probs = r.goal.lookup(std::slice::from_ref(&r.beams[0].ids)).remove(0).expect("budget >= 1");
            r.original.probs = probs.clone();
            r.beams[0].state.probs = probs.clone();
            r.best.state.probs = probs;
            r.skipped = r.goal.succeeded(&r.original.probs);
        }
        loop {
            let active: Vec<usize> = (0..runs.len())
                .filter(|&k| {
                    let r = &runs[k];
                    !r.skipped
                        && r.steps_left > 0
                        && !r.goal.exhausted()
                        && !r.goal.succeeded(&r.best.state.probs)
                })
                .collect();
            if active.is_empty() {
                break;
            }
            // flips for every active beam, GROUP beams per gradient pass
            let owners: Vec<(usize, usize)> =
                active.iter().flat_map(|&k| (0..runs[k].beams.len()).map(move |b| (k, b))).collect();
            let mut flips_of: Vec<Vec<Flip>> = vec![vec![]; runs.len()];
            for group in owners.chunks(GROUP) {
                let beams: Vec<&Beam> = group.iter().map(|&(k, b)| &runs[k].beams[b]).collect();
                let labels: Vec<u32> = group.iter().map(|&(k, _)| runs[k].goal.label as u32).collect();
                for f in self.propose(be, model, victim, &beams, &labels)? {
                    let (k, b) = group[f.beam];
                    flips_of[k].push(Flip { beam: b, ..f });
                }
            }
            // candidates of every active example, scored in one batch
            // per example: (candidate text, its ids, the words it changed)
            type Candidate = (Text, Vec<u32>, Vec<usize>);
            let mut cands_of: Vec<Vec<Candidate>> = vec![vec![]; runs.len()];
            let mut fresh_all = vec![];
            let mut planned = vec![];
            for &k in &active {
                let r = &mut runs[k];
                r.goal.queries += r.beams.len(); // the gradient pass
                r.steps_left -= 1;
                for f in &flips_of[k] {
                    let beam = &r.beams[f.beam];
                    let t = beam.state.text.with_word(f.word, &self.tokens[f.v as usize]);
                    let mut changed = beam.changed.clone();
                    changed.push(f.word);
                    let ids = victim.ids_as(&t, r.whole)?;
                    cands_of[k].push((t, ids, changed));
                }
                let rows: Vec<Vec<u32>> = cands_of[k].iter().map(|c| c.1.clone()).collect();
                fresh_all.push(r.goal.plan(&rows));
                planned.push(k);
            }
            let mut goals: Vec<&mut Goal> = vec![];
            for (k, r) in runs.iter_mut().enumerate() {
                if planned.contains(&k) {
                    goals.push(&mut r.goal);
                }
            }
            self.score_all(victim, &mut goals, fresh_all)?;
            for &k in &active {
                let r = &mut runs[k];
                let cands = std::mem::take(&mut cands_of[k]);
                let rows: Vec<Vec<u32>> = cands.iter().map(|c| c.1.clone()).collect();
                let probs = r.goal.lookup(&rows);
                let mut next: Vec<Beam> = cands
                    .into_iter()
                    .zip(probs)
                    .filter_map(|((text, ids, changed), p)| {
                        p.map(|probs| Beam { state: State { text, probs }, ids, changed })
                    })
                    .collect();
                if next.is_empty() {
                    r.steps_left = 0;
                    continue;
                }
                let goal = &r.goal;
                next.sort_by(|a, b| goal.score(&b.state.probs).total_cmp(&goal.score(&a.state.probs)));
                next.truncate(self.cfg.beam);
                if goal.score(&next[0].state.probs) > goal.score(&r.best.state.probs) {
                    r.best = next[0].clone();
                }
                r.beams = next;
            }
        }
        Ok(runs
            .iter()
            .map(|r| {
                let last = if r.skipped { &r.original } else { &r.best.state };
                super::record(r.index, None, &r.original, last, &r.goal, r.skipped)
            })
            .collect())
    }

    /// Scores the rows each goal planned in one pass of the victim's scorer and hands them back.
    fn score_all(&self, victim: &Victim, goals: &mut [&mut Goal], fresh: Vec<Vec<Vec<u32>>>) -> Result<()> {
        let all: Vec<Vec<u32>> = fresh.iter().flatten().cloned().collect();
        let mut probs = victim.probs(all)?.into_iter();
        for (g, rows) in goals.iter_mut().zip(&fresh) {
            let p: Vec<Vec<f32>> = probs.by_ref().take(rows.len()).collect();
            g.answer(rows, p)?;
        }
        Ok(())
    }
}

/// Beams per gradient pass (and scoring GEMM) of [`HotFlip::attack_all`].
const GROUP: usize = 32;

/// `⌈ρ·words⌉`, with ρ's f32 rounding forgiven (0.2 · 5 is 1, not 2).
pub fn max_words(frac: f32, words: usize) -> usize {
    (frac as f64 * words as f64 - 1e-6).ceil().max(0.0) as usize
}

/// Keeps the `k` largest gains in `top` (unsorted).
fn push_top(top: &mut Vec<Flip>, f: Flip, k: usize) {
    if top.len() < k {
        top.push(f);
        return;
    }
    let (i, min) = top
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.gain.partial_cmp(&b.1.gain).unwrap_or(Ordering::Equal))
        .map(|(i, f)| (i, f.gain))
        .expect("k >= 1");
    if f.gain > min {
        top[i] = f;
    }
}
