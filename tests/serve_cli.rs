//! `admix serve` and `admix score --stream` as a user runs them, on the real MiniLM with the
//! fixture's AdapterHub adapters: one adapter's probabilities are AdapterHub's, a two-adapter
//! mixture's β is the entropy rule on AdapterHub's member predictions and its probabilities are
//! those of the weight-space mix with that β; SIGTERM drains and exits 0.

mod common;

use admix::adapter::mix::{mix_adapters, mix_heads};
use admix::backend::cpu::Cpu;
use admix::engine::Engine;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::weights::WeightFile;
use common::cli::{admix, assert_error};
use common::serve::Serve;
use serde_json::{json, Value};

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>()
}

fn adapters_file() -> String {
    common::fixture_dir().join("adapter_weights.safetensors").to_str().unwrap().to_string()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn one_adapter_serves_adapterhub_probabilities() {
    let (sentences, _) = common::sentences();
    let (_, logits) = common::fixture("adapter_oracle.safetensors").f64s("logits_f64").unwrap();
    let srv = Serve::start(&common::minilm_dir(), &["--adapter", &format!("{}#clean", adapters_file())]);
    let preds = srv.score(&sentences);
    assert_eq!(preds.len(), 8);
    for (i, p) in preds.iter().enumerate() {
        let want = softmax(&logits[2 * i..2 * i + 2]);
        let got = floats(&p["probs"]);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-5, "sentence {i}: {got:?} vs AdapterHub {want:?}");
        assert_eq!(floats(&p["beta"]), vec![1.0]);
        assert_eq!(p["truncated"], i == 3, "sentence 3 is the one over 128 tokens");
    }
    let (ok, rest) = srv.terminate();
    assert!(ok, "{rest}");
    assert!(rest.contains("stopped after 8 text(s)"), "{rest}");
}

#[test]
fn the_kernels_serve_on_the_emulator() {
    // the CUDA backend's path (bf16 kernels, here on the SIMT emulator) behind the same server
    let (sentences, _) = common::sentences();
    let (_, logits) = common::fixture("adapter_oracle.safetensors").f64s("logits_f64").unwrap();
    let srv = Serve::start(
        &common::minilm_dir(),
        &["--adapter", &format!("{}#clean", adapters_file()), "--device", "emu"],
    );
    let preds = srv.score(&sentences[..2]);
    for (i, p) in preds.iter().enumerate() {
        let want = softmax(&logits[2 * i..2 * i + 2]);
        let got = floats(&p["probs"]);
        assert!((got[0] - want[0]).abs() < 2e-2, "sentence {i}: {got:?} vs AdapterHub {want:?} (bf16)");
    }
    let (ok, rest) = srv.terminate();
    assert!(ok, "{rest}");
}

