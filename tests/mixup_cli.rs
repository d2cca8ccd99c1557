//! `admix mixup` end to end on a tiny random BERT and a toy task: every stage runs, the report
//! (markdown, JSON, PNG) agrees with the stages' own outputs, a re-run reuses every stage, and bad
//! settings are one clear error.

mod common;

use std::process::Output;

use common::cli::{admix, assert_error, assert_error_after_progress};
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
        Env(ToyDir::new(&[("train.tsv", 96, 1), ("dev.tsv", 24, 2), ("test.tsv", 32, 3)]).with_tiny_model())
    }
    fn mixup(&self, out: &str, extra: &[&str]) -> Output {
        self.mixup_on("train.tsv", Some("dev.tsv"), "test.tsv", out, extra)
    }
    /// `admix mixup` on the given data files (without a dev file: carved from train).
    fn mixup_on(&self, train: &str, dev: Option<&str>, test: &str, out: &str, extra: &[&str]) -> Output {
        let (model, train, test, out) = (self.s("model"), self.s(train), self.s(test), self.s(out));
        let dev = dev.map(|d| self.s(d));
        let mut args = vec!["mixup", "--model", &model, "--train", &train, "--test", &test, "--out", &out];
        if let Some(dev) = &dev {
            args.extend(["--dev", dev.as_str()]);
        }
        args.extend([
            "--epochs",
            "10",
            "--lr",
            "1e-2",
            "--batch-size",
            "16",
            "--dropout",
            "0",
            "--full-epochs",
            "2",
            "--adaptive-examples",
            "6",
            "--taus",
            "0.1,1",
            "--beta-step",
            "0.25",
        ]);
        // list flags accumulate when repeated: the defaults only where `extra` has none
        for (flag, default) in [("--known", "deepwordbug"), ("--unseen", "textbugger")] {
            if !extra.contains(&flag) {
                args.extend([flag, default]);
            }
        }
        args.extend_from_slice(extra);
        admix(&args, b"")
    }
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "admix failed: {err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_pipeline_runs_every_stage_and_reports_what_the_stages_measured() {
    let env = Env::new();
    let stdout = ok(&env.mixup("run", &[]));
    let run = env.p("run");
    for f in ["report.md", "report.json", "tradeoff.png", "stages.json", "evaluation.json"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(run.join("tradeoff.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "tradeoff.png is not a PNG");
    assert!(stdout.contains("| AdpMixup, entropy β (τ = 0.1) |"), "{stdout}");
    assert!(stdout.contains("plot: "), "{stdout}");

    let report = json(&run.join("report.json"));
    let methods = report["methods"].as_array().unwrap();
    let names: Vec<&str> = methods.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for want in [
        "clean adapter",
        "adversarial adapter (deepwordbug)",
        "full fine-tuning",
        "full adversarial training",
        "Model Soup (full + full adversarial)",
        "Adapter Soup (uniform)",
        "AdpMixup, entropy β (τ = 0.1)",
    ] {
        assert!(names.contains(&want), "no row `{want}` in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("AdpMixup, best static β on test (upper bound")), "{names:?}");
    for want in ["AdpMixup, learned router (admix's own)", "oracle router (upper bound)"] {
        assert!(names.contains(&want), "no row `{want}` in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("AdpMixup, calibrated entropy β (τ = ")), "{names:?}");
    // the dev-tuned static β is a point of the grid, scored as that point
    let dev_static = methods
        .iter()
        .find(|m| m["name"].as_str().unwrap().ends_with(", dev-tuned)") && m["spec"]["type"] == "static")
        .unwrap();
    let point = report["sweep"].as_array().unwrap().iter().find(|r| r["spec"] == dev_static["spec"]).unwrap();
    assert_eq!((&dev_static["clean"], &dev_static["transfer"]), (&point["clean"], &point["transfer"]));
    assert_eq!(report["tuning"]["static_beta"], dev_static["spec"]["beta"]);
    // β sweep 0, 0.25, …, 1 and τ ∈ {0.1, 1} plus min-entropy
    let sweep = report["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 5 + 3);

    // the transfer sets are the clean model's successful adversarial examples
    let row = |name: &str| methods.iter().find(|m| m["name"] == name).unwrap();
    for set in report["sets"].as_array().unwrap() {
        let k = set["attack"].as_str().unwrap();
        let text = std::fs::read_to_string(run.join(format!("attack-test-{k}/results.jsonl"))).unwrap();
        let successful = text.lines().filter(|l| l.contains("\"outcome\":\"successful\"")).count();
        assert_eq!(set["examples"].as_u64().unwrap() as usize, successful, "{k}");
        // ... so the clean adapter gets every one of them wrong
        if successful > 0 {
            assert_eq!(row("clean adapter")["transfer"][k].as_f64().unwrap(), 0.0, "{k}");
        }
    }
    // the clean adapter's clean accuracy is what `admix eval` measures on the same test file
    let out = ok(&admix(
        &[
            "eval",
            &env.s("run/clean"),
            "--model",
            &env.s("model"),
            "--data",
            &env.s("run/data/test.jsonl"),
            "--json",
        ],
        b"",
    ));
    let eval: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acc = eval["accuracy"].as_f64().unwrap() * 100.0;
    assert!((row("clean adapter")["clean"].as_f64().unwrap() - acc).abs() < 1e-6, "{acc} vs report");
    // the static sweep's endpoints are the members themselves
    let end = |b: f64| sweep.iter().find(|r| r["spec"]["beta"][0].as_f64() == Some(b)).unwrap();
    assert_eq!(end(1.0)["clean"], row("clean adapter")["clean"]);
    assert_eq!(end(0.0)["transfer"], row("adversarial adapter (deepwordbug)")["transfer"]);
    // the adaptive numbers are the summaries of the attacks run on each method
    let adaptive = row("AdpMixup, entropy β (τ = 0.1)")["adaptive"]["deepwordbug"].as_f64().unwrap();
    let s = json(&run.join("adaptive/adpmixup-entropy-0p1-deepwordbug.json"));
    assert_eq!(s["accuracy_under_attack"].as_f64().unwrap(), adaptive);
    assert_eq!(s["examples"].as_u64().unwrap(), 6);
    attacked_once(&run);
    // tuned on dev: one temperature per member, each τ from the grid
    let tuning = &report["tuning"];
    let temps = tuning["temperatures"].as_array().unwrap();
    assert_eq!(temps.len(), 2);
    assert!(temps.iter().all(|t| t.as_f64().unwrap() > 0.0), "{temps:?}");
    for t in ["entropy_tau", "calibrated_tau"] {
        assert!([0.1, 1.0].contains(&tuning[t].as_f64().unwrap()), "{t}: {tuning}");
    }
    let dev_adv = std::fs::read_to_string(run.join("attack-dev-deepwordbug/results.jsonl")).unwrap();
    let dev_found = dev_adv.lines().filter(|l| l.contains("\"outcome\":\"successful\"")).count();
    assert_eq!(tuning["dev_sets"][0][1].as_u64().unwrap() as usize, dev_found);
    // routing: the oracle routes every input where it belongs; every rule routes every input
    let routing = report["routing"].as_array().unwrap();
    let sets = 1 + report["sets"].as_array().unwrap().len();
    let rules: std::collections::BTreeSet<&str> =
        routing.iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(routing.len(), rules.len() * sets, "{rules:?}");
    assert!(
        rules.contains("learned router (admix's own)") && rules.contains("oracle (upper bound)"),
        "{rules:?}"
    );
    for r in routing.iter().filter(|r| r["rule"] == "oracle (upper bound)") {
        assert_eq!(r["accuracy"].as_f64(), Some(100.0), "{r}");
    }
    // the router the run trained is the router `admix eval --router` runs: the same clean accuracy
    for f in ["router_config.json", "router.safetensors"] {
        assert!(run.join("router").join(f).is_file(), "router/{f} missing");
    }
    let out = ok(&admix(
        &[
            "eval",
            "--adapter",
            &env.s("run/clean"),
            "--adapter",
            &env.s("run/adv-deepwordbug"),
            "--router",
            &env.s("run/router"),
            "--model",
            &env.s("model"),
            "--max-len",
            "64",
            "--data",
            &env.s("run/data/test.jsonl"),
            "--json",
        ],
        b"",
    ));
    let eval: serde_json::Value = serde_json::from_str(&out).unwrap();
    let routed = row("AdpMixup, learned router (admix's own)")["clean"].as_f64().unwrap();
    assert!((eval["accuracy"].as_f64().unwrap() * 100.0 - routed).abs() < 1e-6, "{eval} vs {routed}");
    // attribution: every clean test input gives its largest β to some member
    let attribution = &report["attribution"]["rows"][0];
    let counted: u64 = attribution["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(counted, 32);
    // the adversarial training set is the clean set plus the successful adversarial examples
    let adv = std::fs::read_to_string(run.join("data/adv-deepwordbug.jsonl")).unwrap().lines().count();
    let found = std::fs::read_to_string(run.join("attack-train-deepwordbug/results.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"outcome\":\"successful\""))
        .count();
    assert_eq!(adv, 96 + found);

    // a re-run reuses every stage and reports the same numbers
    let before = std::fs::read_to_string(run.join("evaluation.json")).unwrap();
    let out = env.mixup("run", &[]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("training a seq_bn"), "a finished stage ran again: {err}");
    assert!(err.contains("train-clean: done"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("evaluation.json")).unwrap(), before);
    // other settings refuse the directory: the plan's sizes ...
    assert_error(&env.mixup("run", &["--tau", "0.5", "--epochs", "3"]), "holds a run with other settings");
    // ... and every stage's record of its own config
    for (stage, record) in [
        ("data", "data/config.json"),
        ("evaluate", "evaluation.config.json"),
        ("adaptive", "adaptive/adpmixup-entropy-0p1-deepwordbug.config.json"),
    ] {
        assert!(run.join(record).is_file(), "{stage}: no {record}");
    }
    assert_eq!(json(&run.join("evaluation.config.json"))["tau"].as_f64(), Some(0.1));
    let refused =
        |extra: &[&str], needle: &str| assert_error_after_progress(&env.mixup("run", extra), needle);
    refused(&["--tau", "0.5"], "stage evaluate finished with other settings");
    refused(&["--query-budget", "50"], "stage attack-train-deepwordbug finished with other settings");

    // a β grid of the two members alone: the best static β on test and the dev-tuned one are
    // members, and are not attacked again
    ok(&env.mixup("members", &["--beta-step", "1"]));
    let (methods, models) = attacked_once(&env.p("members"));
    assert_eq!(models, methods - 2, "both chosen static β are members: two models fewer than methods");
}

/// Methods that are one classifier (a static β all on one member is that member) are attacked
/// once in the adaptive protocol and share its numbers: (methods, distinct models).
fn attacked_once(run: &std::path::Path) -> (usize, usize) {
    let report = json(&run.join("report.json"));
    let methods = report["methods"].as_array().unwrap();
    let model_of = |m: &serde_json::Value| {
        let beta: Option<Vec<f64>> =
            m["spec"]["beta"].as_array().map(|b| b.iter().map(|v| v.as_f64().unwrap()).collect());
        match beta.as_deref() {
            Some([1.0, 0.0]) => "clean adapter".to_string(),
            Some([0.0, 1.0]) => "adversarial adapter (deepwordbug)".to_string(),
            // static mixes with the same β are one classifier, whatever chose them
            Some(b) => format!("static β {b:?}"),
            None => m["name"].as_str().unwrap().to_string(),
        }
    };
    // the oracle router knows each input's set: it is an upper bound, not a classifier to attack
    let oracle = |m: &serde_json::Value| m["spec"]["type"] == "oracle";
    let models: std::collections::BTreeSet<String> =
        methods.iter().filter(|m| !oracle(m)).map(model_of).collect();
    let attacked = std::fs::read_dir(run.join("adaptive"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".config.json"))
        .count();
    assert_eq!(attacked, 2 * models.len(), "adaptive stages for {models:?}");
    for m in methods {
        if oracle(m) {
            assert!(m["adaptive"].as_object().is_some_and(|a| a.is_empty()), "{m}");
            continue;
        }
        assert!(m["adaptive"].as_object().is_some_and(|a| a.len() == 2), "{m}");
        let first = methods.iter().find(|o| !oracle(o) && model_of(o) == model_of(m)).unwrap();
        assert_eq!(m["adaptive"], first["adaptive"], "{} vs {}", m["name"], first["name"]);
    }
    (methods.iter().filter(|m| !oracle(m)).count(), models.len())
}

#[test]
fn bad_settings_are_one_error_line() {
    let env = Env::new();
    assert_error(&env.mixup("a", &["--tau", "0"]), "every τ must be positive");
    assert_error(&env.mixup("b", &["--known", "pgd"]), "not a black-box text attack");
    assert_error(&env.mixup("c", &["--unseen", "deepwordbug"]), "both known and unseen");
    assert_error(&env.mixup("d", &["--beta-step", "2"]), "--beta-step must be in (0, 1]");
    std::fs::write(env.p("bad.tsv"), "text\tlabel\nonly one label\tpos\n").unwrap();
    let out = env.mixup_on("bad.tsv", Some("dev.tsv"), "test.tsv", "e", &[]);
    assert_error(&out, "needs at least two labels");
}

#[test]
fn two_known_attacks_give_three_members_and_the_adapter_adversarial_training_baseline() {
    let env = Env::new();
    ok(&env.mixup(
        "run",
        &["--known", "deepwordbug,textbugger", "--unseen", "pwws", "--no-full", "--adaptive-examples", "0"],
    ));
    let report = json(&env.p("run/report.json"));
    let names: Vec<&str> =
        report["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"adversarial training, adapter (all attacks)"), "{names:?}");
    assert!(names.contains(&"adversarial adapter (textbugger)"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("full")), "--no-full: {names:?}");
    assert_eq!(
        report["attribution"]["members"],
        serde_json::json!(["clean", "adv_deepwordbug", "adv_textbugger"])
    );
    // β_clean = 0.5 splits the rest evenly over the two adversarial adapters
    let half = report["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["spec"]["beta"][0].as_f64() == Some(0.5))
        .unwrap();
    assert_eq!(half["spec"]["beta"], serde_json::json!([0.5, 0.25, 0.25]));
    let sets: Vec<(&str, bool)> = report["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["attack"].as_str().unwrap(), s["known"].as_bool().unwrap()))
        .collect();
    assert_eq!(sets, [("deepwordbug", true), ("textbugger", true), ("pwws", false)]);
}

#[test]
fn sentence_pairs_run_end_to_end_with_a_dev_split_carved_from_train() {
    let env = Env::new();
    // the toy task as sentence pairs (each sentence with the next as its second text), with no dev
    // file: a stratified dev split is carved from train
    let as_pairs = |tsv: &str| {
        let rows: Vec<(&str, &str)> = tsv.lines().skip(1).map(|l| l.split_once('\t').unwrap()).collect();
        let mut out = String::from("index\tsentence1\tsentence2\tlabel\n");
        for (i, w) in rows.windows(2).enumerate() {
            out += &format!("{i}\t{}\t{}\t{}\n", w[0].0, w[1].0, w[0].1);
        }
        out
    };
    std::fs::write(env.p("train-pairs.tsv"), as_pairs(&common::toy_dataset(121, 1))).unwrap();
    std::fs::write(env.p("test-pairs.tsv"), as_pairs(&common::toy_dataset(33, 3))).unwrap();
    let extra = [
        "--preset",
        "full",
        "--dev-examples",
        "20",
        "--no-full",
        "--adaptive-examples",
        "3",
        "--max-len",
        "24",
    ];
    let out = env.mixup_on("train-pairs.tsv", None, "test-pairs.tsv", "pairs", &extra);
    ok(&out);
    let run = env.p("pairs");
    // one token limit for every stage: the pairs are truncated, longest first
    assert_eq!(json(&run.join("clean/train.json"))["max_len"], 24);
    assert_eq!(json(&run.join("stages.json"))["plan"]["max_len"], 24);
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (train, dev) = (read("data/train.jsonl"), read("data/dev.jsonl"));
    assert_eq!((train.len(), dev.len()), (100, 20));
    // 60 of 120 pairs are positive (the toy task alternates): the dev split keeps that share
    assert_eq!(dev.iter().filter(|e| e["label"] == "pos").count(), 10);
    let key = |e: &serde_json::Value| (e["text"].to_string(), e["text_pair"].to_string());
    let train_keys: std::collections::HashSet<_> = train.iter().map(key).collect();
    assert!(dev.iter().all(|e| e["text_pair"].is_string()));
    assert!(dev.iter().all(|e| !train_keys.contains(&key(e))), "dev examples are not trained on");
    // the attacks perturbed the first text and kept the second; the adversarial training set keeps
    // the pairs
    let test = read("data/test.jsonl");
    let records = read("attack-test-deepwordbug/results.jsonl");
    assert_eq!(records.len(), test.len());
    for (r, e) in records.iter().zip(&test) {
        assert_eq!((&r["original"], &r["pair"]), (&e["text"], &e["text_pair"]));
    }
    assert!(read("data/adv-deepwordbug.jsonl").iter().all(|e| e["text_pair"].is_string()));
    let report = json(&run.join("report.json"));
    // the floor: always answering dev's majority label (the toy's dev is balanced: the smaller id)
    let share = |v: &[serde_json::Value], label: &str| {
        100.0 * v.iter().filter(|e| e["label"] == label).count() as f64 / v.len() as f64
    };
    assert_eq!(report["majority"]["label"], 0);
    assert_eq!(report["majority"]["clean"].as_f64().unwrap(), share(&test, "neg"));
    let adv = read("attack-test-deepwordbug/results.jsonl");
    let fooled: Vec<serde_json::Value> = adv.into_iter().filter(|r| r["outcome"] == "successful").collect();
    let neg = 100.0 * fooled.iter().filter(|r| r["label"] == 0).count() as f64 / fooled.len() as f64;
    assert_eq!(report["majority"]["transfer"]["deepwordbug"].as_f64().unwrap(), neg);
    let data = report["plan"]["data"].as_str().unwrap();
    assert!(
        data == format!("{} (dev carved from it), {}", env.s("train-pairs.tsv"), env.s("test-pairs.tsv")),
        "{data}"
    );
}

/// A report's numbers: every method's accuracies (clean, transfer, adaptive) and the tuning; not
/// its wall times.
fn numbers(report: &serde_json::Value) -> serde_json::Value {
    let methods: Vec<serde_json::Value> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::json!([m["name"], m["clean"], m["transfer"], m["adaptive"]]))
        .collect();
    serde_json::json!({"methods": methods, "sweep": report["sweep"].as_array().unwrap().len(),
        "routing": report["routing"], "tuning": report["tuning"], "attribution": report["attribution"]})
}

#[test]
fn plan_lists_the_stage_graph_and_stages_run_by_two_workers_give_the_report_of_one_process() {
    let env = Env::new();
    let extra =
        ["--known", "deepwordbug,textbugger", "--unseen", "pwws", "--no-full", "--adaptive-examples", "4"];
    ok(&env.mixup("one", &extra));

    // the plan: every stage once, after its needs, each with the command that runs it alone
    let plan = ok(&env.mixup("two", &[&extra[..], &["--plan"]].concat()));
    let rows: Vec<Vec<&str>> = plan.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(
        names,
        [
            "data",
            "train-clean",
            "attack-train-deepwordbug",
            "attack-train-textbugger",
            "train-adv-deepwordbug",
            "train-adv-textbugger",
            "attack-dev-deepwordbug",
            "attack-dev-textbugger",
            "train-router",
            "train-adv-all",
            "attack-test-deepwordbug",
            "attack-test-textbugger",
            "attack-test-pwws",
            "evaluate",
            "adaptive"
        ]
    );
    let wave: std::collections::HashMap<&str, usize> =
        rows.iter().map(|r| (r[1], r[0].parse().unwrap())).collect();
    for r in &rows {
        for need in r[2].split(',').filter(|n| *n != "-") {
            assert!(wave[need] < wave[r[1]], "{} runs before its need {need}", r[1]);
        }
        assert!(r[3].ends_with(&format!("--stage {}", r[1])) && !r[3].contains("--plan"), "{}", r[3]);
    }
    assert!(!env.p("two/stages.json").exists(), "--plan writes nothing");
    assert_eq!(
        (wave["data"], wave["attack-test-pwws"], wave["train-router"], wave["adaptive"]),
        (1, 3, 5, 7)
    );

    // a stage whose needs have not finished, and an unknown stage, are one error each
    assert_error(&env.mixup("two", &[&extra[..], &["--stage", "train-clean"]].concat()), "needs stage data");
    assert_error(
        &env.mixup("two", &[&extra[..], &["--stage", "nope"]].concat()),
        "no stage `nope` in this run",
    );

    // wave by wave, two workers at once on one directory (the plan re-read each wave: after
    // `evaluate` it names the adaptive stages), then the report
    for w in 1..=7 {
        let plan = ok(&env.mixup("two", &[&extra[..], &["--plan"]].concat()));
        let stages: Vec<String> = plan
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|r| r[0] == w.to_string())
            .map(|r| r[1].to_string())
            .collect();
        if w == 7 {
            assert!(stages.len() > 4 && stages.iter().all(|s| s.starts_with("adaptive-")), "{stages:?}");
        }
        for chunk in stages.chunks(2) {
            std::thread::scope(|s| {
                let runs: Vec<_> = chunk
                    .iter()
                    .map(|stage| s.spawn(|| env.mixup("two", &[&extra[..], &["--stage", stage]].concat())))
                    .collect();
                for r in runs {
                    ok(&r.join().unwrap());
                }
            });
        }
    }
    ok(&env.mixup("two", &extra));
    let (one, two) = (json(&env.p("one/report.json")), json(&env.p("two/report.json")));
    assert_eq!(numbers(&one), numbers(&two));
    let stages =
        |r: &serde_json::Value| r["stage_seconds"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(stages(&one), stages(&two));
}

#[test]
fn several_training_seeds_share_the_surrogates_attacks_and_report_mean_and_sd() {
    let env = Env::new();
    // a one-seed run, then extended to two seeds: the first seed's stages are reused
    let core = ["--no-full", "--adaptive-examples", "2", "--adaptive-methods", "core"];
    ok(&env.mixup("seeds", &core));
    let extra = [&core[..], &["--seeds", "2"]].concat();
    let plan = ok(&env.mixup("seeds", &[&extra[..], &["--plan"]].concat()));
    let needs: std::collections::HashMap<&str, Vec<&str>> = plan
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .map(|r| (r[1], r[2].split(',').collect()))
        .collect();
    // seed 43 trains its own models on the first seed's data and adversarial examples, and is
    // evaluated on the same sets; the attacks run once, against seed 42's clean adapter
    assert_eq!(needs["train-clean-seed43"], ["data"]);
    assert_eq!(needs["train-adv-deepwordbug-seed43"], ["attack-train-deepwordbug"]);
    assert_eq!(
        needs["train-router-seed43"],
        ["train-clean-seed43", "train-adv-deepwordbug-seed43", "attack-dev-deepwordbug"]
    );
    let mut eval43 = needs["evaluate-seed43"].clone();
    eval43.sort();
    assert_eq!(
        eval43,
        [
            "attack-dev-deepwordbug",
            "attack-test-deepwordbug",
            "attack-test-textbugger",
            "attack-train-deepwordbug",
            "data",
            "train-adv-deepwordbug-seed43",
            "train-clean-seed43",
            "train-router-seed43"
        ]
    );
    assert!(!needs.keys().any(|n| n.starts_with("attack-") && n.contains("seed")), "attacks run once");

    let out = env.mixup("seeds", &extra);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    for stage in ["train-clean", "attack-train-deepwordbug", "attack-test-textbugger", "evaluate"] {
        assert!(err.contains(&format!("[mixup] {stage}: done (")), "{stage} was not reused: {err}");
    }
    assert!(err.contains("[mixup] train-clean-seed43 ..."), "{err}");
    let run = env.p("seeds");
    let job = |dir: &str| json(&run.join(dir).join("train.json"));
    assert_eq!((job("clean")["seed"].as_u64(), job("seed-43/clean")["seed"].as_u64()), (Some(42), Some(43)));
    assert!(job("adv-deepwordbug")["data"].is_object());
    assert_eq!(job("adv-deepwordbug")["data"], job("seed-43/adv-deepwordbug")["data"], "one training set");
    let report = json(&run.join("report.json"));
    assert_eq!(report["seeds"], serde_json::json!([42, 43]));
    // the spread is each method's over the two seeds' own evaluations
    let evals: Vec<serde_json::Value> =
        ["evaluation.json", "seed-43/evaluation.json"].iter().map(|f| json(&run.join(f))).collect();
    let clean_of = |e: &serde_json::Value, name: &str| {
        e["methods"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["clean"]
            .as_f64()
            .unwrap()
    };
    let rows = report["seed_rows"].as_array().unwrap();
    for name in
        ["clean adapter", "adversarial adapter (deepwordbug)", "AdpMixup, learned router (admix's own)"]
    {
        let row = rows.iter().find(|r| r["method"] == name).unwrap();
        let (a, b) = (clean_of(&evals[0], name), clean_of(&evals[1], name));
        assert!((row["clean"]["mean"].as_f64().unwrap() - (a + b) / 2.0).abs() < 1e-9, "{name}");
        assert!((row["clean"]["sd"].as_f64().unwrap() - (a - b).abs() / 2f64.sqrt()).abs() < 1e-9, "{name}");
        assert_eq!(row["clean"]["n"], 2);
    }
    // the study's targets are checked on the seeds' means
    let mean_clean = |name: &str| (clean_of(&evals[0], name) + clean_of(&evals[1], name)) / 2.0;
    let router = "AdpMixup, learned router (admix's own)";
    let targets = report["targets"].as_array().unwrap();
    let t = targets.iter().find(|t| t["rule"] == router).unwrap();
    assert!((t["clean"].as_f64().unwrap() - (mean_clean(router) - mean_clean("clean adapter"))).abs() < 1e-9);
    assert!(!targets.iter().any(|t| t["rule"].as_str().unwrap().contains("upper bound")), "{targets:?}");
    assert!(std::fs::read_to_string(run.join("report.md"))
        .unwrap()
        .contains("### The study's targets per AdpMixup rule (means over 2 seeds)"));
    // seed 42's clean adapter is the surrogate: 0% on the transfer sets by construction
    let clean42 =
        evals[0]["methods"].as_array().unwrap().iter().find(|m| m["name"] == "clean adapter").unwrap();
    assert_eq!(clean42["transfer"]["deepwordbug"], 0.0);
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("### Over 2 training seeds (42, 43): mean ± sd"), "{md}");
    let stages = report["stage_seconds"].as_object().unwrap();
    assert!(stages.contains_key("evaluate-seed43"));
    // the core adaptive set: no Adapter Soup, no upper bound; the rules and the members
    let adaptive: Vec<&String> = stages.keys().filter(|k| k.starts_with("adaptive-")).collect();
    for want in [
        "adaptive-clean-adapter-",
        "adaptive-adpmixup-learned-router-admix-s-own-",
        "adaptive-adpmixup-calibrated-",
    ] {
        assert!(adaptive.iter().any(|k| k.starts_with(want)), "no {want}: {adaptive:?}");
    }
    assert!(!adaptive.iter().any(|k| k.contains("soup") || k.contains("upper-bound")), "{adaptive:?}");
    // the adaptive protocol is set aside (a report without it) or changed (its finished stages'
    // records refuse another number of examples) without touching the rest of the run
    let without = ["--no-full", "--adaptive-methods", "core", "--seeds", "2", "--adaptive-examples", "0"];
    ok(&env.mixup("seeds", &without));
    let report = json(&run.join("report.json"));
    assert!(report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["adaptive"].as_object().unwrap().is_empty()));
    assert_eq!(report["seed_rows"].as_array().unwrap().len(), rows.len());
    let more = ["--no-full", "--adaptive-methods", "core", "--seeds", "2", "--adaptive-examples", "3"];
    assert_error_after_progress(&env.mixup("seeds", &more), "finished with other settings");
}
