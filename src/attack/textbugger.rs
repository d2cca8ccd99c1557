//! TextBugger (Li et al. 2019), black-box: words ranked by deletion, then per word the best of five
//! bugs — insert a space inside it, delete an inner character, swap two inner neighbours,
//! replace a letter by a look-alike from another alphabet (each at a random position; first and
//! last characters kept) — and its 5 nearest GloVe 6B 50d neighbours; stopwords untouched. The
//! paper's sentence-similarity filter (Universal Sentence Encoder) is not available here.

use super::glove::NeighbourCache;
use super::search::{Constraints, Ranking, Transformation};
use super::words::Text;
use crate::rng::Rng;

pub const RANKING: Ranking = Ranking::Delete;
pub const CONSTRAINTS: Constraints = Constraints { max_edit_distance: None };
pub const NEIGHBOURS: usize = 5;
pub const VOCAB: usize = 100_000;

/// Latin letters and a Cyrillic or Greek letter drawn alike.
const LOOKALIKES: &[(char, char)] = &[
    ('a', 'а'),
    ('c', 'с'),
    ('e', 'е'),
    ('i', 'і'),
    ('j', 'ј'),
    ('o', 'о'),
    ('p', 'р'),
    ('s', 'ѕ'),
    ('x', 'х'),
    ('y', 'у'),
    ('v', 'ν'),
    ('n', 'η'),
];

pub struct Bugs<'a> {
    pub cache: &'a NeighbourCache<'a>,
    pub rng: Rng,
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// The character bugs of `word` that apply to it, each at a random position.
pub fn char_bugs(word: &str, rng: &mut Rng) -> Vec<String> {
    let w: Vec<char> = word.chars().collect();
    let n = w.len();
    let s = |v: Vec<char>| v.into_iter().collect::<String>();
    let mut out = vec![];
    if n >= 2 {
        let mut v = w.clone();
        v.insert(1 + below(rng, n - 1), ' ');
        out.push(s(v));
    }
    if n >= 3 {
        let mut v = w.clone();
        v.remove(1 + below(rng, n - 2));
        out.push(s(v));
    }
    if n >= 4 {
        let i = 1 + below(rng, n - 3);
        let mut v = w.clone();
        v.swap(i, i + 1);
        out.push(s(v));
    }
    let lookalike = |c: char| LOOKALIKES.iter().find(|(l, _)| *l == c.to_ascii_lowercase()).map(|p| p.1);
    let swappable: Vec<usize> = (0..n).filter(|&i| lookalike(w[i]).is_some()).collect();
    if !swappable.is_empty() {
        let i = swappable[below(rng, swappable.len())];
        let mut v = w.clone();
        v[i] = lookalike(w[i]).expect("filtered");
        out.push(s(v));
    }
    out
}

impl Transformation for Bugs<'_> {
    fn replacements(&mut self, text: &Text, _original: &Text, i: usize) -> Vec<String> {
        let w = text.word(i).to_string();
        let mut out = char_bugs(&w, &mut self.rng);
        out.extend(self.cache.get(&w));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_bugs_keep_the_ends_and_change_one_thing() {
        for seed in 0..30 {
            let bugs = char_bugs("terrible", &mut Rng::new(seed));
            assert_eq!(bugs.len(), 4);
            let [space, del, swap, look] = [&bugs[0], &bugs[1], &bugs[2], &bugs[3]];
            assert_eq!(space.replace(' ', ""), "terrible");
            assert_eq!(del.chars().count(), 7);
            let mut sorted: Vec<char> = swap.chars().collect();
            sorted.sort();
            let mut want: Vec<char> = "terrible".chars().collect();
            want.sort();
            assert_eq!(sorted, want);
            for b in [space, del, swap] {
                assert!(b.starts_with('t') && b.ends_with('e'), "{b}");
            }
            assert_eq!(look.chars().count(), 8);
            assert_eq!(look.chars().filter(|c| !c.is_ascii()).count(), 1);
        }
        assert_eq!(char_bugs("ok", &mut Rng::new(1)).len(), 2); // a space inside, and the o look-alike
        assert!(char_bugs("", &mut Rng::new(1)).is_empty());
    }
}
