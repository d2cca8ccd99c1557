//! Fuzz targets, one per parser, on stable Rust with proptest: each case takes a valid seed file,
//! applies a few generated mutations (bit flips, interesting bytes and JSON values, truncation,
//! insertion, deletion, duplication of a span; half of the positions fall in the first 512 bytes,
//! where headers are) and hands the result to the parser. A case fails on a panic, an abort or a
//! non-finite number in a result the parser accepted; proptest then shrinks the mutation list.
//!
//! The test suite runs a fixed number of cases from a fixed seed (`ADMIX_FUZZ_CASES`, default 48
//! per target). Longer runs with fresh randomness (README, development):
//!
//!     ADMIX_FUZZ_SECONDS=600 cargo test --release --test fuzz -- --nocapture --test-threads 1
//!
//! Each target first checks that its unmutated seeds parse, so that a target that rejects
//! everything cannot pass unnoticed.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use admix::backend::cpu::Cpu;
use admix::data::input::{self, Format};
use admix::engine::Engine;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::serve::http::{self, Limits};
use admix::weights::WeightFile;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use safetensors::Dtype;
use serde_json::Value;

/// Where a mutation applies: a fraction of the length, or an offset into the first 512 bytes.
#[derive(Clone, Copy, Debug)]
enum At {
    Fraction(u16),
    Head(u16),
}

impl At {
    fn index(self, len: usize) -> usize {
        match self {
            At::Fraction(f) => (len as u64 * f as u64 / 65536) as usize,
            At::Head(h) => (h as usize).min(len),
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e999",
    b"-0",
    b"NaN",
    b"4294967296",
    b"18446744073709551615",
    b"99999999999999999999",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"\xff\xfe",
    b"\xEF\xBB\xBF",
    b"\r",
    b"\n",
    b"\t",
    b"\0",
    b"\r\n\r\n",
    b"Content-Length: 99999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\"F16\"",
    b"\"I64\"",
    b"\"BF16\"",
    b"\"F64\"",
    b"\"U8\"",
];

/// Values put at a random place of a JSON document.
fn interesting_json(i: u8) -> Value {
    let all = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1_000_000_000u64),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e300),
        serde_json::json!(-1e-300),
        serde_json::json!(0.5),
        serde_json::json!(""),
        serde_json::json!("gelu_new"),
        serde_json::json!("learned"),
        serde_json::json!(null),
        serde_json::json!(true),
        serde_json::json!([]),
        serde_json::json!([0, 99, -1]),
        serde_json::json!({}),
        serde_json::json!({"a": 0, "b": 0}),
    ];
    all[i as usize % all.len()].clone()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(At, u8),
    Set(At, u8),
    Interesting(At, u8),
    Truncate(At),
    Insert(At, Vec<u8>),
    Delete(At, u16),
    Duplicate(At, u16, At),
    /// replace leaf `n` (mod the number of leaves) of a JSON document by an interesting value
    Json(u16, u8),
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![any::<u16>().prop_map(At::Fraction), (0u16..512).prop_map(At::Head)]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (at(), 0u8..8).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (at(), any::<u8>()).prop_map(|(a, b)| Mutation::Set(a, b)),
        (at(), any::<u8>()).prop_map(|(a, i)| Mutation::Interesting(a, i)),
        at().prop_map(Mutation::Truncate),
        (at(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, v)| Mutation::Insert(a, v)),
        (at(), 1u16..256).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (at(), 1u16..256, at()).prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        (any::<u16>(), any::<u8>()).prop_map(|(n, v)| Mutation::Json(n, v)),
    ]
}

fn leaves(v: &mut Value) -> Vec<&mut Value> {
    if !(v.is_object() || v.as_array().is_some_and(|a| !a.is_empty())) {
        return vec![v];
    }
    match v {
        Value::Object(m) => m.values_mut().flat_map(leaves).collect(),
        Value::Array(a) => a.iter_mut().flat_map(leaves).collect(),
        _ => unreachable!("checked above"),
    }
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let len = b.len();
        match m {
            Mutation::Flip(a, bit) if len > 0 => {
                let i = a.index(len - 1);
                b[i] ^= 1 << bit;
            }
            Mutation::Set(a, v) if len > 0 => {
                let i = a.index(len - 1);
                b[i] = *v;
            }
            Mutation::Interesting(a, i) => {
                let v = INTERESTING[*i as usize % INTERESTING.len()];
                let at = a.index(len);
                let end = (at + v.len()).min(len);
                b.splice(at..end, v.iter().copied());
            }
            Mutation::Truncate(a) => b.truncate(a.index(len)),
            Mutation::Insert(a, v) => {
                let at = a.index(len);
                b.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(a, n) => {
                let at = a.index(len);
                b.drain(at..(at + *n as usize).min(len));
            }
            Mutation::Duplicate(a, n, to) => {
                let at = a.index(len);
                let span = b[at..(at + *n as usize).min(len)].to_vec();
                let to = to.index(len);
                b.splice(to..to, span);
            }
            Mutation::Json(n, v) => {
                if let Ok(mut doc) = serde_json::from_slice::<Value>(&b) {
                    let mut ls = leaves(&mut doc);
                    if !ls.is_empty() {
                        let k = *n as usize % ls.len();
                        *ls[k] = interesting_json(*v);
                        b = serde_json::to_vec_pretty(&doc).unwrap();
                    }
                }
            }
            _ => {}
        }
    }
    b
}

