//! Every command on a RoBERTa: the tiny RoBERTa of tests/fixtures/roberta-tiny (its own byte-level
//! BPE tokenizer, RoBERTa's positions, one token type). `embed`, `score` and `serve` give the
//! reference's outputs; `train`, `eval`, every attack and `mixup` run on it end to end; `bench`
//! has a roberta-base row.

mod common;

use std::process::Output;

use common::cli::admix;
use common::serve::Serve;
use common::ToyDir;
use serde_json::Value;

fn model() -> String {
    common::roberta_dir().join("model").to_str().unwrap().to_string()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "admix failed: {err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn lines(out: &Output) -> Vec<Value> {
    ok(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().fold(f64::MIN, |a, &b| a.max(b));
    let z: f64 = l.iter().map(|v| (v - m).exp()).sum();
    l.iter().map(|v| (v - m).exp() / z).collect()
}

/// The fixture's sentences, one per line.
fn sentences() -> Vec<String> {
    let (single, _) = common::roberta_inputs();
    single.into_iter().map(|t| t.text).collect()
}

#[test]
fn embed_score_and_serve_give_the_references_outputs() {
    let m = model();
    let stdin = sentences().join("\n") + "\n";
    let oracle = common::roberta_oracle();
    // without --max-len: 128 capped at the model's 40 positions
    let got: Vec<f64> = lines(&admix(&["embed", "--model", &m], stdin.as_bytes()))
        .iter()
        .flat_map(|r| floats(&r["embedding"]))
        .collect();
    let (_, want) = oracle.f64s("single.sentence_embedding_f64").unwrap();
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert_eq!(got.len(), want.len());
    assert!(err < 1e-5, "embed: max abs error {err:.2e}");

    let (_, logits) = oracle.f64s("houlsby.logits_f64").unwrap();
    let adapter = common::roberta_dir().join("houlsby");
    let adapter = adapter.to_str().unwrap();
    let rows = lines(&admix(&["score", "-", "--model", &m, "--adapter", adapter], stdin.as_bytes()));
    assert_eq!(rows.len(), 6);
    for (i, r) in rows.iter().enumerate() {
        let want = softmax(&logits[3 * i..3 * i + 3]);
        let err = floats(&r["probs"]).iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-5, "score, sentence {i}: max abs error {err:.2e}");
    }

    let srv = Serve::start(std::path::Path::new(&m), &["--adapter", adapter]);
    let preds = srv.score(&sentences());
    for (i, p) in preds.iter().enumerate() {
        let want = softmax(&logits[3 * i..3 * i + 3]);
        let err = floats(&p["probs"]).iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-5, "serve, sentence {i}: max abs error {err:.2e}");
        assert_eq!(p["truncated"], i == 4, "sentence 4 is the one over 40 tokens");
    }
    let (stopped, rest) = srv.terminate();
    assert!(stopped, "{rest}");
}

