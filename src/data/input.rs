//! Reading texts to embed or score: plain text (one per line), TSV with a header, or JSONL.
//!
//! Every input keeps its 1-based line number so that outputs can be joined back to inputs.
//! Lines that are not UTF-8 are errors naming the line; empty lines are skipped and counted.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::model::tokenizer::TextInput;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Tsv,
    Jsonl,
}

impl Format {
    /// From an explicit name, or guessed from the file extension (plain text otherwise).
    pub fn resolve(name: Option<&str>, path: Option<&Path>) -> Result<Self> {
        let ext = path.and_then(|p| p.extension()).and_then(|e| e.to_str()).unwrap_or("");
        Ok(match name.unwrap_or(ext) {
            "tsv" => Format::Tsv,
            "jsonl" | "json" | "ndjson" => Format::Jsonl,
            "txt" | "text" | "" => Format::Text,
            other => match name {
                Some(_) => bail!("unknown input format `{other}` (text, tsv or jsonl)"),
                None => Format::Text,
            },
        })
    }
}

/// One input with the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub input: TextInput,
}

/// Inputs read from a source, and how many empty lines were skipped.
#[derive(Debug, Default)]
pub struct Inputs {
    pub records: Vec<Record>,
    pub empty_lines: usize,
}

/// Reads all inputs. `source` names the input in error messages.
pub fn read(reader: impl BufRead, format: Format, source: &str) -> Result<Inputs> {
    let mut out = Inputs::default();
    let mut tsv_columns: Option<(usize, Option<usize>)> = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = line.with_context(|| format!("{source}: read error"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{source}:{n}: line is not valid UTF-8"))?;
        let text = text.strip_suffix('\r').unwrap_or(&text);
        if text.trim().is_empty() {
            out.empty_lines += 1;
            continue;
        }
        let input = match format {
            Format::Text => TextInput::single(text),
            Format::Jsonl => parse_json(text).with_context(|| format!("{source}:{n}"))?,
            Format::Tsv => {
                let fields: Vec<&str> = text.split('\t').collect();
                let Some((c_text, c_pair)) = tsv_columns else {
                    let pos = |name: &str| fields.iter().position(|f| f.trim() == name);
                    let c_text = pos("text").with_context(|| {
                        format!(
                            "{source}:{n}: the TSV header must name a `text` column (optional `text_pair`)"
                        )
                    })?;
                    tsv_columns = Some((c_text, pos("text_pair")));
                    continue;
                };
                let get = |c: usize| {
                    fields
                        .get(c)
                        .map(|s| s.to_string())
                        .with_context(|| format!("{source}:{n}: missing column {}", c + 1))
                };
                let t = get(c_text)?;
                if t.trim().is_empty() {
                    out.empty_lines += 1;
                    continue;
                }
                TextInput { text: t, pair: c_pair.map(get).transpose()? }
            }
        };
        out.records.push(Record { line: n, input });
    }
    Ok(out)
}

fn parse_json(line: &str) -> Result<TextInput> {
    let v: serde_json::Value = serde_json::from_str(line).context("invalid JSON")?;
    let text = match v.get("text") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => bail!("field `text` must be a string"),
        None => bail!("object has no `text` field"),
    };
    let pair = match v.get("text_pair") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => bail!("field `text_pair` must be a string"),
    };
    Ok(TextInput { text, pair })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_skipping_empty_lines() {
        let got = read(&b"a\n\n  \nb\r\n"[..], Format::Text, "x").unwrap();
        assert_eq!(got.empty_lines, 2);
        assert_eq!(
            got.records,
            vec![
                Record { line: 1, input: TextInput::single("a") },
                Record { line: 4, input: TextInput::single("b") }
            ]
        );
    }

    #[test]
    fn non_utf8_names_the_line() {
        let e = read(&b"ok\n\xff\xfe\n"[..], Format::Text, "in.txt").unwrap_err();
        assert_eq!(e.to_string(), "in.txt:2: line is not valid UTF-8");
    }

    #[test]
    fn reads_tsv_and_jsonl_pairs() {
        let tsv = read(&b"label\ttext\ttext_pair\n1\thello\tworld\n"[..], Format::Tsv, "x").unwrap();
        assert_eq!(tsv.records[0].input, TextInput::pair("hello", "world"));
        let j = read(&b"{\"text\":\"a\",\"text_pair\":\"b\"}\n{\"text\":\"c\"}\n"[..], Format::Jsonl, "x")
            .unwrap();
        assert_eq!(j.records[1].input, TextInput::single("c"));
        let e = read(&b"{\"txt\":1}\n"[..], Format::Jsonl, "x").unwrap_err();
        assert!(format!("{e:#}").contains("no `text` field"));
        let e = read(&b"a\tb\n"[..], Format::Tsv, "x").unwrap_err();
        assert!(format!("{e:#}").contains("`text` column"));
    }
}