/// Runs `target` on mutations of `seeds` (each seed unmutated first: it must be accepted).
/// `target` returns whether the parser accepted the input; a panic or a failed check is a failure.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(usize, &[u8]) -> Result<bool, String>) {
    for (i, s) in seeds.iter().enumerate() {
        assert_eq!(target(i, s), Ok(true), "{name}: seed {i} is not accepted");
    }
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..6));
    let run = |cases: u32, rng: TestRng| -> (u64, u64) {
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, rng);
        let accepted = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |(i, muts)| {
            let bytes = apply(&seeds[i], &muts);
            match target(i, &bytes) {
                Ok(ok) => {
                    accepted.set(accepted.get() + ok as u64);
                    Ok(())
                }
                Err(e) => Err(TestCaseError::fail(e)),
            }
        });
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
        (cases as u64, accepted.get())
    };
    match std::env::var("ADMIX_FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()) {
        None => {
            let cases = std::env::var("ADMIX_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48);
            run(cases, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
        }
        Some(seconds) => {
            let (started, mut total, mut accepted) = (Instant::now(), 0, 0);
            while started.elapsed().as_secs_f64() < seconds {
                let (n, a) = run(200, TestRng::from_seed(RngAlgorithm::ChaCha, &rand_seed()));
                total += n;
                accepted += a;
            }
            let cpu = started.elapsed().as_secs_f64();
            println!(
                "fuzz {name}: {total} cases in {cpu:.0} s, {accepted} accepted by the parser, no failure"
            );
        }
    }
}

fn rand_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    s[..16].copy_from_slice(&t.to_le_bytes());
    s
}

fn finite(v: &[f32], what: &str) -> Result<(), String> {
    match v.iter().find(|x| !x.is_finite()) {
        Some(x) => Err(format!("{what}: accepted a non-finite value {x}")),
        None => Ok(()),
    }
}

/// A small safetensors file with every dtype the reader takes, at awkward offsets.
fn small_safetensors() -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16s: Vec<u8> =
        [half::f16::from_f32(0.5), half::f16::from_f32(-3.0)].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bf16s: Vec<u8> = [half::bf16::from_f32(2.0)].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i64s: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f64s: Vec<u8> = [0.125f64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("a.half", TensorView::new(Dtype::F16, vec![2], &f16s).unwrap()),
        ("b.weight", TensorView::new(Dtype::F32, vec![3, 1], &f32s).unwrap()),
        ("c.bf", TensorView::new(Dtype::BF16, vec![1], &bf16s).unwrap()),
        ("d.ids", TensorView::new(Dtype::I64, vec![1, 2], &i64s).unwrap()),
        ("e.ref", TensorView::new(Dtype::F64, vec![], &f64s).unwrap()),
    ];
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn fuzz_safetensors_reader() {
    let dir = tempfile::tempdir().unwrap();
    let variant = std::fs::read(common::fixture_dir().join("variant/adapter.safetensors")).unwrap();
    let seeds = vec![small_safetensors(), variant];
    let path = dir.path().join("x.safetensors");
    fuzz("safetensors", &seeds, |_, bytes| {
        std::fs::write(&path, bytes).unwrap();
        let Ok(w) = WeightFile::open(&path) else { return Ok(false) };
        let names: Vec<String> = w.names().map(String::from).collect();
        for n in &names {
            if let Ok(t) = w.tensor_any_shape(n) {
                finite(t.data(), n)?;
                if t.data().len() != t.shape().iter().product::<usize>() {
                    return Err(format!("{n}: {} values for shape {:?}", t.data().len(), t.shape()));
                }
            }
            let _ = w.ints(n);
            let _ = w.f64s(n);
        }
        Ok(true)
    });
}

