//! DeepWordBug (Gao et al. 2018) as TextAttack's recipe runs it: words ranked by `[UNK]`
//! replacement, then per word one random edit of each kind — swap two neighbouring characters,
//! substitute, delete, insert a random letter — keeping the best; at most 30 Levenshtein edits in
//! all; stopwords untouched.

use super::search::{Constraints, Ranking, Transformation};
use super::words::Text;
use crate::rng::Rng;

pub const RANKING: Ranking = Ranking::Unk;
pub const CONSTRAINTS: Constraints = Constraints { max_edit_distance: Some(30) };

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// The four character edits, each at a random position (seeded).
pub struct CharEdits {
    pub rng: Rng,
}

impl CharEdits {
    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }
    fn letter(&mut self) -> char {
        LETTERS[self.below(LETTERS.len())] as char
    }

    /// One candidate of each edit that applies to `word`: swap, substitution, deletion, insertion.
    pub fn edits(&mut self, word: &str) -> Vec<String> {
        let w: Vec<char> = word.chars().collect();
        let n = w.len();
        let s = |v: Vec<char>| v.into_iter().collect::<String>();
        let mut out = vec![];
        if n >= 2 {
            let i = self.below(n - 1);
            let mut v = w.clone();
            v.swap(i, i + 1);
            out.push(s(v));
        }
        if n >= 1 {
            let i = self.below(n);
            let mut v = w.clone();
            v[i] = self.letter();
            out.push(s(v));
        }
        if n >= 2 {
            let i = self.below(n);
            let mut v = w.clone();
            v.remove(i);
            out.push(s(v));
        }
        if n >= 1 {
            let i = self.below(n + 1);
            let mut v = w.clone();
            v.insert(i, self.letter());
            out.push(s(v));
        }
        out
    }
}

impl Transformation for CharEdits {
    fn replacements(&mut self, text: &Text, _original: &Text, i: usize) -> Vec<String> {
        self.edits(text.word(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::words::levenshtein;

    #[test]
    fn each_edit_is_one_or_two_levenshtein_steps() {
        let mut e = CharEdits { rng: Rng::new(7) };
        for word in ["film", "ok", "x", "naïve"] {
            for _ in 0..50 {
                let out = e.edits(word);
                let n = word.chars().count();
                assert_eq!(out.len(), if n >= 2 { 4 } else { 2 });
                for c in &out {
                    let d = levenshtein(word, c);
                    assert!(d <= 2, "{word} -> {c}");
                }
                if n >= 2 {
                    // swap keeps the letters, deletion drops one, insertion adds one
                    let mut a: Vec<char> = out[0].chars().collect();
                    let mut b: Vec<char> = word.chars().collect();
                    a.sort();
                    b.sort();
                    assert_eq!(a, b);
                    assert_eq!(out[2].chars().count(), n - 1);
                    assert_eq!(out[3].chars().count(), n + 1);
                }
            }
        }
        assert!(e.edits("").is_empty());
    }
}
