//! Bad input through the CLI: each case must end in one clear `error:` line and a non-zero exit
//! (or, for recoverable input, a note and correct output) — never a panic.

mod common;

use std::path::Path;
use std::process::Output;

use common::cli::{admix, assert_error};
use common::tiny;
use safetensors::Dtype;

fn tiny_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 11, Dtype::F32, "");
    dir
}

fn embed(model: &Path, stdin: &[u8]) -> Output {
    admix(&["embed", "--model", model.to_str().unwrap()], stdin)
}

#[test]
fn missing_weights_file() {
    let dir = tiny_model();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "model.safetensors does not exist");
}

#[test]
fn missing_model_directory() {
    assert_error(&embed(Path::new("/nonexistent/model"), b"hi\n"), "does not exist (run `admix fetch`");
}

#[test]
fn truncated_weights_file() {
    let dir = tiny_model();
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "not a valid safetensors file");
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "not a valid safetensors file");
}

#[test]
fn corrupt_weights_file() {
    let dir = tiny_model();
    let p = dir.path().join("model.safetensors");
    let mut junk = 64u64.to_le_bytes().to_vec();
    junk.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(&p, junk).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "not a valid safetensors file");
}

/// Rewrites the JSON header of a safetensors file with `edit`, keeping its length.
fn edit_header(p: &Path, edit: impl Fn(&str) -> String) {
    let bytes = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let mut new = edit(header);
    assert!(new.len() <= n, "edited header must not grow");
    while new.len() < n {
        new.push(' ');
    }
    let mut out = bytes[..8].to_vec();
    out.extend(new.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(p, out).unwrap();
}

#[test]
fn header_lies_about_offsets() {
    let dir = tiny_model();
    let p = dir.path().join("model.safetensors");
    // claim the first tensor ends far beyond the file
    edit_header(&p, |h| {
        let i = h.find("\"data_offsets\":[0,").unwrap() + "\"data_offsets\":[0,".len();
        let j = h[i..].find(']').unwrap() + i;
        format!("{}{}{}", &h[..i], "9".repeat(j - i), &h[j..])
    });
    assert_error(&embed(dir.path(), b"hi\n"), "not a valid safetensors file");
}

#[test]
fn wrong_dtype() {
    let dir = tiny_model();
    let p = dir.path().join("model.safetensors");
    // F32 → I32 keeps every byte size valid; the loader must refuse integer weights
    edit_header(&p, |h| h.replace("\"F32\"", "\"I32\""));
    assert_error(&embed(dir.path(), b"hi\n"), "expected F32, F16 or BF16");
}

#[test]
fn shape_mismatch_with_config() {
    let dir = tiny_model();
    let cfg = tiny::config_json().replace("\"intermediate_size\":64", "\"intermediate_size\":65");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "has shape [64, 32], expected [65, 32]");
}

#[test]
fn unsupported_model_type() {
    let dir = tiny_model();
    let cfg = tiny::config_json().replace("\"bert\"", "\"gpt2\"");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "model_type `gpt2` is not supported");
}

#[test]
fn missing_tokenizer() {
    let dir = tiny_model();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_error(&embed(dir.path(), b"hi\n"), "tokenizer not found");
}

#[test]
fn non_utf8_input_line() {
    let dir = tiny_model();
    assert_error(&embed(dir.path(), b"fine\nbad \xff\xfe here\n"), "stdin:2: line is not valid UTF-8");
}

#[test]
fn empty_input_and_empty_lines() {
    let dir = tiny_model();
    assert_error(&embed(dir.path(), b""), "no input texts");
    assert_error(&embed(dir.path(), b"\n\n  \n"), "no input texts");
    let out = embed(dir.path(), b"first\n\nthird\n");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped 1 empty line"), "{stderr}");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|v| v["line"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), tiny::H);
}

#[test]
fn long_texts_are_truncated_with_one_note() {
    let dir = tiny_model();
    let long = "word ".repeat(300);
    let input = format!("{long}\n{long}\nshort\n");
    let out = admix(&["embed", "--model", dir.path().to_str().unwrap(), "--max-len", "64"], input.as_bytes());
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("truncated").count(), 1, "{stderr}");
    assert!(stderr.contains("2 input(s) longer than 64 tokens were truncated"), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);
}

#[test]
fn batch_size_zero_is_rejected() {
    let dir = tiny_model();
    let out = admix(&["embed", "--model", dir.path().to_str().unwrap(), "--batch-size", "0"], b"hi\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch-size") && !err.contains("panicked"), "{err}");
}

#[test]
fn score_with_missing_or_ambiguous_adapter() {
    let dir = tiny_model();
    let m = dir.path().to_str().unwrap();
    let a = dir.path().join("adapter.safetensors");
    let a = a.to_str().unwrap();
    assert_error(
        &admix(&["score", "--model", m, "--adapter", a, "--adapter-name", "zzz"], b"hi\n"),
        "no adapter named `zzz` (found: a)",
    );
    assert_error(
        &admix(&["score", "--model", m, "--adapter", "/nonexistent.safetensors"], b"hi\n"),
        "cannot open /nonexistent.safetensors",
    );
    // the happy path: three labels, probabilities that sum to one
    let out = admix(&["score", "--model", m, "--adapter", a, "--labels", "x,y,z"], b"good\nbad\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let p: f64 = v["probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((p - 1.0).abs() < 1e-5);
        assert!(["x", "y", "z"].contains(&v["label"].as_str().unwrap()));
    }
    assert_error(
        &admix(&["score", "--model", m, "--adapter", a, "--labels", "x,y"], b"hi\n"),
        "--labels names 2 labels but the head has 3",
    );
}

#[test]
fn output_file_is_written_atomically() {
    let dir = tiny_model();
    let out_path = dir.path().join("out.jsonl");
    let out = admix(
        &["embed", "--model", dir.path().to_str().unwrap(), "-o", out_path.to_str().unwrap()],
        b"a\nb\n",
    );
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&out_path).unwrap().lines().count(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // an unwritable destination fails cleanly and leaves nothing behind
    assert_error(
        &admix(
            &["embed", "--model", dir.path().to_str().unwrap(), "-o", "/nonexistent-dir/out.jsonl"],
            b"a\n",
        ),
        "cannot write",
    );
}
