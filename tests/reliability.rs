//! What a careful user tried (issue 16): settings admix cannot run are refused, never ignored; a
//! result that only looks valid (NaN probabilities, an accuracy of a broken model) is an error;
//! nothing runs away or aborts. Each refusal is one `error:` line, exit 1, and no output file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cli::{admix, assert_error};
use common::tiny;
use safetensors::Dtype;
use serde_json::{json, Value};

/// A writable copy of the fixture's AdapterHub checkpoint `variant` (scaling 2, leave_out [1, 4],
/// a 3-layer ReLU head over negative / neutral / positive).
fn variant() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let ck = d.path().join("variant");
    common::copy_files(&common::fixture_dir().join("variant"), &ck, None);
    (d, ck)
}

/// The fixture's adapter `clean` (AdapterHub's seq_bn defaults and 2-layer tanh head) saved as an
/// AdapterHub checkpoint: admix ran it before it read these configs, so a setting it ignored would
/// go unnoticed here.
fn plain() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let ck = d.path().join("clean");
    std::fs::create_dir_all(&ck).unwrap();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture_dir().join("sentences.json")).unwrap())
            .unwrap();
    let wrap = |config: &Value| {
        json!({"config": config, "hidden_size": 384, "model_class": "BertAdapterModel",
               "model_type": "bert", "name": "clean", "version": "adapters.1.3.0"})
    };
    std::fs::write(ck.join("adapter_config.json"), wrap(&info["adapter_config"]).to_string()).unwrap();
    std::fs::write(ck.join("head_config.json"), wrap(&info["head_config"]).to_string()).unwrap();
    let all = common::read_tensors(&common::fixture_dir().join("adapter_weights.safetensors"));
    let pick = |keep: &dyn Fn(&str) -> bool| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        all.iter().filter(|t| keep(&t.0)).cloned().collect()
    };
    tiny::write_safetensors(
        &ck.join("adapter.safetensors"),
        &pick(&|n| n.contains(".adapters.clean.")),
        Dtype::F32,
    );
    tiny::write_safetensors(
        &ck.join("model_head.safetensors"),
        &pick(&|n| n.starts_with("heads.clean.")),
        Dtype::F32,
    );
    (d, ck)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites a safetensors file with `edit` applied to its (name, shape, data) list.
fn edit_tensors(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let mut ts = common::read_tensors(path);
    edit(&mut ts);
    tiny::write_safetensors(path, &ts, Dtype::F32);
}

