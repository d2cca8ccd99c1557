//! Shared helpers for integration tests: where the fixtures and the fetched model are.
#![allow(dead_code)]

use std::path::PathBuf;

use admix::model::weights::WeightFile;

pub mod cli;
pub mod tiny;

/// The MiniLM oracle (HF transformers + AdapterHub reference outputs): `$ADMIX_FIXTURES`, or
/// ../shared/fixtures/minilm-oracle beside the checkout.
pub fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("ADMIX_FIXTURES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/minilm-oracle")
    });
    assert!(dir.is_dir(), "fixtures not found at {} (set ADMIX_FIXTURES)", dir.display());
    dir
}

pub fn fixture(name: &str) -> WeightFile {
    WeightFile::open(&fixture_dir().join(name)).unwrap()
}

/// The fetched MiniLM (`admix fetch`, or the README's test command, puts it there).
pub fn minilm_dir() -> PathBuf {
    let dir = admix::assets::default_model_dir();
    assert!(
        dir.join("model.safetensors").exists(),
        "the MiniLM model is not in {}: run `cargo run --release -- fetch` (the README's test command does)",
        dir.display()
    );
    dir
}

pub fn sentences() -> (Vec<String>, Vec<usize>) {
    let text = std::fs::read_to_string(fixture_dir().join("sentences.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = v["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let n = v["n_valid_tokens"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap() as usize).collect();
    (s, n)
}

/// Largest absolute difference.
pub fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}
