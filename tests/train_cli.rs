//! `admix train` / `admix eval` end to end on a tiny random BERT and a small learnable dataset:
//! it learns, checkpoints reload to the same accuracy, an interrupted run resumes to the same
//! result as an uninterrupted one, and bad input fails with one clear error line.

mod common;

use std::path::Path;
use std::process::Output;

use common::cli::{admix, assert_error};
use common::ToyDir;

struct Env(ToyDir);

impl std::ops::Deref for Env {
    type Target = ToyDir;
    fn deref(&self) -> &ToyDir {
        &self.0
    }
}

impl Env {
    fn new() -> Self {
        Env(ToyDir::new(&[("train.tsv", 128, 1), ("dev.tsv", 40, 2)]).with_tiny_model())
    }
    fn train(&self, out: &str, extra: &[&str]) -> Output {
        let (model, train, dev, out) = (self.s("model"), self.s("train.tsv"), self.s("dev.tsv"), self.s(out));
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--train",
            &train,
            "--dev",
            &dev,
            "--out",
            &out,
            "--epochs",
            "10",
            "--lr",
            "1e-2",
            "--batch-size",
            "16",
            "--max-len",
            "16",
            "--save-every",
            "0",
            "--dropout",
            "0",
        ];
        args.extend_from_slice(extra);
        admix(&args, b"")
    }
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {err}");
    err
}

fn eval_json(env: &Env, checkpoint: &Path) -> serde_json::Value {
    let out = admix(
        &[
            "eval",
            checkpoint.to_str().unwrap(),
            "--model",
            &env.s("model"),
            "--data",
            &env.s("dev.tsv"),
            "--json",
        ],
        b"",
    );
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn trains_checkpoints_and_reloads_to_the_same_accuracy() {
    let env = Env::new();
    ok(&env.train("run", &[]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(env.p("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    let first = lines[0]["train_loss"].as_f64().unwrap();
    let last = lines[9]["train_loss"].as_f64().unwrap();
    assert!(last < 0.5 * first, "train loss {first} → {last}");
    let best = lines.iter().map(|l| l["dev"]["accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best >= 0.9, "dev accuracy {best}");
    // the best checkpoint, in AdapterHub's layout, evaluates to the accuracy recorded for it
    for f in ["adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"] {
        assert!(env.p("run/best").join(f).exists(), "{f}");
    }
    let head_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("run/best/head_config.json")).unwrap()).unwrap();
    assert_eq!(head_cfg["config"]["label2id"], serde_json::json!({"neg": 0, "pos": 1}));
    let m = eval_json(&env, &env.p("run"));
    assert_eq!(m["accuracy"].as_f64().unwrap(), best);
    // adapter_config.json says what AdapterHub itself resolves for seq_bn (the fixture records it)
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("run/best/adapter_config.json")).unwrap())
            .unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture_dir().join("sentences.json")).unwrap())
            .unwrap();
    let cfg = ours["config"].as_object().unwrap();
    assert!(cfg["architecture"].is_null(), "AdapterHub maps architecture null to a bottleneck config");
    let mut compared = 0;
    for (k, v) in fixture["adapter_config"].as_object().unwrap() {
        if let Some(mine) = cfg.get(k) {
            assert_eq!(mine, v, "adapter_config `{k}`");
            compared += 1;
        }
    }
    assert!(compared >= 15, "only {compared} keys compared");
    // adapter tensor names are AdapterHub's, as in the fixture's adapter file
    let w = admix::weights::WeightFile::open(&env.p("run/best/adapter.safetensors")).unwrap();
    assert!(w.contains("bert.encoder.layer.1.output.adapters.clean.adapter_down.0.weight"));
    // `score` takes the checkpoint directory too
    let out = admix(
        &["score", "--model", &env.s("model"), "--adapter", &env.s("run/best"), "--max-len", "16"],
        b"the movie was really great\n",
    );
    let text = ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["label"], "pos", "{text}");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    resumes_bit_identically(&[]);
}

#[test]
fn an_interrupted_run_on_the_emulator_resumes_to_the_same_result() {
    // f32 master weights and moments round-trip exactly through the checkpoint, and the emulated
    // kernels add in a fixed order
    resumes_bit_identically(&["--device", "emu"]);
}

