//! PWWS (Ren et al. 2019) as TextAttack's recipe runs it: WordNet synonym substitution, words
//! ranked by weighted saliency (`softmax` over positions of the `[UNK]` scores, times the best
//! synonym's score), stopwords untouched.

use std::collections::HashMap;

use super::search::{Constraints, Ranking, Transformation};
use super::wordnet::WordNet;
use super::words::Text;

pub const RANKING: Ranking = Ranking::WeightedSaliency;
pub const CONSTRAINTS: Constraints = Constraints { max_edit_distance: None };

/// WordNet synonyms of a word (cached per word).
pub struct Synonyms<'w> {
    pub wordnet: &'w WordNet,
    cache: HashMap<String, Vec<String>>,
}

impl<'w> Synonyms<'w> {
    pub fn new(wordnet: &'w WordNet) -> Self {
        Synonyms { wordnet, cache: HashMap::new() }
    }
}

impl Transformation for Synonyms<'_> {
    fn replacements(&mut self, text: &Text, _original: &Text, i: usize) -> Vec<String> {
        let w = text.word(i);
        self.cache.entry(w.to_string()).or_insert_with(|| self.wordnet.synonyms(w)).clone()
    }
}