#[test]
fn fuzz_model_directory() {
    // a tiny BERT: config.json, tokenizer.json, model.safetensors; one of them mutated per case
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    common::tiny::write_model(&seed_dir, 3, Dtype::F32, "");
    let files = ["config.json", "tokenizer.json", "model.safetensors"];
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(seed_dir.join(f)).unwrap()).collect();
    let model = dir.path().join("model");
    common::copy_files(&seed_dir, &model, Some(&files));
    fuzz("model directory", &seeds, |i, bytes| {
        std::fs::write(model.join(files[i]), bytes).unwrap();
        let result = (|| -> anyhow::Result<Vec<Vec<f32>>> {
            let m = ModelDir::open(&model, 16)?;
            let engine = Engine::new(Cpu, m, None, None)?;
            engine.embed_batch(&engine.tokenize(&[TextInput::single("a fuzzed model")])?)
        })();
        std::fs::copy(seed_dir.join(files[i]), model.join(files[i])).unwrap();
        match result {
            Ok(rows) => {
                finite(&rows.concat(), "embedding")?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    });
}

#[test]
fn fuzz_adapter_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = common::fixture_dir().join("variant");
    let files = ["adapter_config.json", "head_config.json", "adapter.safetensors", "model_head.safetensors"];
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(seed_dir.join(f)).unwrap()).collect();
    let ck = dir.path().join("ck");
    common::copy_files(&seed_dir, &ck, Some(&files));
    fuzz("adapter checkpoint", &seeds, |i, bytes| {
        std::fs::write(ck.join(files[i]), bytes).unwrap();
        let result = admix::classifier::checkpoint::load(&ck, 6, 384);
        std::fs::write(ck.join(files[i]), &seeds[i]).unwrap();
        let Ok(loaded) = result else { return Ok(false) };
        if loaded.labels.len() != loaded.head.num_labels {
            return Err(format!(
                "{} label names for {} outputs",
                loaded.labels.len(),
                loaded.head.num_labels
            ));
        }
        if let Some(a) = &loaded.adapter {
            if a.layers.len() != 6 {
                return Err(format!("an adapter of {} layers for a 6-layer model", a.layers.len()));
            }
            for l in &a.layers {
                finite(l.output.up_w.data(), "adapter")?;
            }
        }
        finite(loaded.head.out.w.data(), "head")?;
        Ok(true)
    });
}

#[test]
fn fuzz_text_and_labelled_inputs() {
    let seeds: Vec<Vec<u8>> = vec![
        b"a good film\nbad\n\nanother line\r\n".to_vec(),
        b"label\ttext\ttext_pair\n1\thello\tworld\n0\tbye\tnow\n".to_vec(),
        b"text,label\n\"good, very\",pos\nbad,neg\n".to_vec(),
        b"{\"text\":\"a\",\"label\":1}\n{\"text\":\"b\",\"text_pair\":\"c\",\"label\":0}\n".to_vec(),
    ];
    let formats = [Format::Text, Format::Tsv, Format::Csv, Format::Jsonl];
    let dir = tempfile::tempdir().unwrap();
    fuzz("inputs", &seeds, |i, bytes| {
        let mut accepted = false;
        for f in formats {
            if let Ok(got) = input::read(bytes, f, "fuzz") {
                accepted |= f == formats[i];
                if got.records.iter().any(|r| r.input.text.trim().is_empty()) {
                    return Err(format!("{f:?}: an empty text was accepted"));
                }
            }
        }
        // the labelled readers (training data) by extension; seed 0 (plain text) has no labels
        for ext in ["tsv", "csv", "jsonl"] {
            let p = dir.path().join(format!("d.{ext}"));
            std::fs::write(&p, bytes).unwrap();
            if let Ok(ex) = admix::data::labeled::read(&p) {
                accepted |= i > 0 && ext == ["", "tsv", "csv", "jsonl"][i];
                if ex.iter().any(|e| e.text.trim().is_empty()) {
                    return Err(format!("{ext}: an empty training text was accepted"));
                }
            }
        }
        Ok(accepted)
    });
}

#[test]
fn fuzz_http_request_reader() {
    let body = br#"{"texts": ["a good film", "bad"]}"#;
    let post = [
        format!("POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes(),
        body.to_vec(),
    ]
    .concat();
    let seeds = vec![
        post.clone(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n".to_vec(),
        [post.clone(), post].concat(),
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let limits =
        Limits { max_head_bytes: 8 << 10, max_body_bytes: 64 << 10, request_timeout: Duration::from_secs(2) };
    fuzz("http", &seeds, |_, bytes| {
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reader = BufReader::new(server);
        let mut requests = 0;
        for _ in 0..16 {
            match http::read_request(&mut reader, &limits) {
                Ok(req) => {
                    requests += 1;
                    if req.body.len() > limits.max_body_bytes {
                        return Err(format!("a body of {} bytes passed the limit", req.body.len()));
                    }
                    if req.method == "POST" {
                        let _ = admix::serve::parse_score_request(&req.body, 64, 20_000);
                    }
                }
                Err(e) => {
                    let _ = e.response();
                    break;
                }
            }
        }
        Ok(requests > 0)
    });
}

#[test]
fn mutations_change_the_seed_and_json_edits_hit_a_leaf() {
    let seed = br#"{"a": 1, "b": [2, 3]}"#;
    let out = apply(seed, &[Mutation::Json(1, 2)]);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["b"][0], 1_000_000_000u64);
    assert_eq!(apply(seed, &[Mutation::Truncate(At::Head(3))]), b"{\"a");
    assert_eq!(apply(b"abc", &[Mutation::Delete(At::Head(1), 1)]), b"ac");
}
