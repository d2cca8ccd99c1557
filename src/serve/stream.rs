//! `admix score --stream`: JSON lines in on stdin, one JSON line out per input as soon as its
//! batch is scored. Lines that arrive together are scored together (up to the batch size), so a
//! pipeline gets batching without waiting for the end of its input.
//!
//! An input line is `{"text": "…"}` (optional `"text_pair"`, and `"id"`, echoed back) or a JSON
//! string. A line that cannot be scored gets `{"line": n, "error": "…"}` and the stream goes on;
//! the command then exits non-zero, naming how many lines failed.

use std::io::{BufRead, Write};
use std::sync::mpsc;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::scorer::Score;
use crate::model::tokenizer::TextInput;

/// One input line: its number, its id, and its text or why it has none.
struct Line {
    n: usize,
    id: Option<Value>,
    input: Result<TextInput, String>,
}

fn parse(n: usize, bytes: Vec<u8>) -> Option<Line> {
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return Some(Line { n, id: None, input: Err("line is not valid UTF-8".into()) }),
    };
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(Line { n, id: None, input: Err(format!("not JSON: {e}")) }),
    };
    let id = v.get("id").cloned();
    let input = match &v {
        Value::String(s) => Ok(TextInput::single(s.clone())),
        Value::Object(o) => match (o.get("text"), o.get("text_pair")) {
            (Some(Value::String(t)), None | Some(Value::Null)) => Ok(TextInput::single(t.clone())),
            (Some(Value::String(t)), Some(Value::String(p))) => Ok(TextInput::pair(t.clone(), p.clone())),
            (Some(Value::String(_)), Some(_)) => Err("`text_pair` must be a string".into()),
            _ => Err("expected {\"text\": \"…\"}".into()),
        },
        _ => Err("expected {\"text\": \"…\"} or a JSON string".into()),
    };
    let input = input.and_then(|i| if i.text.trim().is_empty() { Err("empty text".into()) } else { Ok(i) });
    Some(Line { n, id, input })
}

/// Streams `input` to `output` through `scorer`, at most `max_batch` lines per call. Returns
/// the number of lines scored; an error (after the whole stream) when any line failed.
pub fn run(
    scorer: &dyn Score,
    labels: &[String],
    input: impl BufRead + Send + 'static,
    mut output: impl Write,
    max_batch: usize,
) -> Result<usize> {
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Line>>(4 * max_batch.max(1));
    std::thread::spawn(move || {
        for (i, line) in input.split(b'\n').enumerate() {
            let item = line.map(|b| parse(i + 1, b));
            match item {
                Ok(None) => continue,
                Ok(Some(l)) => {
                    if tx.send(Ok(l)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let (mut scored, mut failed, mut first_error) = (0usize, 0usize, None::<String>);
    let mut note = |n: usize, e: &str, failed: &mut usize| {
        *failed += 1;
        first_error.get_or_insert_with(|| format!("line {n}: {e}"));
    };
    // block for one line, then take whatever else has already arrived
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first?];
        while lines.len() < max_batch {
            match rx.try_recv() {
                Ok(l) => lines.push(l?),
                Err(_) => break,
            }
        }
        let ok: Vec<&Line> = lines.iter().filter(|l| l.input.is_ok()).collect();
        let texts: Vec<TextInput> = ok.iter().map(|l| l.input.clone().unwrap()).collect();
        let results = if texts.is_empty() { Ok(vec![]) } else { scorer.score(&texts) };
        let mut rows: Vec<(usize, Value)> = Vec::with_capacity(lines.len());
        match results {
            Ok(scores) => {
                for (l, p) in ok.iter().zip(scores) {
                    let mut row = json!({
                        "line": l.n,
                        "label": labels.get(p.label).cloned().unwrap_or_else(|| p.label.to_string()),
                        "label_id": p.label,
                        "probs": p.probs,
                        "beta": p.beta,
                    });
                    if let Some(id) = &l.id {
                        row["id"] = id.clone();
                    }
                    rows.push((l.n, row));
                    scored += 1;
                }
            }
            Err(e) => {
                for l in &ok {
                    note(l.n, &format!("{e:#}"), &mut failed);
                    rows.push((l.n, json!({"line": l.n, "error": format!("scoring failed: {e:#}")})));
                }
            }
        }
        for l in lines.iter().filter(|l| l.input.is_err()) {
            let e = l.input.as_ref().unwrap_err();
            note(l.n, e, &mut failed);
            let mut row = json!({"line": l.n, "error": e});
            if let Some(id) = &l.id {
                row["id"] = id.clone();
            }
            rows.push((l.n, row));
        }
        rows.sort_by_key(|r| r.0);
        for (_, row) in rows {
            writeln!(output, "{row}")?;
        }
        output.flush()?;
    }
    if failed > 0 {
        bail!("{failed} line(s) could not be scored (first: {})", first_error.unwrap_or_default());
    }
    Ok(scored)
}
