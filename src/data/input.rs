//! Reading texts to embed or score: plain text (one per line), TSV or CSV with a header, or JSONL.
//!
//! Every input keeps its 1-based line number so that outputs can be joined back to inputs.
//! Lines that are not UTF-8 are errors naming the line; empty lines and empty texts are skipped
//! and counted. A byte-order mark is ignored, and `\n`, `\r\n` and `\r` all end a line.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::columns::{self, Columns};
use crate::model::tokenizer::TextInput;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Tsv,
    Csv,
    Jsonl,
}

impl Format {
    /// From an explicit name, or guessed from the file extension (plain text otherwise).
    pub fn resolve(name: Option<&str>, path: Option<&Path>) -> Result<Self> {
        let ext = path.and_then(|p| p.extension()).and_then(|e| e.to_str()).unwrap_or("");
        Ok(match name.unwrap_or(ext) {
            "tsv" => Format::Tsv,
            "csv" => Format::Csv,
            "jsonl" | "json" | "ndjson" => Format::Jsonl,
            "txt" | "text" | "" => Format::Text,
            other => match name {
                Some(_) => bail!("unknown input format `{other}` (text, tsv, csv or jsonl)"),
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
pub fn read(mut reader: impl Read, format: Format, source: &str) -> Result<Inputs> {
    let mut bytes = vec![];
    reader.read_to_end(&mut bytes).with_context(|| format!("{source}: read error"))?;
    if format == Format::Csv {
        return read_csv(&bytes, source);
    }
    let mut out = Inputs::default();
    let mut tsv_columns: Option<Columns> = None;
    for (n, line) in super::lines(&bytes) {
        let text = std::str::from_utf8(line)
            .map_err(|_| anyhow::anyhow!("{source}:{n}: line is not valid UTF-8"))?;
        if text.trim().is_empty() {
            out.empty_lines += 1;
            continue;
        }
        let input = match format {
            Format::Text => TextInput::single(text),
            Format::Jsonl => parse_json(text).with_context(|| format!("{source}:{n}"))?,
            Format::Csv => unreachable!("read above"),
            Format::Tsv => {
                let fields: Vec<&str> = text.split('\t').collect();
                let cols = match tsv_columns {
                    Some(c) => c,
                    None => {
                        let c = text_columns(&fields, source, n, "TSV")?;
                        tsv_columns = Some(c);
                        if c.header {
                            continue;
                        }
                        c
                    }
                };
                let get = |c: usize| {
                    fields
                        .get(c)
                        .map(|s| s.to_string())
                        .with_context(|| format!("{source}:{n}: missing column {}", c + 1))
                };
                TextInput { text: get(cols.text)?, pair: cols.pair.map(get).transpose()? }
            }
        };
        push(&mut out, n, input);
    }
    Ok(out)
}

/// Keeps an input, or counts it as empty when its text is blank.
fn push(out: &mut Inputs, line: usize, input: TextInput) {
    if input.text.trim().is_empty() {
        out.empty_lines += 1;
    } else {
        out.records.push(Record { line, input });
    }
}

/// The text (and optional pair) columns of a file whose first row is `first` ([`columns`]).
fn text_columns(first: &[&str], source: &str, n: usize, what: &str) -> Result<Columns> {
    columns::detect(first).with_context(|| {
        format!(
            "{source}:{n}: the {what} header must name a `text` column (optional `text_pair`) or be \
             a GLUE task's; expected {}",
            columns::KNOWN
        )
    })
}

/// CSV with a header (RFC 4180 quoting: fields may hold commas, quotes and newlines).
fn read_csv(bytes: &[u8], source: &str) -> Result<Inputs> {
    let bytes = super::strip_bom(bytes);
    let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut out = Inputs::default();
    let mut columns = None;
    for rec in r.byte_records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        let n = rec.position().map_or(0, |p| p.line() as usize);
        let field = |c: usize| -> Result<String> {
            let f = rec.get(c).with_context(|| format!("{source}:{n}: missing column {}", c + 1))?;
            String::from_utf8(f.to_vec())
                .map_err(|_| anyhow::anyhow!("{source}:{n}: line is not valid UTF-8"))
        };
        if rec.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            out.empty_lines += 1;
            continue;
        }
        let cols = match columns {
            Some(c) => c,
            None => {
                let names: Vec<String> = (0..rec.len()).map(field).collect::<Result<_>>()?;
                let c =
                    text_columns(&names.iter().map(|s| s.as_str()).collect::<Vec<_>>(), source, n, "CSV")?;
                columns = Some(c);
                if c.header {
                    continue;
                }
                c
            }
        };
        push(&mut out, n, TextInput { text: field(cols.text)?, pair: cols.pair.map(field).transpose()? });
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
    fn csv_with_quotes_a_bom_and_cr_line_ends() {
        let got =
            read(&b"\xEF\xBB\xBFid,text\r1,\"good, very\"\r2,\"\"\r3,bad\r"[..], Format::Csv, "x").unwrap();
        assert_eq!(
            got.records.iter().map(|r| r.input.text.as_str()).collect::<Vec<_>>(),
            ["good, very", "bad"]
        );
        assert_eq!(got.empty_lines, 1);
        let e = read(&b"id,txt\n1,a\n"[..], Format::Csv, "in.csv").unwrap_err();
        assert!(format!("{e:#}").contains("CSV header must name a `text` column"));
        assert_eq!(Format::resolve(None, Some(Path::new("a.csv"))).unwrap(), Format::Csv);
    }

    #[test]
    fn bom_cr_only_lines_and_empty_jsonl_texts() {
        let got =
            read(&b"\xEF\xBB\xBF{\"text\":\"a\"}\r{\"text\":\"\"}\r{\"text\":\"c\"}"[..], Format::Jsonl, "x")
                .unwrap();
        assert_eq!(got.records.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(got.empty_lines, 1);
        let got = read(&b"\xEF\xBB\xBFtext\tlabel\ra\t1\rb\t0"[..], Format::Tsv, "x").unwrap();
        assert_eq!(got.records.len(), 2);
        let got = read(&b"one\rtwo\r"[..], Format::Text, "x").unwrap();
        assert_eq!(got.records.len(), 2);
    }

    #[test]
    fn glue_files_score_as_they_are() {
        let rte = read(
            &b"index\tsentence1\tsentence2\tlabel\n0\tA \"cat\".\tA cat.\tentailment\n"[..],
            Format::Tsv,
            "x",
        )
        .unwrap();
        assert_eq!(rte.records[0].input, TextInput::pair("A \"cat\".", "A cat."));
        let cola = read(&b"gj04\t1\t\tOne.\ngj04\t0\t*\tTwo."[..], Format::Tsv, "x").unwrap();
        assert_eq!(
            cola.records.iter().map(|r| (r.line, r.input.text.as_str())).collect::<Vec<_>>(),
            [(1, "One."), (2, "Two.")]
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
