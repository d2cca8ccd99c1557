//! What the router sees of an input: what the members' passes already computed (each member's
//! class probabilities, their entropy, its pooled [CLS] state) and cheap statistics of the input's
//! wordpieces — no extra encoder pass.

use anyhow::{ensure, Result};

use crate::adapter::mix::entropy;
use crate::backend::TokenBatch;

/// What the members' own passes over a batch produced: `[member][sample][…]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberPasses {
    /// class probabilities
    pub probs: Vec<Vec<Vec<f32>>>,
    /// the [CLS] state after the last layer (the head's input); empty when not asked for
    pub pooled: Vec<Vec<Vec<f32>>>,
}

impl MemberPasses {
    /// The members' probabilities alone (enough for the entropy rules).
    pub fn probs_only(probs: Vec<Vec<Vec<f32>>>) -> Self {
        MemberPasses { probs, pooled: vec![] }
    }

    pub fn members(&self) -> usize {
        self.probs.len()
    }

    /// The samples each member was run on.
    pub fn samples(&self) -> usize {
        self.probs.first().map_or(0, Vec::len)
    }
}

/// The wordpiece statistics, in feature order.
pub const TEXT_FEATURES: [&str; 6] = [
    "words split into several pieces",
    "pieces per word",
    "unknown-token rate",
    "pieces with a digit",
    "single-letter pieces",
    "punctuation pieces",
];

const CONT: u8 = 1;
const UNK: u8 = 2;
const DIGIT: u8 = 4;
const SINGLE: u8 = 8;
const PUNCT: u8 = 16;
const SPECIAL: u8 = 32;

/// Per vocabulary id, what kind of piece it is. WordPiece (BERT): `##` continues a word, `[…]` is
/// a special token. Byte-level BPE (RoBERTa): a piece that starts with `Ġ` (a space) or is
/// punctuation starts a word and any other continues one, `<…>` is a special token. Built from
/// the tokenizer's vocabulary ([`crate::model::tokenizer::TextTokenizer::piece_table`]), not
/// stored with the router.
#[derive(Clone, Debug)]
pub struct PieceTable {
    flags: Vec<u8>,
}

impl PieceTable {
    /// The table of a vocabulary, each id's token in id order (`None`: an id without a token);
    /// `byte_level`: the tokens are byte-level BPE's.
    pub fn new(tokens: impl Iterator<Item = Option<String>>, byte_level: bool) -> Self {
        PieceTable { flags: tokens.map(|t| t.map_or(SPECIAL, |t| Self::classify(&t, byte_level))).collect() }
    }

    fn classify(t: &str, byte_level: bool) -> u8 {
        if t == "[UNK]" || t == "<unk>" {
            return UNK;
        }
        let bracketed = |open, close| t.len() > 2 && t.starts_with(open) && t.ends_with(close);
        if bracketed('[', ']') || (byte_level && bracketed('<', '>')) {
            return SPECIAL;
        }
        let (cont, body) = if byte_level {
            match t.strip_prefix('\u{120}') {
                Some(b) => (0, b),
                None if t.chars().all(|c| !c.is_alphanumeric()) => (0, t),
                None => (CONT, t),
            }
        } else {
            match t.strip_prefix("##") {
                Some(b) if !b.is_empty() => (CONT, b),
                _ => (0, t),
            }
        };
        let mut f = cont;
        if body.chars().any(|c| c.is_ascii_digit()) {
            f |= DIGIT;
        }
        if body.chars().count() == 1 && body.chars().all(char::is_alphabetic) {
            f |= SINGLE;
        }
        if body.chars().all(|c| !c.is_alphanumeric()) {
            f |= PUNCT;
        }
        f
    }

    /// [`TEXT_FEATURES`] of one sequence's ids (special tokens and pads are not counted).
    pub fn stats(&self, ids: &[u32]) -> [f32; 6] {
        let flag = |id: u32| self.flags.get(id as usize).copied().unwrap_or(SPECIAL);
        let pieces: Vec<u8> = ids.iter().map(|&i| flag(i)).filter(|f| f & SPECIAL == 0).collect();
        let n = pieces.len().max(1) as f32;
        let words = pieces.iter().filter(|f| *f & CONT == 0).count().max(1) as f32;
        // a word is split when the piece after its first one continues it
        let split = pieces.windows(2).filter(|w| w[0] & CONT == 0 && w[1] & CONT != 0).count() as f32;
        let rate = |bit: u8| pieces.iter().filter(|f| *f & bit != 0).count() as f32 / n;
        [split / words, pieces.len() as f32 / words, rate(UNK), rate(DIGIT), rate(SINGLE), rate(PUNCT)]
    }
}

/// The number of features for `m` members over `labels` classes and a `hidden`-wide encoder.
pub fn width(m: usize, labels: usize, hidden: usize) -> usize {
    m * (labels + 1 + hidden) + TEXT_FEATURES.len()
}

/// The feature rows `[samples, width]` of a batch: per member its probabilities, their entropy
/// and its pooled state, then the wordpiece statistics.
pub fn rows(passes: &MemberPasses, batch: &TokenBatch, table: &PieceTable) -> Result<Vec<f32>> {
    let (m, n) = (passes.members(), passes.samples());
    ensure!(n == batch.batch, "member passes over {n} samples for a batch of {}", batch.batch);
    ensure!(passes.pooled.len() == m, "the router needs the members' pooled states");
    let mut out = vec![];
    for s in 0..n {
        for (p, h) in passes.probs.iter().zip(&passes.pooled) {
            out.extend_from_slice(&p[s]);
            out.push(entropy(&p[s]));
            out.extend_from_slice(&h[s]);
        }
        let ids = &batch.ids[s * batch.seq..s * batch.seq + batch.lens[s]];
        out.extend_from_slice(&table.stats(ids));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordpiece_statistics_count_split_words_and_odd_pieces() {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "##m", "##s", "f", "1", ","];
        let table = PieceTable { flags: vocab.iter().map(|t| PieceTable::classify(t, false)).collect() };
        // [CLS] the f ##m ##s 1 , [UNK] [SEP]: 7 pieces, 5 words (the, f##m##s, 1, ",", [UNK]), one split
        let s = table.stats(&[2, 4, 8, 6, 7, 9, 10, 1, 3]);
        let want = [1.0 / 5.0, 7.0 / 5.0, 1.0 / 7.0, 1.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{s:?} vs {want:?}");
        }
        // a clean sentence: nothing split, nothing odd
        assert_eq!(table.stats(&[2, 4, 5, 3]), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn byte_level_statistics_read_spaces_as_word_starts() {
        let vocab = [
            "<s>",
            "<pad>",
            "</s>",
            "<unk>",
            "\u{120}the",
            "\u{120}film",
            "m",
            "s",
            "\u{120}f",
            "\u{120}1",
            ",",
        ];
        let table = PieceTable::new(vocab.iter().map(|t| Some(t.to_string())), true);
        // <s> Ġthe Ġf m s Ġ1 , <unk> </s>: the same pieces and words as the WordPiece test's
        let s = table.stats(&[0, 4, 8, 6, 7, 9, 10, 3, 2]);
        let want = [1.0 / 5.0, 7.0 / 5.0, 1.0 / 7.0, 1.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{s:?} vs {want:?}");
        }
        assert_eq!(table.stats(&[0, 4, 5, 2]), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
