//! TextFooler (Jin et al. 2020), as far as this machine's resources reach: words ranked by
//! deletion, then each replaced by the best of its 50 nearest GloVe 6B 50d neighbours with cosine
//! ≥ 0.5 that are not WordNet antonyms of it; stopwords untouched. The paper (and TextAttack)
//! use counter-fitted vectors, a part-of-speech filter and a Universal Sentence Encoder
//! similarity; no registry has the vectors or the encoder, so the neighbours are plain GloVe
//! ones (which include more related-but-different words and antonyms than counter-fitted
//! vectors, hence the WordNet antonym filter) and there is no POS or sentence filter.

use super::glove::NeighbourCache;
use super::search::{Constraints, Ranking, Transformation};
use super::wordnet::WordNet;
use super::words::Text;

pub const RANKING: Ranking = Ranking::Delete;
pub const CONSTRAINTS: Constraints = Constraints { max_edit_distance: None };
/// neighbours per word, least cosine, GloVe words searched (the most frequent)
pub const NEIGHBOURS: usize = 50;
pub const MIN_COS: f32 = 0.5;
pub const VOCAB: usize = 100_000;

pub struct Neighbours<'a> {
    pub cache: &'a NeighbourCache<'a>,
    pub wordnet: &'a WordNet,
}

impl Transformation for Neighbours<'_> {
    fn replacements(&mut self, text: &Text, _original: &Text, i: usize) -> Vec<String> {
        let w = text.word(i);
        let antonyms = self.wordnet.antonyms(w);
        self.cache.get(w).into_iter().filter(|n| !antonyms.contains(n)).collect()
    }
}