/// `admix score` of `texts` with checkpoint `ck` into `<ck>/../out.jsonl`; the output path too.
fn score(ck: &Path, texts: &[u8], extra: &[&str]) -> (Output, PathBuf) {
    let out = ck.parent().unwrap().join("out.jsonl");
    let mut args = vec!["score", "-", "--adapter", ck.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    (admix(&args, texts), out)
}

fn refused(ck: &Path, needle: &str) {
    let (o, out) = score(ck, b"a fine film\n", &[]);
    assert_error(&o, needle);
    assert!(!out.exists(), "no output file after a refusal");
}

#[test]
fn an_adapterhub_checkpoint_with_non_default_settings_scores_as_adapterhub_does() {
    let (_d, ck) = variant();
    let (sentences, _) = common::sentences();
    let (o, out) = score(&ck, sentences.join("\n").as_bytes(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, logits) = common::fixture("adapter_oracle.safetensors").f64s("variant.logits_f64").unwrap();
    let rows: Vec<Value> =
        std::fs::read_to_string(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 8);
    for (r, want) in rows.iter().zip(logits.chunks(3)) {
        let got: Vec<f64> = r["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-5, "logits {got:?} vs AdapterHub {want:?}");
        let best = (0..3).max_by(|&i, &j| want[i].total_cmp(&want[j])).unwrap();
        assert_eq!(r["label"], ["negative", "neutral", "positive"][best]);
    }
}

#[test]
fn adapter_settings_admix_cannot_run_are_refused() {
    for (key, value, needle) in [
        ("scaling", json!("learned"), "`scaling: \"learned\"` is not supported"),
        ("scaling", json!("channel"), "`scaling: \"channel\"` is not supported"),
        ("is_parallel", json!(true), "parallel adapters"),
        ("residual_before_ln", json!(false), "`residual_before_ln: false` is not supported"),
        ("use_gating", json!(true), "gated adapters"),
        ("ln_before", json!(true), "`ln_before: true`"),
        ("ln_after", json!(true), "`ln_after: true`"),
        ("original_ln_before", json!(false), "`original_ln_before: false`"),
        ("leave_out", json!([1, 4, 9]), "`leave_out` names layer 9, but the model has 6 layers"),
        ("phm_layer", json!(true), "PHM"),
        ("scaling", json!(1e300), "`scaling: 1e+300` is not a finite 32-bit number"),
    ] {
        let (_d, ck) = plain();
        edit_json(&ck.join("adapter_config.json"), |v| v["config"][key] = value.clone());
        refused(&ck, needle);
    }
    // a finite scaling whose product with a weight overflows f32
    let (_d, ck) = variant();
    edit_json(&ck.join("adapter_config.json"), |v| v["config"]["scaling"] = json!(1e38));
    edit_tensors(&ck.join("adapter.safetensors"), |ts| {
        let up = ts
            .iter_mut()
            .find(|t| t.0.ends_with("layer.0.output.adapters.variant.adapter_up.weight"))
            .unwrap();
        up.2[0] = 10.0;
    });
    refused(&ck, "`scaling` 1e38 makes adapter `variant`'s weights overflow");
    // leave_out that disagrees with the weights
    let (_d, ck) = variant();
    edit_json(&ck.join("adapter_config.json"), |v| v["config"]["leave_out"] = json!([1]));
    refused(&ck, "adapter `variant` has no module in layer 4");
    let (_d, ck) = variant();
    edit_json(&ck.join("adapter_config.json"), |v| v["config"]["leave_out"] = json!([1, 2, 4]));
    refused(&ck, "has a module in layer 2, which its config leaves out");
    // no config: the adapter is not silently dropped
    let (_d, ck) = plain();
    std::fs::remove_file(ck.join("adapter_config.json")).unwrap();
    refused(&ck, "adapter.safetensors is there but adapter_config.json is not");
}

#[test]
fn head_settings_admix_cannot_run_are_refused() {
    for (key, value, needle) in [
        ("activation_function", json!("softsign"), "unknown activation_function `softsign`"),
        ("layers", json!(1), "head `clean` has tensor `heads.clean.4.bias`, which a 1-layer"),
        ("layers", json!(3), "tensor `heads.clean.7.weight` not found"),
        ("use_pooler", json!(true), "pooler"),
        ("head_type", json!("tagging"), "head_type \"tagging\" is not supported"),
        ("bias", json!(false), "without bias"),
        ("label2id", json!({"LABEL_0": 0, "LABEL_1": 0}), "gives id 0 to both"),
        ("label2id", json!({"LABEL_0": 0}), "names 1 labels but `num_labels` is 2"),
        ("num_labels", json!(3), "names 2 labels but `num_labels` is 3"),
    ] {
        let (_d, ck) = plain();
        edit_json(&ck.join("head_config.json"), |v| v["config"][key] = value.clone());
        refused(&ck, needle);
    }
    // a label2id of the wrong size is an error, not replaced by ids
    let (_d, ck) = plain();
    edit_json(&ck.join("head_config.json"), |v| {
        v["config"]["label2id"] = json!({"LABEL_0": 0});
        v["config"]["num_labels"] = Value::Null;
    });
    refused(&ck, "label2id names 1 labels but the head has 2 outputs");
    // a supported setting is applied, not ignored: ReLU instead of tanh changes the logits
    let logits = |ck: &Path| -> Vec<f64> {
        let (o, out) = score(ck, b"a fine film\n", &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let row: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        row["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let (_d, ck) = plain();
    let tanh = logits(&ck);
    edit_json(&ck.join("head_config.json"), |v| v["config"]["activation_function"] = json!("relu"));
    let relu = logits(&ck);
    assert!(tanh.iter().zip(&relu).any(|(a, b)| (a - b).abs() > 1e-3), "{tanh:?} vs {relu:?}");
}

#[test]
fn an_adapter_module_for_a_layer_the_model_lacks_is_refused() {
    let (_d, ck) = plain();
    edit_tensors(&ck.join("adapter.safetensors"), |ts| {
        let t = ts.iter().find(|t| t.0.contains("layer.0.")).unwrap().clone();
        ts.push((t.0.replace("layer.0.", "layer.7."), t.1, t.2));
    });
    refused(&ck, "adapter `clean` has a module in layer 7, but the model has 6 layers");
}

#[test]
fn non_finite_weights_and_outputs_are_errors() {
    for value in [f32::NAN, f32::INFINITY] {
        let (_d, ck) = plain();
        edit_tensors(&ck.join("adapter.safetensors"), |ts| ts[3].2[5] = value);
        refused(&ck, &format!("holds {value} at index 5"));
        // eval does not print an accuracy for it either
        let data = ck.parent().unwrap().join("d.tsv");
        std::fs::write(&data, "text\tlabel\ngood\tLABEL_1\nbad\tLABEL_0\n").unwrap();
        let o = admix(&["eval", ck.to_str().unwrap(), "--data", data.to_str().unwrap()], b"");
        assert_error(&o, &format!("holds {value} at index 5"));
    }
    // finite weights whose output overflows: the logits are not printed as null
    let (_d, ck) = plain();
    edit_tensors(&ck.join("model_head.safetensors"), |ts| {
        let out = ts.iter_mut().find(|t| t.0 == "heads.clean.4.weight").unwrap();
        out.2.iter_mut().for_each(|v| *v = 3e38);
    });
    refused(&ck, "the model produced a non-finite logit");
}

fn tiny_model() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    tiny::write_model(&d.path().join("model"), 5, Dtype::F32, "");
    d
}

fn embed(d: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let (model, out) = (d.join("model"), d.join("emb.jsonl"));
    let mut args = vec!["embed", "-", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    (admix(&args, b"some text\n"), out)
}

#[test]
fn broken_model_configs_are_refused_before_anything_is_sized_from_them() {
    for (key, value, needle) in [
        ("layer_norm_eps", json!(-1.0), "layer_norm_eps -1 must be a positive number"),
        ("num_hidden_layers", json!(1_000_000_000u64), "config.json has 1000000000 layers but"),
        ("num_hidden_layers", json!(1), "belongs to layer 1 but config.json has 1 layers"),
        ("hidden_dropout_prob", json!(1.5), "hidden_dropout_prob 1.5 must be in [0, 1)"),
        ("vocab_size", json!(40000), "config.json says vocab_size 40000"),
    ] {
        let d = tiny_model();
        edit_json(&d.path().join("model/config.json"), |v| v[key] = value.clone());
        let (o, out) = embed(d.path(), &[]);
        assert_error(&o, needle);
        assert!(!out.exists());
    }
    let d = tiny_model();
    edit_tensors(&d.path().join("model/model.safetensors"), |ts| ts[2].2[0] = f32::NAN);
    assert_error(&embed(d.path(), &[]).0, "holds NaN at index 0");
    // --model pointing at a file says so
    let d = tiny_model();
    let f = d.path().join("model/config.json");
    let o = admix(&["embed", "-", "--model", f.to_str().unwrap()], b"x\n");
    assert_error(&o, "is a file; give the model's directory");
}

#[test]
fn thread_counts_beyond_the_cores_are_refused() {
    let d = tiny_model();
    let (o, out) = embed(d.path(), &["--threads", "10000"]);
    assert_error(&o, "--threads 10000: give 1 to");
    assert!(!out.exists());
    let o = admix(&["train", "--threads", "10000", "--train", "x.tsv"], b"");
    assert_error(&o, "--threads 10000: give 1 to");
}

#[test]
fn input_files_csv_bom_cr_line_ends_and_empty_texts() {
    let d = tiny_model();
    let model = d.path().join("model");
    let run = |name: &str, body: &[u8]| -> Vec<Value> {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        let o = admix(&["embed", p.to_str().unwrap(), "--model", model.to_str().unwrap()], b"");
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let plain = run("a.txt", "good, very good\nbad\n".as_bytes());
    // CSV: a header, quoted commas; the header is not scored and rows are not split or merged
    let csv = run("a.csv", b"id,text\n1,\"good, very good\"\n2,bad\n");
    assert_eq!(csv.len(), 2);
    assert_eq!(csv[0]["embedding"], plain[0]["embedding"]);
    assert_eq!(csv[1]["embedding"], plain[1]["embedding"]);
    assert_eq!((csv[0]["line"].as_u64(), csv[1]["line"].as_u64()), (Some(2), Some(3)));
    // CR-only line ends are line ends; a BOM does not hide the TSV header
    let close = |a: &Value, b: &Value| {
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5)
    };
    assert!(close(&run("b.txt", b"good, very good\rbad\r")[1]["embedding"], &plain[1]["embedding"]));
    assert!(close(&run("c.tsv", b"\xEF\xBB\xBFtext\nbad\n")[0]["embedding"], &plain[1]["embedding"]));
    // an empty JSONL text is skipped like an empty line, not scored
    let j = run("d.jsonl", b"{\"text\":\"\"}\n{\"text\":\"bad\"}\n");
    assert_eq!(j.len(), 1);
    assert_eq!(j[0]["line"], 2);
    // and training data with an empty text is refused
    let train = d.path().join("t.jsonl");
    std::fs::write(&train, "{\"text\":\"good\",\"label\":1}\n{\"text\":\"\",\"label\":0}\n").unwrap();
    let o = admix(
        &[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--train",
            train.to_str().unwrap(),
            "--out",
            d.path().join("r").to_str().unwrap(),
        ],
        b"",
    );
    assert_error(&o, "t.jsonl:2: empty text");
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Self {
        let dir = tiny_model();
        std::fs::write(dir.path().join("train.tsv"), common::toy_dataset(64, 1)).unwrap();
        Run { dir }
    }
    fn s(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
    fn train(&self, out: &str, extra: &[&str]) -> Output {
        let (model, train, out) = (self.s("model"), self.s("train.tsv"), self.s(out));
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--train",
            &train,
            "--out",
            &out,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-len",
            "16",
            "--save-every",
            "0",
            "--lr",
            "1e-2",
        ];
        args.extend_from_slice(extra);
        admix(&args, b"")
    }
    fn metrics(&self, out: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join(out).join("metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

#[test]
fn training_settings_that_mean_nothing_are_refused() {
    let r = Run::new();
    for (flags, needle) in [
        (&["--warmup", "2"][..], "--warmup is the fraction of steps"),
        (&["--max-grad-norm=-1"], "--max-grad-norm must be a positive norm"),
        (&["--weight-decay=-0.1"], "--weight-decay must be 0 or positive"),
        (&["--max-steps", "0"], "0 is not in 1.."),
    ] {
        let o = r.train("run", flags);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{flags:?}: {err}");
        assert!(!r.dir.path().join("run/best").exists(), "{flags:?} wrote a checkpoint");
    }
}

#[test]
fn a_resumed_run_keeps_its_epochs_loss_and_notices_changed_data() {
    let r = Run::new();
    assert!(r.train("whole", &[]).status.success());
    // stopped after 3 of 8 steps (last/ saved mid-epoch), then resumed to the end of the epoch
    assert!(r.train("split", &["--max-steps", "3"]).status.success());
    let o = r.train("split", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (whole, split) = (r.metrics("whole"), r.metrics("split"));
    let last = split.last().unwrap();
    assert_eq!(last["epoch"], 1);
    assert_eq!(last["train_loss"], whole[0]["train_loss"], "the resumed epoch's loss covers all its steps");
    // the same command on other data of the same size does not resume
    assert!(r.train("changed", &["--max-steps", "3"]).status.success());
    let data = std::fs::read_to_string(r.dir.path().join("train.tsv")).unwrap();
    std::fs::write(r.dir.path().join("train.tsv"), data.replacen("good", "great", 1)).unwrap();
    assert_error(&r.train("changed", &[]), "holds a run on other data");
}

#[test]
fn serve_limits_of_zero_are_refused() {
    let (_d, ck) = plain();
    for flag in ["--request-timeout-ms", "--max-body-bytes", "--max-batch", "--max-connections"] {
        let o = admix(&["serve", "--adapter", ck.to_str().unwrap(), "--addr", "127.0.0.1:0", flag, "0"], b"");
        assert_error(&o, &format!("{flag} must be at least 1"));
    }
}