#[test]
fn freelb_training_learns_differs_from_plain_training_and_resumes() {
    let env = Env::new();
    ok(&env.train("plain", &[]));
    ok(&env.train("freelb", &["--freelb-steps", "2", "--freelb-eps", "0.2"]));
    let best = |run: &str| -> f64 {
        std::fs::read_to_string(env.p(&format!("{run}/metrics.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["dev"]["accuracy"].as_f64().unwrap()
            })
            .fold(0.0, f64::max)
    };
    assert!(best("freelb") >= 0.9, "FreeLB dev accuracy {}", best("freelb"));
    assert_ne!(
        std::fs::read(env.p("plain/last/adapter.safetensors")).unwrap(),
        std::fs::read(env.p("freelb/last/adapter.safetensors")).unwrap(),
        "the adversarial ascent changed nothing"
    );
    // a run's FreeLB settings are part of what must agree to resume it
    assert_error(&env.train("freelb", &[]), "other settings");
    resumes_bit_identically(&["--freelb-steps", "2"]);
}

fn resumes_bit_identically(device: &[&str]) {
    let env = Env::new();
    let args = |extra: &[&'static str]| -> Vec<&str> { extra.iter().chain(device).copied().collect() };
    ok(&env.train("straight", &args(&["--epochs", "2"])));
    // stop after 11 steps (mid-epoch 2 of 8 steps each), then resume
    ok(&env.train("resumed", &args(&["--epochs", "2", "--max-steps", "11", "--save-every", "1"])));
    let err = ok(&env.train("resumed", &args(&["--epochs", "2"])));
    assert!(err.contains("resuming"), "{err}");
    for f in ["last/adapter.safetensors", "last/model_head.safetensors", "last/optimizer.safetensors"] {
        assert_eq!(
            std::fs::read(env.p("straight").join(f)).unwrap(),
            std::fs::read(env.p("resumed").join(f)).unwrap(),
            "{f}"
        );
    }
    // other settings in the same directory are refused
    assert_error(&env.train("resumed", &args(&["--epochs", "3"])), "other settings");
}

#[test]
fn full_fine_tuning_writes_a_model_directory() {
    let env = Env::new();
    ok(&env.train("full", &["--full", "--epochs", "1", "--lr", "1e-3"]));
    for f in
        ["config.json", "model.safetensors", "tokenizer.json", "head_config.json", "model_head.safetensors"]
    {
        assert!(env.p("full/best").join(f).exists(), "{f}");
    }
    let w = admix::weights::WeightFile::open(&env.p("full/best/model.safetensors")).unwrap();
    assert!(w.contains("bert.encoder.layer.0.attention.self.query.weight"));
    // the saved directory is a model admix loads
    let m = eval_json(&env, &env.p("full"));
    assert!(m["accuracy"].as_f64().is_some());
}

#[test]
fn bad_training_input_is_one_clear_error() {
    let env = Env::new();
    std::fs::write(env.p("unknown.tsv"), "text\tlabel\nok\tpos\nhm\tmaybe\n").unwrap();
    let (model, train, out) = (env.s("model"), env.s("train.tsv"), env.s("o"));
    let base = ["train", "--model", &model, "--train", &train, "--out", &out];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        admix(&a, b"")
    };
    assert_error(&run(&["--dev", &env.s("unknown.tsv")]), "unknown label `maybe`");
    std::fs::write(env.p("nolabel.tsv"), "text\tgold\nok\tpos\n").unwrap();
    assert_error(
        &admix(&["train", "--model", &model, "--train", &env.s("nolabel.tsv")], b""),
        "no `label` column",
    );
    std::fs::write(env.p("empty.tsv"), "text\tlabel\n").unwrap();
    assert_error(&admix(&["train", "--model", &model, "--train", &env.s("empty.tsv")], b""), "no examples");
    std::fs::write(env.p("one.tsv"), "text\tlabel\na\tx\nb\tx\n").unwrap();
    assert_error(
        &admix(&["train", "--model", &model, "--train", &env.s("one.tsv")], b""),
        "at least two labels",
    );
    assert_error(&run(&["--lr", "0"]), "learning rate must be positive");
    assert_error(&run(&["--lr=-1"]), "learning rate must be positive");
    std::fs::write(env.p("afile"), "").unwrap();
    assert_error(&run(&["--out", &env.s("afile/run")]), "cannot create output directory");
    // eval: a checkpoint that does not exist
    assert_error(
        &admix(&["eval", &env.s("nothing"), "--model", &model, "--data", &train], b""),
        "does not exist",
    );
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let env = Env::new();
    ok(&env.train("run", &["--epochs", "2", "--max-steps", "8"]));
    let before = std::fs::read(env.p("run/last/adapter.safetensors")).unwrap();
    // poison the checkpoint's head with finite weights whose products overflow (non-finite weights
    // are refused at load): tanh(0·x + 1000) = 1 in every unit, so both logits are 32 · 3e38 = inf
    // and the resumed run's first loss is NaN
    let head = env.p("run/last/model_head.safetensors");
    let mut tensors = common::read_tensors(&head);
    for (name, _, data) in &mut tensors {
        let value = match name.rsplit_once(".clean.").map(|(_, s)| s) {
            Some("1.weight") => Some(0.0),
            Some("1.bias") => Some(1000.0),
            Some("4.weight") => Some(3e38),
            _ => None,
        };
        if let Some(value) = value {
            data.iter_mut().for_each(|v| *v = value);
        }
    }
    admix::io::write_safetensors(&head, &tensors).unwrap();
    let out = env.train("run", &["--epochs", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    let last_line = err.lines().last().unwrap();
    assert!(last_line.starts_with("error:") && last_line.contains("the loss is"), "{err}");
    assert!(last_line.contains("last good checkpoint"), "{err}");
    assert_eq!(std::fs::read(env.p("run/last/adapter.safetensors")).unwrap(), before);
}

#[test]
fn trains_on_the_emulator_like_on_the_cpu() {
    let env = Env::new();
    ok(&env.train("cpu", &[]));
    ok(&env.train("emu", &["--device", "emu"]));
    let metrics = |run: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(env.p(&format!("{run}/metrics.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (cpu, emu) = (metrics("cpu"), metrics("emu"));
    assert_eq!(emu.len(), 10);
    // the same run in bf16: the first epoch's loss agrees closely, and it learns as well
    let (c0, e0) = (cpu[0]["train_loss"].as_f64().unwrap(), emu[0]["train_loss"].as_f64().unwrap());
    assert!((c0 - e0).abs() < 0.02 * c0, "first-epoch train loss: emu {e0}, cpu {c0}");
    let best = emu.iter().map(|l| l["dev"]["accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best >= 0.9, "dev accuracy on the emulator {best}");
    // its checkpoint has the CPU's format and evaluates on the CPU
    let acc = eval_json(&env, &env.p("emu/best"))["accuracy"].as_f64().unwrap();
    assert!((acc - best).abs() <= 0.05, "the emu checkpoint evaluates to {acc} on the cpu, {best} recorded");
}

#[test]
fn trains_in_bf16_on_the_cpu_like_in_f32() {
    let env = Env::new();
    let out = env.train("bf16", &["--precision", "bf16"]);
    if !admix::backend::cpu::bf16::available() {
        assert_error(&out, "AVX512-BF16");
        return;
    }
    ok(&out);
    ok(&env.train("f32", &[]));
    let metrics = |run: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(env.p(&format!("{run}/metrics.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (f32s, bf16s) = (metrics("f32"), metrics("bf16"));
    assert_eq!(bf16s.len(), 10);
    let (a, b) = (f32s[0]["train_loss"].as_f64().unwrap(), bf16s[0]["train_loss"].as_f64().unwrap());
    assert!(a != b && (a - b).abs() < 0.02 * a, "first-epoch train loss: bf16 {b}, f32 {a}");
    let best = bf16s.iter().map(|l| l["dev"]["accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best >= 0.9, "dev accuracy in bf16 {best}");
    // the record says how it was trained; its checkpoint evaluates in f32
    let job: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.p("bf16/train.json")).unwrap()).unwrap();
    assert_eq!(job["precision"], "bf16");
    let acc = eval_json(&env, &env.p("bf16/best"))["accuracy"].as_f64().unwrap();
    assert!((acc - best).abs() <= 0.05, "the bf16 checkpoint evaluates to {acc} in f32, {best} recorded");
}
