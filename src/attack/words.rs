//! Texts as words and the text between them, the unit the discrete attacks edit.
//!
//! A *word* is a run of alphanumeric characters, with apostrophes and hyphens allowed inside it
//! (`don't`, `well-made`), as TextAttack counts words; everything else (spaces, punctuation) is
//! kept verbatim between words, so replacing a word changes nothing else of the text.

use std::collections::HashSet;
use std::sync::OnceLock;

/// A text split into alternating separators and words.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Text {
    /// `parts[2i]` is the separator before word `i`, `parts[2i+1]` word `i`; the last part is the
    /// separator after the last word (so there are `2·words + 1` parts).
    parts: Vec<String>,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

fn is_inner_char(c: char) -> bool {
    c == '\'' || c == '-'
}

impl Text {
    pub fn parse(s: &str) -> Text {
        let mut parts = vec![String::new()];
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if is_word_char(chars[i]) {
                let mut word = String::new();
                while i < chars.len() {
                    let c = chars[i];
                    // an inner apostrophe or hyphen only when a word character follows it
                    let inner = is_inner_char(c) && chars.get(i + 1).is_some_and(|&n| is_word_char(n));
                    if !(is_word_char(c) || inner) {
                        break;
                    }
                    word.push(c);
                    i += 1;
                }
                parts.push(word);
                parts.push(String::new());
            } else {
                parts.last_mut().expect("parts is never empty").push(chars[i]);
                i += 1;
            }
        }
        Text { parts }
    }

    pub fn num_words(&self) -> usize {
        self.parts.len() / 2
    }

    pub fn word(&self, i: usize) -> &str {
        &self.parts[2 * i + 1]
    }

    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().skip(1).step_by(2).map(|s| s.as_str())
    }

    /// The separators and words in order (separator, word, separator, …, separator).
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// This text with word `i` replaced by `new` (which may be empty: a deletion).
    pub fn with_word(&self, i: usize, new: &str) -> Text {
        let mut t = self.clone();
        t.parts[2 * i + 1] = new.to_string();
        t
    }

    pub fn render(&self) -> String {
        self.parts.concat()
    }

    /// Indices of the words that differ from `other`'s (same number of words).
    pub fn changed_words(&self, other: &Text) -> Vec<usize> {
        (0..self.num_words().min(other.num_words())).filter(|&i| self.word(i) != other.word(i)).collect()
    }
}

/// The shipped stopword list (src/attack/stopwords.txt): words the attacks never modify.
pub fn stopwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("stopwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

pub fn is_stopword(word: &str) -> bool {
    stopwords().contains(word.to_lowercase().as_str())
}

/// Levenshtein distance between two strings, in characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_and_keeps_everything_else() {
        let s = "  It's a well-made film -- isn't it? 'Quite' (2002)!";
        let t = Text::parse(s);
        let words: Vec<&str> = t.words().collect();
        assert_eq!(words, ["It's", "a", "well-made", "film", "isn't", "it", "Quite", "2002"]);
        assert_eq!(t.render(), s);
        assert_eq!(t.parts().len(), 2 * t.num_words() + 1);
        let u = t.with_word(3, "movie");
        assert_eq!(u.render(), "  It's a well-made movie -- isn't it? 'Quite' (2002)!");
        assert_eq!(u.changed_words(&t), [3]);
        assert_eq!(t.with_word(1, "").render(), "  It's  well-made film -- isn't it? 'Quite' (2002)!");
    }

    #[test]
    fn empty_punctuation_and_non_ascii_texts() {
        assert_eq!(Text::parse("").num_words(), 0);
        assert_eq!(Text::parse("").render(), "");
        assert_eq!(Text::parse("?!- ...").num_words(), 0);
        let t = Text::parse("café crème, naïve");
        assert_eq!(t.words().collect::<Vec<_>>(), ["café", "crème", "naïve"]);
        assert_eq!(t.render(), "café crème, naïve");
    }

    #[test]
    fn stopwords_and_levenshtein() {
        assert!(is_stopword("The") && is_stopword("isn't") && !is_stopword("film"));
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("film", "flim"), 2);
        assert_eq!(levenshtein("naïve", "naive"), 1);
    }
}
