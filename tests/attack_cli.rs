//! `admix attack` end to end on a tiny random BERT trained on a toy task: every attack writes
//! TextAttack-style results whose summary agrees with its records; successful adversarial texts
//! are misclassified when `admix score` reads them back; each recipe's constraints hold; awkward
//! texts get outcomes, not panics; bad input is one clear error.

mod common;

use std::collections::HashMap;
use std::process::Output;

use admix::attack::words::{is_stopword, levenshtein, Text};
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
    /// A tiny model, trained on the toy task into `run/`.
    fn new() -> Self {
        let env = Env(ToyDir::new(&[("train.tsv", 128, 1), ("dev.tsv", 24, 2)]).with_tiny_model());
        let (model, train, dev, run) = (env.s("model"), env.s("train.tsv"), env.s("dev.tsv"), env.s("run"));
        let out = admix(
            &[
                "train",
                "--model",
                &model,
                "--train",
                &train,
                "--dev",
                &dev,
                "--out",
                &run,
                "--epochs",
                "10",
                "--lr",
                "1e-2",
                "--batch-size",
                "16",
                "--max-len",
                "16",
                "--dropout",
                "0",
            ],
            b"",
        );
        ok(&out);
        env
    }
    fn attack(&self, attack: &str, data: &str, out: &str, extra: &[&str]) -> Output {
        let (model, run, data, out) = (self.s("model"), self.s("run"), self.s(data), self.s(out));
        let mut args = vec![
            "attack",
            "--attack",
            attack,
            "--adapter",
            &run,
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        admix(&args, b"")
    }
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_attack_writes_consistent_results_that_hold_up() {
    let env = Env::new();
    let wordnet =
        admix::attack::wordnet::WordNet::load(&admix::assets::wordnet_dir()).expect("run `admix fetch`");
    let glove = admix::attack::glove::Glove::load(&admix::assets::glove_dir()).expect("run `admix fetch`");
    for attack in ["pgd", "fgsm", "hotflip", "deepwordbug", "pwws", "textfooler", "textbugger"] {
        let out_dir = env.p(&format!("out-{attack}"));
        let extra: &[&str] =
            if attack == "pgd" || attack == "fgsm" { &["--eps", "3"] } else { &["--query-budget", "300"] };
        let stdout = ok(&env.attack(attack, "dev.tsv", &format!("out-{attack}"), extra));
        assert!(stdout.contains("| Attack success rate"), "{stdout}");
        let recs = records(&out_dir);
        assert_eq!(recs.len(), 24, "{attack}: one record per example");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
        let s = &summary["summary"];
        let count = |o: &str| recs.iter().filter(|r| r["outcome"] == o).count() as u64;
        let (succ, fail, skip) = (count("successful"), count("failed"), count("skipped"));
        assert_eq!(
            (s["successful"].as_u64(), s["failed"].as_u64(), s["skipped"].as_u64()),
            (Some(succ), Some(fail), Some(skip))
        );
        assert!((s["accuracy_under_attack"].as_f64().unwrap() - 100.0 * fail as f64 / 24.0).abs() < 1e-9);
        assert!(succ > 0, "{attack} fooled the toy model on no example");
        let mut perturbed = vec![];
        for r in &recs {
            let label = r["label"].as_u64().unwrap();
            match r["outcome"].as_str().unwrap() {
                "skipped" => assert_ne!(r["original_prediction"].as_u64().unwrap(), label),
                "successful" => assert_ne!(r["perturbed_prediction"].as_u64().unwrap(), label),
                "failed" => assert_eq!(r["perturbed_prediction"].as_u64().unwrap(), label),
                o => panic!("outcome {o}"),
            }
            if r["outcome"] == "skipped" {
                continue;
            }
            if attack == "pgd" || attack == "fgsm" {
                assert!(r["delta_norm"].as_f64().unwrap() <= 3.0 + 1e-4, "{attack}: ‖δ‖ {}", r["delta_norm"]);
                assert!(r["perturbed"].is_null());
                continue;
            }
            let (orig, adv) = (r["original"].as_str().unwrap(), r["perturbed"].as_str().unwrap());
            if r["outcome"] == "successful" {
                perturbed.push((adv.to_string(), r["perturbed_prediction"].as_u64().unwrap()));
            }
            if attack == "textbugger" {
                // a space inserted into a word makes two: words no longer line up one to one
                assert!(levenshtein(orig, adv) >= r["perturbed_words"].as_u64().unwrap() as usize);
                continue;
            }
            let (to, ta) = (Text::parse(orig), Text::parse(adv));
            let changed = ta.changed_words(&to);
            assert_eq!(changed.len() as u64, r["perturbed_words"].as_u64().unwrap());
            for &i in &changed {
                assert!(!is_stopword(to.word(i)), "{attack} changed the stopword `{}`", to.word(i));
                match attack {
                    "pwws" => assert!(
                        wordnet.synonyms(to.word(i)).iter().any(|s| s == ta.word(i)),
                        "{} -> {}",
                        to.word(i),
                        ta.word(i)
                    ),
                    "hotflip" => assert_eq!(ta.word(i), ta.word(i).to_lowercase()),
                    "textfooler" => {
                        let near = glove.neighbours(to.word(i), 50, 0.5, 100_000);
                        assert!(
                            near.iter().any(|(w, _)| w == ta.word(i)),
                            "{} -> {}",
                            to.word(i),
                            ta.word(i)
                        );
                        assert!(!wordnet.antonyms(to.word(i)).iter().any(|a| a == ta.word(i)));
                    }
                    _ => {}
                }
            }
            match attack {
                "deepwordbug" => assert!(levenshtein(orig, adv) <= 30),
                "hotflip" => assert!(changed.len() <= admix::attack::hotflip::max_words(0.2, to.num_words())),
                _ => {}
            }
        }
        if attack == "pgd" || attack == "fgsm" {
            continue;
        }
        // the adversarial texts, read back by `admix score`, get the predictions the attack reported
        let text: String = perturbed.iter().map(|(t, _)| format!("{t}\n")).collect();
        let scored = admix(
            &["score", "--adapter", &env.s("run/best"), "--model", &env.s("model"), "--max-len", "16", "-"],
            text.as_bytes(),
        );
        let scored: Vec<serde_json::Value> =
            ok(&scored).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(scored.len(), perturbed.len());
        let by_line: HashMap<u64, u64> =
            scored.iter().map(|s| (s["line"].as_u64().unwrap(), s["label_id"].as_u64().unwrap())).collect();
        for (i, (t, pred)) in perturbed.iter().enumerate() {
            assert_eq!(by_line[&(i as u64 + 1)], *pred, "{attack}: `{t}` scores differently when read back");
        }
    }
}

#[test]
fn sentence_pairs_are_attacked_in_their_first_text_and_score_as_reported() {
    let env = Env::new();
    // the toy task's sentences, each with the next one as its second text
    let toy = common::toy_dataset(24, 5);
    let rows: Vec<(&str, &str)> = toy.lines().skip(1).map(|l| l.split_once('\t').unwrap()).collect();
    let mut tsv = String::from("text\ttext_pair\tlabel\n");
    for w in rows.windows(2) {
        tsv += &format!("{}\t{}\t{}\n", w[0].0, w[1].0, w[0].1);
    }
    std::fs::write(env.p("pairs.tsv"), &tsv).unwrap();
    for attack in ["deepwordbug", "textbugger"] {
        ok(&env.attack(attack, "pairs.tsv", &format!("pairs-{attack}"), &[]));
        let recs = records(&env.p(&format!("pairs-{attack}")));
        assert_eq!(recs.len(), rows.len() - 1);
        let mut inputs = String::new();
        let mut attacked = vec![];
        for (r, w) in recs.iter().zip(rows.windows(2)) {
            // the second text is kept as it was
            assert_eq!((r["original"].as_str().unwrap(), r["pair"].as_str().unwrap()), (w[0].0, w[1].0));
            if let Some(p) = r["perturbed"].as_str() {
                inputs += &format!("{}\n", serde_json::json!({"text": p, "text_pair": w[1].0}));
                attacked.push(r);
            }
        }
        assert!(attacked.iter().any(|r| r["outcome"] == "successful"), "{attack}: no pair was fooled");
        // read back as pairs by `admix score`, the adversarial pairs get the probabilities reported
        let scored = admix(
            &[
                "score",
                "--adapter",
                &env.s("run/best"),
                "--model",
                &env.s("model"),
                "--max-len",
                "16",
                "--format",
                "jsonl",
                "-",
            ],
            inputs.as_bytes(),
        );
        let scored: Vec<serde_json::Value> =
            ok(&scored).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(scored.len(), attacked.len());
        for (s, r) in scored.iter().zip(&attacked) {
            let (a, b) = (s["probs"].as_array().unwrap(), r["perturbed_probs"].as_array().unwrap());
            for (x, y) in a.iter().zip(b) {
                assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5, "{attack}: {s} vs {r}");
            }
        }
    }
}