#[test]
fn two_adapters_mix_by_entropy_in_weight_space() {
    let (sentences, _) = common::sentences();
    let oracle = common::fixture("adapter_oracle.safetensors");
    let (_, clean) = oracle.f64s("logits_f64").unwrap();
    let (_, adv) = oracle.f64s("adv.logits").unwrap();
    let file = adapters_file();
    let tau = 0.5;
    let srv = Serve::start(
        &common::minilm_dir(),
        &[
            "--adapter",
            &format!("{file}#clean"),
            "--adapter",
            &format!("{file}#adv"),
            "--tau",
            &tau.to_string(),
            "--max-wait-us",
            "0",
        ],
    );
    // one request per sentence and one with all of them: batching must not change a text's answer
    let together = srv.score(&sentences);
    let model = ModelDir::open(&common::minilm_dir(), 128).unwrap();
    let w = WeightFile::open(std::path::Path::new(&file)).unwrap();
    let load = |n: &str| admix::adapter::load_with_head(&w, Some(n), None, None, 6, 384).unwrap();
    let ((ca, ch), (aa, ah)) = (load("clean"), load("adv"));
    for (i, s) in sentences.iter().enumerate() {
        let alone = srv.score(std::slice::from_ref(s)).remove(0);
        let h = [entropy(&softmax(&clean[2 * i..2 * i + 2])), entropy(&softmax(&adv[2 * i..2 * i + 2]))];
        let want_beta = softmax(&[-h[0] / tau, -h[1] / tau]);
        for got in [&alone, &together[i]] {
            let beta = floats(&got["beta"]);
            assert!((beta[0] - want_beta[0]).abs() < 1e-4, "sentence {i}: β {beta:?} vs {want_beta:?}");
        }
        // the probabilities of the adapter and head materialised at this β
        let b: Vec<f32> = floats(&alone["beta"]).iter().map(|&x| x as f32).collect();
        let engine = Engine::new(
            Cpu,
            ModelDir::open(&model.dir, 128).unwrap(),
            Some(mix_adapters(&[&ca, &aa], &b).unwrap()),
            Some(mix_heads(&[&ch, &ah], &b).unwrap()),
        )
        .unwrap();
        let batch = engine.tokenize(&[TextInput::single(s.clone())]).unwrap();
        let want = &engine.classify_batch(&batch).unwrap()[0].probs;
        for got in [&alone, &together[i]] {
            let p = floats(&got["probs"]);
            assert!((p[0] - want[0] as f64).abs() < 1e-5, "sentence {i}: {p:?} vs the weight mix {want:?}");
        }
    }
    let (ok, rest) = srv.terminate();
    assert!(ok, "{rest}");
}

#[test]
fn a_routed_mixture_serves_what_score_gives() {
    let (sentences, _) = common::sentences();
    let dir = tempfile::tempdir().unwrap();
    let router = dir.path().join("router");
    common::random_router(&router);
    let file = adapters_file();
    let (c, a) = (format!("{file}#clean"), format!("{file}#adv"));
    let flags = ["--adapter", &c, "--adapter", &a, "--router", router.to_str().unwrap()];
    let srv = Serve::start(&common::minilm_dir(), &[&flags[..], &["--max-wait-us", "0"]].concat());
    let served = srv.score(&sentences);
    let (ok, rest) = srv.terminate();
    assert!(ok, "{rest}");
    let input: String = sentences.iter().map(|s| format!("{}\n", json!({ "text": s }))).collect();
    let model = common::minilm_dir();
    let args =
        [&["score", "-", "--format", "jsonl", "--model", model.to_str().unwrap()][..], &flags[..]].concat();
    let out = admix(&args, input.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scored.len(), sentences.len());
    let mut spread = 0f64;
    for (i, (srv, cli)) in served.iter().zip(&scored).enumerate() {
        let (b, want) = (floats(&srv["beta"]), floats(&cli["beta"]));
        spread = spread.max((b[0] - 0.5).abs());
        for (got, want) in [(b, want), (floats(&srv["probs"]), floats(&cli["probs"]))] {
            let e = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
            assert!(e < 1e-5, "sentence {i}: serve {got:?} vs score {want:?}");
        }
    }
    // the router's β is per input, not a constant
    assert!(spread > 1e-3, "every β is about uniform");
}

#[test]
fn bad_serve_settings_are_one_error_line() {
    let model = common::minilm_dir();
    let m = model.to_str().unwrap();
    let file = adapters_file();
    assert_error(&admix(&["serve", "--model", m, "--adapter", &file], b""), "adapter");
    assert_error(&admix(&["serve", "--model", m, "--adapter", &format!("{file}#nope")], b""), "nope");
    assert_error(&admix(&["serve", "--model", m, "--adapter", "/no/such/dir"], b""), "/no/such/dir");
    let clean = format!("{file}#clean");
    assert_error(
        &admix(&["serve", "--model", m, "--adapter", &clean, "--tau", "0"], b""),
        "--tau must be positive",
    );
    assert_error(&admix(&["serve", "--model", m, "--adapter", &clean, "--max-batch", "0"], b""), "batch");
    assert_error(
        &admix(&["serve", "--model", m, "--adapter", &clean, "--addr", "256.0.0.1:1"], b""),
        "cannot listen",
    );
    assert_error(&admix(&["serve", "--model", m, "--adapter", &clean, "--device", "cuda"], b""), "cuda");
    assert_error(
        &admix(&["loadtest", "--addr", "127.0.0.1:1", "--texts", &file, "--duration-s", "0"], b""),
        "--duration-s",
    );
}