#[test]
fn trains_evaluates_attacks_and_runs_the_pipeline() {
    let env = ToyDir::new(&[("train.tsv", 96, 1), ("dev.tsv", 24, 2), ("test.tsv", 32, 3)]);
    let m = model();
    let (train, dev, test, run) = (env.s("train.tsv"), env.s("dev.tsv"), env.s("test.tsv"), env.s("run"));
    // a random 32-wide RoBERTa with a 400-token vocabulary learns the toy task with a wider
    // bottleneck, a higher rate and more epochs than the tiny BERT of the other tests
    let common_flags =
        ["--epochs", "30", "--lr", "3e-2", "--batch-size", "16", "--dropout", "0", "--max-len", "40"];
    let mut args = vec![
        "train",
        "--model",
        &m,
        "--train",
        &train,
        "--dev",
        &dev,
        "--out",
        &run,
        "--adapter",
        "double_seq_bn",
    ];
    args.extend(common_flags);
    args.extend(["--reduction", "4"]);
    ok(&admix(&args, b""));
    // AdapterHub's RoBERTa layout
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("run/best/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (cfg["model_class"].as_str(), cfg["model_type"].as_str()),
        (Some("RobertaAdapterModel"), Some("roberta"))
    );
    let names = common::read_tensors(&env.p("run/best/adapter.safetensors"));
    assert!(names.iter().all(|(n, _, _)| n.starts_with("roberta.encoder.layer.")), "{:?}", names[0].0);
    let best = env.s("run/best");
    let eval: Value =
        serde_json::from_str(&ok(&admix(&["eval", &best, "--model", &m, "--data", &dev, "--json"], b"")))
            .unwrap();
    assert!(eval["accuracy"].as_f64().unwrap() >= 0.9, "{eval}");

    for attack in ["deepwordbug", "pwws", "textfooler", "textbugger", "hotflip", "pgd", "fgsm"] {
        let out = env.s(&format!("attack-{attack}"));
        let extra: &[&str] =
            if attack == "pgd" || attack == "fgsm" { &["--eps", "3"] } else { &["--query-budget", "300"] };
        let mut args = vec![
            "attack",
            "--attack",
            attack,
            "--adapter",
            &best,
            "--model",
            &m,
            "--data",
            &dev,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        let stdout = ok(&admix(&args, b""));
        assert!(stdout.contains("| Attack success rate"), "{attack}: {stdout}");
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(env.p(&format!("attack-{attack}/summary.json"))).unwrap(),
        )
        .unwrap();
        let s = &summary["summary"];
        let n = ["successful", "failed", "skipped"].iter().map(|k| s[k].as_u64().unwrap()).sum::<u64>();
        assert_eq!(n, 24, "{attack}: {s}");
        assert!(s["successful"].as_u64().unwrap() > 0, "{attack} fooled the toy model on no example: {s}");
    }

    let out = env.s("mixup");
    let mut args = vec![
        "mixup",
        "--model",
        &m,
        "--train",
        &train,
        "--dev",
        &dev,
        "--test",
        &test,
        "--out",
        &out,
        "--full-epochs",
        "2",
        "--adaptive-examples",
        "6",
        "--taus",
        "0.1,1",
        "--beta-step",
        "0.25",
        "--known",
        "deepwordbug",
        "--unseen",
        "textbugger",
    ];
    args.extend(common_flags);
    ok(&admix(&args, b""));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("mixup/report.json")).unwrap()).unwrap();
    let methods: Vec<&str> =
        report["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for want in [
        "clean adapter",
        "adversarial adapter",
        "full fine-tuning",
        "Model Soup",
        "Adapter Soup",
        "AdpMixup, entropy β",
    ] {
        assert!(methods.iter().any(|m| m.starts_with(want)), "{want} missing from {methods:?}");
    }
}

#[test]
fn bench_has_a_roberta_base_row() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let stdout = ok(&admix(
        &[
            "bench",
            "--models",
            "roberta-base",
            "--batches",
            "1",
            "--seq",
            "16",
            "--work-batch",
            "1",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--suites",
            "model",
            "--out",
            json.to_str().unwrap(),
        ],
        b"",
    ));
    assert!(stdout.contains("| model | roberta-base | forward batch 1 |"), "{stdout}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(v["rows"].as_array().unwrap().iter().all(|r| r["model"] == "roberta-base"), "{v}");
}

#[test]
fn an_adapter_saved_for_another_model_type_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("bert-adapter");
    common::copy_files(&common::roberta_dir().join("pfeiffer"), &ck, None);
    for f in ["adapter_config.json", "head_config.json"] {
        let text = std::fs::read_to_string(ck.join(f)).unwrap();
        std::fs::write(ck.join(f), text.replace("\"model_type\": \"roberta\"", "\"model_type\": \"bert\""))
            .unwrap();
    }
    let out = admix(
        &["score", "-", "--model", &model(), "--adapter", ck.to_str().unwrap(), "--max-len", "40"],
        b"a sentence\n",
    );
    common::cli::assert_error(&out, "the checkpoint was saved for a `bert` model");
}
