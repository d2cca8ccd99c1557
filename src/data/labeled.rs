//! Labelled datasets from user files: TSV or CSV with a header naming `text`, `label` and an
//! optional `text_pair` column (or a GLUE task's own TSV, [`columns`]), or JSONL objects with those
//! fields. TSV fields are not quoted; CSV fields may be. Label names are mapped to ids
//! by a [`LabelSet`] built from the training split (integers in numeric order, otherwise names in
//! lexicographic order); a label a later split does not know is an error naming its line.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::columns::{self, Columns};
use super::Example;

/// One example as read, with its label still a name, and the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawExample {
    pub line: usize,
    pub text: String,
    pub pair: Option<String>,
    pub label: String,
}

/// Label names in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSet {
    pub names: Vec<String>,
}

impl LabelSet {
    /// The labels seen in `examples`; at least two are required.
    pub fn from_examples(examples: &[RawExample], source: &str) -> Result<Self> {
        let unique: BTreeSet<&str> = examples.iter().map(|e| e.label.as_str()).collect();
        if unique.len() < 2 {
            bail!("{source}: a classifier needs at least two labels, found {}", unique.len());
        }
        let mut names: Vec<String> = unique.into_iter().map(String::from).collect();
        if names.iter().all(|n| n.parse::<i64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<i64>().unwrap());
        }
        Ok(LabelSet { names })
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Maps every example's label to its id.
    pub fn encode(&self, examples: Vec<RawExample>, source: &str) -> Result<Vec<Example>> {
        examples
            .into_iter()
            .map(|e| {
                let label = self.id(&e.label).with_context(|| {
                    format!(
                        "{source}:{}: unknown label `{}` (known: {})",
                        e.line,
                        e.label,
                        self.names.join(", ")
                    )
                })?;
                Ok(Example { text: e.text, pair: e.pair, label })
            })
            .collect()
    }
}

/// Reads a labelled file; the format follows the extension (`.tsv`, `.csv`, `.jsonl`/`.json`).
pub fn read(path: &Path) -> Result<Vec<RawExample>> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {source}"))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let examples = match ext.as_str() {
        "tsv" => read_delimited(&bytes, b'\t', &source)?,
        "csv" => read_delimited(&bytes, b',', &source)?,
        "jsonl" | "json" | "ndjson" => read_jsonl(&bytes, &source)?,
        _ => bail!("{source}: unknown data format (use .tsv, .csv or .jsonl)"),
    };
    if examples.is_empty() {
        bail!("{source}: no examples");
    }
    Ok(examples)
}

fn read_delimited(bytes: &[u8], delimiter: u8, source: &str) -> Result<Vec<RawExample>> {
    let bytes = super::strip_bom(bytes);
    // TSV is not quoted (IANA's text/tab-separated-values; GLUE's files hold bare `"`), CSV is
    let mut r = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(delimiter != b'\t')
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut columns: Option<Columns> = None;
    let mut out = vec![];
    for rec in r.records() {
        let rec = rec.map_err(|e| match e.position() {
            Some(p) => anyhow::anyhow!("{source}:{}: {}", p.line(), e),
            None => anyhow::anyhow!("{source}: {e}"),
        })?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let cols = match columns {
            Some(c) => c,
            None => {
                let first: Vec<&str> = rec.iter().collect();
                let c = columns::detect(&first).with_context(|| {
                    format!("{source}:{line}: unknown columns; expected {}", columns::KNOWN)
                })?;
                if c.label.is_none() {
                    bail!("{source}:{line}: the header has no `label` column");
                }
                columns = Some(c);
                if c.header {
                    continue;
                }
                c
            }
        };
        let field = |c: usize, name: &str| {
            rec.get(c).map(str::to_string).with_context(|| format!("{source}:{line}: missing `{name}` field"))
        };
        let text = field(cols.text, "text")?;
        if text.trim().is_empty() {
            bail!("{source}:{line}: empty text");
        }
        let label = field(cols.label.expect("checked above"), "label")?.trim().to_string();
        let pair = cols.pair.map(|c| field(c, "text_pair")).transpose()?;
        out.push(RawExample { line, text, pair, label });
    }
    Ok(out)
}