#[test]
fn score_stream_answers_each_line_as_score_does() {
    let model = common::minilm_dir();
    let m = model.to_str().unwrap();
    let file = adapters_file();
    let (sentences, _) = common::sentences();
    let mut input = String::new();
    for (i, s) in sentences.iter().take(3).enumerate() {
        input += &format!("{}\n", json!({"text": s, "id": format!("s{i}")}));
    }
    input += &format!("{}\n", json!(sentences[3]));
    input += "not json\n\n{\"text\": \"  \"}\n";
    let out = admix(
        &["score", "--stream", "--model", m, "--adapter", &file, "--adapter-name", "clean"],
        input.as_bytes(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("2 line(s) could not be scored (first: line 5: not JSON"), "{err}");
    let rows: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["id"], "s0");
    assert_eq!(rows[3]["line"], 4);
    assert!(rows[3].get("id").is_none());
    assert_eq!((rows[4]["line"].as_u64(), rows[5]["line"].as_u64()), (Some(5), Some(7)));
    assert!(rows[5]["error"].as_str().unwrap().contains("empty text"));
    // the same texts through `admix score`
    let plain: String = sentences.iter().take(4).map(|s| format!("{}\n", s.replace('\n', " "))).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, plain).unwrap();
    let want = admix(
        &["score", path.to_str().unwrap(), "--model", m, "--adapter", &file, "--adapter-name", "clean"],
        b"",
    );
    assert!(want.status.success(), "{}", String::from_utf8_lossy(&want.stderr));
    let want: Vec<Value> =
        String::from_utf8(want.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for i in 0..4 {
        assert_eq!(rows[i]["label_id"], want[i]["label_id"]);
        let (a, b) = (floats(&rows[i]["probs"]), floats(&want[i]["probs"]));
        assert!((a[0] - b[0]).abs() < 1e-5, "line {}: {a:?} vs {b:?}", i + 1);
    }
    // a clean stream exits 0
    let ok = admix(
        &["score", "--stream", "--model", m, "--adapter", &file, "--adapter-name", "clean"],
        b"\"fine\"\n",
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_error(&admix(&["score", "--stream", "in.txt", "--adapter", &file], b""), "--stream reads stdin");
}

#[test]
fn a_static_beta_serves_adapterhubs_mix() {
    // `--beta 0.3,0.7` over clean and adv is the fixture's `mix` adapter (0.3·clean + 0.7·adv)
    let (sentences, _) = common::sentences();
    let (_, logits) = common::fixture("adapter_oracle.safetensors").f64s("mix.logits").unwrap();
    let file = adapters_file();
    let srv = Serve::start(
        &common::minilm_dir(),
        &["--adapter", &format!("{file}#clean"), "--adapter", &format!("{file}#adv"), "--beta", "0.3,0.7"],
    );
    let preds = srv.score(&sentences);
    for (i, p) in preds.iter().enumerate() {
        let want = softmax(&logits[2 * i..2 * i + 2]);
        let got = floats(&p["probs"]);
        assert!((got[0] - want[0]).abs() < 1e-5, "sentence {i}: {got:?} vs AdapterHub's mix {want:?}");
        let beta = floats(&p["beta"]);
        assert!((beta[0] - 0.3).abs() < 1e-7 && (beta[1] - 0.7).abs() < 1e-7, "{beta:?}");
    }
    let (ok, rest) = srv.terminate();
    assert!(ok, "{rest}");
}