#[test]
fn awkward_texts_get_outcomes_and_bad_input_is_one_clear_error() {
    let env = Env::new();
    let awkward = "text\tlabel\ngreat\tpos\nit was so\tneg\ncafé crème was wonderful 😀\tpos\n!!! ???\tneg\nthe movie was very boring\tneg\n";
    std::fs::write(env.p("awkward.tsv"), awkward).unwrap();
    for attack in ["pgd", "hotflip", "deepwordbug", "pwws", "textfooler", "textbugger"] {
        ok(&env.attack(attack, "awkward.tsv", &format!("awk-{attack}"), &[]));
        let recs = records(&env.p(&format!("awk-{attack}")));
        assert_eq!(recs.len(), 5, "{attack}");
        // an all-stopword or wordless text has nothing a text attack may change
        if attack != "pgd" {
            for r in [&recs[1], &recs[3]] {
                assert_ne!(r["outcome"], "successful", "{attack}: {}", r["original"]);
                assert_eq!(r["perturbed_words"], 0);
            }
        }
    }
    // the CUDA path (kernels on the SIMT emulator): embedding with δ, pgd_step, the HotFlip top-k
    for attack in ["pgd", "hotflip", "deepwordbug"] {
        ok(&env.attack(attack, "awkward.tsv", &format!("emu-{attack}"), &["--device", "emu"]));
        assert_eq!(records(&env.p(&format!("emu-{attack}"))).len(), 5, "{attack} on emu");
    }
    // bf16 scoring on the CPU where it has AVX512-BF16, one clear error where it does not
    let out = env.attack("deepwordbug", "awkward.tsv", "bf16", &["--precision", "bf16"]);
    if admix::backend::cpu::bf16::available() {
        ok(&out);
        assert_eq!(records(&env.p("bf16")).len(), 5);
        let job: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(env.p("bf16/job.json")).unwrap()).unwrap();
        assert_eq!(job["precision"], "bf16");
    } else {
        assert_error(&out, "AVX512-BF16");
    }
    assert_error(
        &env.attack("deepwordbug", "awkward.tsv", "x", &["--precision", "f32", "--device", "emu"]),
        "precision f32 is the CPU's",
    );
    let out = env.attack("deepwordbug", "dev.tsv", "x", &["--query-budget", "0"]);
    assert_error(&out, "query budget");
    let out = env.attack("pwws", "dev.tsv", "x", &["--wordnet", "/nonexistent/wordnet"]);
    assert_error(&out, "WordNet directory");
    let out = env.attack("textbugger", "dev.tsv", "x", &["--glove", "/nonexistent/glove"]);
    assert_error(&out, "GloVe directory");
    std::fs::write(env.p("pairs.tsv"), "text\ttext_pair\tlabel\na\tb\tpos\n").unwrap();
    assert_error(&env.attack("hotflip", "pairs.tsv", "x", &[]), "HotFlip on sentence pairs is not supported");
    std::fs::write(env.p("empty.tsv"), "text\tlabel\n\tpos\ngood\tneg\n").unwrap();
    assert_error(&env.attack("deepwordbug", "empty.tsv", "x", &[]), "empty text");
    std::fs::write(env.p("unknown.tsv"), "text\tlabel\nfine\tmaybe\n").unwrap();
    assert_error(&env.attack("deepwordbug", "unknown.tsv", "x", &[]), "maybe");
    assert_error(&env.attack("pgd", "dev.tsv", "x", &["--eps", "0"]), "ε must be positive");
    assert!(!env.p("x").exists(), "a failed attack leaves no output behind");
}