fn read_jsonl(bytes: &[u8], source: &str) -> Result<Vec<RawExample>> {
    let mut out = vec![];
    for (line_no, line) in super::lines(bytes) {
        let text =
            std::str::from_utf8(line).map_err(|_| anyhow::anyhow!("{source}:{line_no}: not valid UTF-8"))?;
        if text.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{source}:{line_no}: invalid JSON"))?;
        let s = |name: &str| -> Result<Option<String>> {
            match v.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(n)) if name == "label" => Ok(Some(n.to_string())),
                Some(serde_json::Value::Bool(b)) if name == "label" => Ok(Some(b.to_string())),
                Some(_) => bail!("{source}:{line_no}: field `{name}` must be a string"),
            }
        };
        let text = s("text")?.with_context(|| format!("{source}:{line_no}: no `text` field"))?;
        if text.trim().is_empty() {
            bail!("{source}:{line_no}: empty text");
        }
        let label = s("label")?.with_context(|| format!("{source}:{line_no}: no `label` field"))?;
        out.push(RawExample { line: line_no, text, pair: s("text_pair")?, label });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        (d, p)
    }

    #[test]
    fn reads_csv_tsv_jsonl_and_maps_labels() {
        let (_d, p) = write("a.csv", "label,text\npos,\"good, very\"\nneg,bad\n");
        let ex = read(&p).unwrap();
        assert_eq!(ex[0].text, "good, very");
        let labels = LabelSet::from_examples(&ex, "a.csv").unwrap();
        assert_eq!(labels.names, vec!["neg", "pos"]);
        assert_eq!(labels.encode(ex, "a.csv").unwrap()[0].label, 1);

        let (_d, p) = write("a.tsv", "text\ttext_pair\tlabel\na\tb\t10\nc\td\t2\n");
        let ex = read(&p).unwrap();
        assert_eq!(ex[0].pair.as_deref(), Some("b"));
        assert_eq!(LabelSet::from_examples(&ex, "x").unwrap().names, vec!["2", "10"]);

        let (_d, p) = write("a.jsonl", "{\"text\":\"a\",\"label\":1}\n\n{\"text\":\"b\",\"label\":0}\n");
        let ex = read(&p).unwrap();
        assert_eq!(ex[1].line, 3);
        assert_eq!(ex[0].label, "1");
    }

    #[test]
    fn a_bom_and_cr_line_ends_are_read_and_empty_texts_refused() {
        let (_d, p) = write("a.tsv", "\u{feff}text\tlabel\ra\t1\rb\t0\r");
        assert_eq!(read(&p).unwrap().len(), 2);
        let (_d, p) = write("a.csv", "\u{feff}text,label\r\na,1\r\n");
        assert_eq!(read(&p).unwrap()[0].label, "1");
        let (_d, p) = write("a.jsonl", "\u{feff}{\"text\":\"a\",\"label\":1}\r{\"text\":\"b\",\"label\":0}");
        assert_eq!(read(&p).unwrap()[1].line, 2);
        let (_d, p) = write("a.jsonl", "{\"text\":\"a\",\"label\":1}\n{\"text\":\" \",\"label\":0}\n");
        assert_eq!(format!("{:#}", read(&p).unwrap_err()), format!("{}:2: empty text", p.display()));
    }

    #[test]
    fn glue_task_files_are_read_as_they_are() {
        // the quirks of GLUE's files: unquoted bare `"`, MRPC's BOM, SST-2's trailing space,
        // CoLA's missing header and final newline
        let (_d, p) = write("sst2.tsv", "sentence\tlabel\nit 's a \"charming\" film \t1\n");
        let ex = read(&p).unwrap();
        assert_eq!(
            (ex[0].text.as_str(), ex[0].label.as_str(), ex[0].line),
            ("it 's a \"charming\" film ", "1", 2)
        );
        let mrpc =
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tHe said \"no.\tHe refused.\n";
        let (_d, p) = write("mrpc.tsv", mrpc);
        let ex = read(&p).unwrap();
        assert_eq!(
            (ex[0].text.as_str(), ex[0].pair.as_deref(), ex[0].label.as_str()),
            ("He said \"no.", Some("He refused."), "1")
        );
        let (_d, p) = write(
            "rte.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat exists.\tentailment\n",
        );
        assert_eq!(read(&p).unwrap()[0].pair.as_deref(), Some("A cat exists."));
        let (_d, p) = write("qnli.tsv", "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n");
        assert_eq!(
            (read(&p).unwrap()[0].text.as_str(), read(&p).unwrap()[0].pair.as_deref()),
            ("Who?", Some("Him."))
        );
        let (_d, p) =
            write("cola.tsv", "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.");
        let ex = read(&p).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[1].text.as_str(), ex[1].label.as_str(), ex[1].line), ("They drank the pub.", "0", 2));
        let (_d, p) = write("x.tsv", "id\tbody\tlabel\n1\ta\t0\n");
        assert!(format!("{:#}", read(&p).unwrap_err())
            .contains("x.tsv:1: unknown columns; expected a header naming `text`"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let (_d, p) = write("a.csv", "label,txt\n1,a\n");
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("unknown columns"));
        let (_d, p) = write("a.csv", "label,text\n");
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("no examples"));
        let (_d, p) = write("a.csv", "label,text\n1,a\n1,b\n");
        let ex = read(&p).unwrap();
        assert!(format!("{:#}", LabelSet::from_examples(&ex, "a.csv").unwrap_err()).contains("at least two"));
        let set = LabelSet { names: vec!["0".into(), "1".into()] };
        let bad = vec![RawExample { line: 7, text: "x".into(), pair: None, label: "2".into() }];
        assert_eq!(
            format!("{:#}", set.encode(bad, "dev.csv").unwrap_err()),
            "dev.csv:7: unknown label `2` (known: 0, 1)"
        );
    }
}
