//! One way to name a classifier on `score`, `eval` and `attack`: `--adapter DIR|FILE[#NAME]`,
//! repeated for the AdpMixup mixture, with entropy β (`--tau`) or a static `--beta`.
//!
//! The reference is AdapterHub's: the fixture file holds adapters `clean`, `adv` and `mix` =
//! 0.3·clean + 0.7·adv over every adapter and head tensor, and the logits PyTorch computed with
//! `mix` (`mix.logits`). `--adapter F#clean --adapter F#adv --beta 0.3,0.7` must give those
//! logits: on the CPU to f32 precision, on the emulator (the CUDA kernels, bf16) within bf16's.

mod common;

use common::cli::{admix, assert_error};
use serde_json::{json, Value};

fn file() -> String {
    common::fixture_dir().join("adapter_weights.safetensors").to_str().unwrap().to_string()
}

/// The fixture's labels of its eight sentences.
fn labels() -> Vec<usize> {
    let text = std::fs::read_to_string(common::fixture_dir().join("sentences.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize).collect()
}

/// The fixture's eight sentences with their labels as a JSONL input file (texts kept exactly).
fn sentences_file(dir: &std::path::Path) -> String {
    let (sentences, _) = common::sentences();
    let labels = labels();
    let text: String = sentences
        .iter()
        .zip(&labels)
        .map(|(s, l)| format!("{}\n", json!({"text": s, "label": l.to_string()})))
        .collect();
    let path = dir.join("sentences.jsonl");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn rows(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn score(input: &str, extra: &[&str]) -> Vec<Value> {
    let model = common::minilm_dir();
    // the fixture's sentences were run with a limit of 128 tokens (the default)
    let mut args = vec!["score", input, "--model", model.to_str().unwrap(), "--max-len", "128"];
    args.extend_from_slice(extra);
    rows(&admix(&args, b""))
}

/// `--beta 0.3,0.7` against AdapterHub's logits of the `mix` adapter: the largest absolute error
/// (CPU) or the relative error ‖got − want‖ / ‖want‖ (emulator, bf16) must be within `tol`.
fn static_mix_matches_adapterhub(device: &[&str], relative: bool, tol: f64) {
    let dir = tempfile::tempdir().unwrap();
    let input = sentences_file(dir.path());
    let f = file();
    let clean = format!("{f}#clean");
    let adv = format!("{f}#adv");
    let mut args = vec!["--adapter", &clean, "--adapter", &adv, "--beta", "0.3,0.7"];
    args.extend_from_slice(device);
    let got = score(&input, &args);
    let device = device.join(" ");
    let (_, want) = common::fixture("adapter_oracle.safetensors").f64s("mix.logits").unwrap();
    assert_eq!(got.len(), 8);
    let logits: Vec<f64> = got.iter().flat_map(|r| floats(&r["logits"])).collect();
    assert_eq!(logits.len(), want.len());
    let err = if relative {
        let d: f64 = logits.iter().zip(&want).map(|(g, w)| (g - w).powi(2)).sum();
        (d / want.iter().map(|w| w * w).sum::<f64>()).sqrt()
    } else {
        logits.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max)
    };
    eprintln!("{device}: error {err:.2e} against AdapterHub's mix logits");
    assert!(err < tol, "{device}: error {err:.2e} against AdapterHub's mix logits (bound {tol:.0e})");
    for row in &got {
        let (l, p) = (floats(&row["logits"]), floats(&row["probs"]));
        let z: f64 = l.iter().map(|l| l.exp()).sum();
        assert!((p[1] - l[1].exp() / z).abs() < 1e-6);
        assert_eq!(row["label_id"].as_u64().unwrap() as usize, if l[1] > l[0] { 1 } else { 0 });
    }
}

#[test]
fn a_static_beta_is_the_weight_space_mix_on_the_cpu() {
    static_mix_matches_adapterhub(&["--device", "cpu"], false, 1e-5);
}

#[test]
fn a_static_beta_is_the_weight_space_mix_in_bf16_on_the_cpu() {
    if !admix::backend::cpu::bf16::available() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            admix(&["score", &sentences_file(dir.path()), "--adapter", &file(), "--precision", "bf16"], b"");
        assert_error(&out, "AVX512-BF16");
        return;
    }
    // bf16 GEMM inputs, everything else f32 (measured 4.5e-3; the emulator, bf16 throughout: 1.1e-2)
    static_mix_matches_adapterhub(&["--device", "cpu", "--precision", "bf16"], true, 1e-2);
}

#[test]
fn a_static_beta_is_the_weight_space_mix_on_the_emulator() {
    // bf16 storage and activations through six layers: the model tests' bound
    static_mix_matches_adapterhub(&["--device", "emu"], true, 3e-2);
}

#[test]
fn weights_one_and_zero_are_the_first_adapter_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = sentences_file(dir.path());
    let f = file();
    let alone = score(&input, &["--adapter", &format!("{f}#clean")]);
    let mixed = score(
        &input,
        &["--adapter", &format!("{f}#clean"), "--adapter", &format!("{f}#adv"), "--beta", "1,0"],
    );
    assert_eq!(alone.len(), mixed.len());
    for (a, m) in alone.iter().zip(&mixed) {
        assert_eq!(a["logits"], m["logits"]);
        assert_eq!(a["probs"], m["probs"]);
    }
    // `--adapter-name` is FILE#NAME
    let named = score(&input, &["--adapter", &f, "--adapter-name", "clean"]);
    assert_eq!(named, alone);
}

#[test]
fn entropy_beta_reports_each_inputs_weights() {
    let dir = tempfile::tempdir().unwrap();
    let input = sentences_file(dir.path());
    let f = file();
    let rows = score(
        &input,
        &["--adapter", &format!("{f}#clean"), "--adapter", &format!("{f}#adv"), "--tau", "0.1"],
    );
    assert_eq!(rows.len(), 8);
    for r in &rows {
        let beta = floats(&r["beta"]);
        assert_eq!(beta.len(), 2);
        assert!((beta.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{beta:?}");
        assert!(r.get("logits").is_none(), "a per-input mixture has no single logit vector");
    }
}

#[test]
fn bad_mixing_weights_are_one_clear_error() {
    let f = file();
    let m = common::minilm_dir();
    let m = m.to_str().unwrap();
    let (c, a) = (format!("{f}#clean"), format!("{f}#adv"));
    let run = |extra: &[&str]| {
        let mut args = vec!["score", "--model", m, "--adapter", &c, "--adapter", &a];
        args.extend_from_slice(extra);
        admix(&args, b"good film\n")
    };
    assert_error(&run(&["--beta", "0.5,0.6"]), "--beta weights must sum to 1 (they sum to 1.1");
    assert_error(&run(&["--beta", "0.2,0.3,0.5"]), "--beta gives 3 weight(s) for 2 adapters");
    assert_error(&run(&["--beta", "1.5,-0.5"]), "--beta weights must be in [0, 1]");
    assert_error(&run(&["--tau", "0"]), "--tau must be positive");
    assert_error(
        &admix(&["score", "--model", m, "--adapter", &c, "--beta", "1"], b"good film\n"),
        "--beta mixes two or more adapters",
    );
    assert_error(&admix(&["score", "--model", m], b"good film\n"), "no classifier given");
    assert_error(&run(&["--temperatures", "1"]), "--temperatures gives 1 temperature(s) for 2 adapters");
    assert_error(&run(&["--temperatures", "1,0"]), "--temperatures must be positive");
}

#[test]
fn bad_router_settings_are_one_clear_error() {
    use admix::adapter::router::{Router, RouterConfig};
    let f = file();
    let m = common::minilm_dir();
    let m = m.to_str().unwrap();
    let (c, a) = (format!("{f}#clean"), format!("{f}#adv"));
    let dir = tempfile::tempdir().unwrap();
    // a router over three members cannot route two
    let config = RouterConfig::for_mixture(vec!["a".into(), "b".into(), "c".into()], 2, 384);
    let width = config.features;
    let three = dir.path().join("three");
    Router::init(config, vec![0.0; width], vec![1.0; width], 1).unwrap().save(&three).unwrap();
    let three = three.to_str().unwrap();
    let score = |extra: &[&str]| admix(&[&["score", "--model", m][..], extra].concat(), b"good film\n");
    assert_error(&score(&["--adapter", &c, "--adapter", &a, "--router", three]), "routes 3 members");
    assert_error(
        &score(&["--adapter", &c, "--router", three]),
        "--router routes between two or more --adapter",
    );
    assert_error(
        &score(&["--adapter", &c, "--adapter", &a, "--router", "/nonexistent"]),
        "no such directory",
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_error(
        &score(&["--adapter", &c, "--adapter", &a, "--router", empty.to_str().unwrap()]),
        "not a router directory",
    );
}

#[test]
fn eval_judges_a_mixture_as_score_predicts_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = sentences_file(dir.path());
    let f = file();
    let m = common::minilm_dir();
    let (c, a) = (format!("{f}#clean"), format!("{f}#adv"));
    for mixing in [vec!["--beta", "0.3,0.7"], vec!["--tau", "0.1"]] {
        let mut args = vec!["eval", "--model", m.to_str().unwrap(), "--data", &input];
        args.extend(["--adapter", &c, "--adapter", &a, "--json"]);
        args.extend(mixing.iter().copied());
        let out = admix(&args, b"");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let metrics: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut sargs = vec!["--adapter", c.as_str(), "--adapter", a.as_str()];
        sargs.extend(mixing.iter().copied());
        let scored = score(&input, &sargs);
        let labels = labels();
        let right =
            scored.iter().zip(&labels).filter(|(r, &l)| r["label_id"].as_u64() == Some(l as u64)).count();
        assert_eq!(metrics["examples"], 8);
        let acc = metrics["accuracy"].as_f64().unwrap();
        assert!((acc - right as f64 / 8.0).abs() < 1e-12, "{mixing:?}: eval {acc}, score {right}/8");
        // the loss is the mean cross-entropy of the probabilities score prints
        let ce: f64 =
            scored.iter().zip(&labels).map(|(r, &l)| -floats(&r["probs"])[l].max(1e-30).ln()).sum::<f64>()
                / 8.0;
        assert!((metrics["loss"].as_f64().unwrap() - ce).abs() < 1e-5, "{mixing:?}");
    }
}

#[test]
fn attack_takes_the_same_mixtures() {
    let dir = tempfile::tempdir().unwrap();
    let input = sentences_file(dir.path());
    let f = file();
    let m = common::minilm_dir();
    let (c, a) = (format!("{f}#clean"), format!("{f}#adv"));
    let out_dir = dir.path().join("atk");
    let base = ["attack", "--model", m.to_str().unwrap(), "--data", &input, "-n", "3"];
    // a mixture with per-input β is attacked as a whole by a black-box attack
    let mut args = base.to_vec();
    args.extend([
        "--attack",
        "deepwordbug",
        "--adapter",
        &c,
        "--adapter",
        &a,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let out = admix(&args, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 3);
    let job: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(job["victim"]["sources"].as_array().unwrap().len(), 2);
    assert_eq!(job["victim"]["mixing"]["entropy"]["tau"], 0.1);
    // its original predictions are the mixture's own
    let scored = score(&input, &["--adapter", &c, "--adapter", &a]);
    for (line, s) in records.lines().zip(&scored) {
        let r: Value = serde_json::from_str(line).unwrap();
        let (p, q) = (floats(&r["original_probs"]), floats(&s["probs"]));
        assert!((p[0] - q[0]).abs() < 1e-5, "{p:?} vs {q:?}");
    }
    // ... and so is a routed one: the router's β on every query
    let router = dir.path().join("router");
    common::random_router(&router);
    let routed_dir = dir.path().join("routed");
    let mut args = base.to_vec();
    let routed = ["--adapter", &c, "--adapter", &a, "--router", router.to_str().unwrap()];
    args.extend(["--attack", "deepwordbug", "--out", routed_dir.to_str().unwrap()]);
    args.extend(routed);
    let out = admix(&args, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: Value =
        serde_json::from_str(&std::fs::read_to_string(routed_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(job["victim"]["mixing"]["router"]["dir"], router.to_str().unwrap());
    let records = std::fs::read_to_string(routed_dir.join("results.jsonl")).unwrap();
    let scored = score(&input, &routed);
    for (line, s) in records.lines().zip(&scored) {
        let r: Value = serde_json::from_str(line).unwrap();
        let (p, q) = (floats(&r["original_probs"]), floats(&s["probs"]));
        assert!((p[0] - q[0]).abs() < 1e-5, "{p:?} vs {q:?}");
    }
    // gradient attacks need one model: a static mix is one, a per-input mixture is not
    let mut args = base.to_vec();
    args.extend(["--attack", "fgsm", "--adapter", &c, "--adapter", &a, "--beta", "0.3,0.7"]);
    let out = admix(&args, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut args = base.to_vec();
    args.extend(["--attack", "fgsm", "--adapter", &c, "--adapter", &a]);
    assert_error(&admix(&args, b""), "FGSM needs the gradients of a single model");
}
