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

/// MiniLM + the fixture's seq_bn adapter `clean` and head, on the CPU, with the fixture's 8
/// sentences as one padded batch and their labels.
pub fn fixture_model(
) -> (admix::train::model::Model<admix::backend::cpu::Cpu>, admix::model::tokenizer::TokenBatch, Vec<u32>) {
    use admix::adapter::{Adapter, ClassificationHead};
    use admix::backend::{cpu::Cpu, Activation};
    use admix::model::tokenizer::TextInput;
    let m = admix::model::ModelDir::open(&minilm_dir(), 128).unwrap();
    let (s, _) = sentences();
    let inputs: Vec<TextInput> = s.iter().map(TextInput::single).collect();
    let batch = m.tokenizer.encode(&inputs).unwrap();
    let w = fixture("adapter_weights.safetensors");
    let adapter = Adapter::load(&w, "clean", 6, 384, Activation::Relu).unwrap();
    let head = ClassificationHead::load(&w, "clean", 384).unwrap();
    let oracle = fixture("adapter_oracle.safetensors");
    let labels: Vec<u32> = oracle.ints("labels").unwrap().1.iter().map(|&l| l as u32).collect();
    let model = admix::train::model::Model::new(&Cpu, m.bert().unwrap(), Some(adapter), head, false).unwrap();
    (model, batch, labels)
}

/// "the movie was really good" → pos, "… awful" → neg: a toy task learnable from one word.
pub fn toy_dataset(n: usize, seed: u64) -> String {
    let mut rng = admix::train::rng::Rng::new(seed);
    let mut pick = |xs: &[&'static str]| xs[(rng.next_u64() % xs.len() as u64) as usize];
    let mut out = String::from("text\tlabel\n");
    for i in 0..n {
        let positive = i % 2 == 0;
        let word = if positive {
            pick(&["good", "great", "wonderful", "superb"])
        } else {
            pick(&["bad", "awful", "terrible", "boring"])
        };
        let subject = pick(&["the movie", "this film", "the plot", "the cast", "it"]);
        let adverb = pick(&["really", "truly", "quite", "so", "very"]);
        out += &format!("{subject} was {adverb} {word}\t{}\n", if positive { "pos" } else { "neg" });
    }
    out
}
