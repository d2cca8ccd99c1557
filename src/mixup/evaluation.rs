//! The `evaluate` stage (every method on the clean test set and every transfer set, the β sweep,
//! the τ ablation, the β attribution) and the adaptive attacks on every method.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::methods::{method_rows, Zoo};
use super::report::{self, Attribution, MethodRow, Report, RoutingRow, SetInfo, Spec, Tuning};
use super::stages::Stages;
use super::{AdaptiveMethods, Ctx};
use crate::adapter::mix::{fit_temperature, BetaRule};
use crate::adapter::router::features::MemberPasses;
use crate::attack::metrics::Summary;
use crate::attack::run::{self, AttackConfig};
use crate::backend::{Backend, Precision, TokenBatch};
use crate::data::batches;
use crate::data::Example;
use crate::io;
use crate::model::classify::argmax;
use crate::model::mixture::Mixture;
use crate::model::tokenizer::TextTokenizer;
use crate::model::ModelDir;
use crate::Choice;

/// Batches of `examples` in length order: `(example indices, batch)`.
pub(super) fn eval_batches(
    tok: &TextTokenizer,
    examples: &[Example],
) -> Result<Vec<(Vec<usize>, TokenBatch)>> {
    if examples.is_empty() {
        return Ok(vec![]);
    }
    let (enc, _) = batches::encode(tok, examples)?;
    let lens: Vec<usize> = enc.iter().map(|e| e.ids.len()).collect();
    Ok(batches::eval_batches(&lens, 64)
        .into_iter()
        .map(|idx| {
            let (batch, _) = batches::make_batch(&enc, &idx, tok.pad_id());
            (idx, batch)
        })
        .collect())
}

fn accuracy(p: &[Vec<f32>], examples: &[Example]) -> f64 {
    if examples.is_empty() {
        return f64::NAN;
    }
    let right = p.iter().zip(examples).filter(|(p, e)| argmax(p) == e.label).count();
    100.0 * right as f64 / examples.len() as f64
}

/// What the `evaluate` stage keeps.
#[derive(Serialize, Deserialize)]
struct Evaluation {
    methods: Vec<MethodRow>,
    sweep: Vec<MethodRow>,
    attribution: Attribution,
    #[serde(default)]
    routing: Vec<RoutingRow>,
    #[serde(default)]
    tuning: Tuning,
}

/// Each example's probabilities under member `i`, from the passes over a set's batches.
fn member_set_probs(
    bs: &[(Vec<usize>, TokenBatch)],
    passes: &[MemberPasses],
    i: usize,
    n: usize,
) -> Vec<Vec<f32>> {
    let mut probs = vec![vec![]; n];
    for ((idx, _), p) in bs.iter().zip(passes) {
        for (k, &e) in idx.iter().enumerate() {
            probs[e] = p.probs[i][k].clone();
        }
    }
    probs
}

/// The members that should take an input of `set` (0 the clean test set, then the transfer sets).
fn rightful(c: &Ctx, set: usize, m: usize) -> Vec<usize> {
    match set {
        0 => vec![0],
        s => match c.plan.known.iter().position(|k| *k == c.sets[s - 1].0) {
            Some(k) => vec![k + 1],
            None => (1..m).collect(),
        },
    }
}

/// Temperatures on clean dev, then the τ of entropy β and of calibrated entropy β that score best
/// on dev ((clean + mean known adversarial) / 2).
fn tune<B: Backend>(
    be: &B,
    c: &Ctx,
    tok: &TextTokenizer,
    mixture: &Mixture<B>,
    taus: &[f32],
    grid: &[Vec<f32>],
) -> Result<Tuning> {
    // (an attack that found nothing on dev has no set to score)
    let mut sets: Vec<&[Example]> = vec![c.dev];
    sets.extend(c.dev_sets.iter().map(|(_, v)| v.as_slice()).filter(|v| !v.is_empty()));
    let batches: Vec<_> = sets.iter().map(|ex| eval_batches(tok, ex)).collect::<Result<_>>()?;
    let passes: Vec<Vec<MemberPasses>> = batches
        .iter()
        .map(|bs| bs.iter().map(|(_, b)| mixture.member_passes(be, b, false)).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    let labels: Vec<usize> = c.dev.iter().map(|e| e.label).collect();
    let temperatures = (0..mixture.m())
        .map(|i| fit_temperature(&member_set_probs(&batches[0], &passes[0], i, c.dev.len()), &labels))
        .collect::<Result<Vec<f32>>>()?;
    // (dev clean + mean dev known adversarial) / 2
    let score = |a: &[f64]| match a.len() {
        1 => a[0],
        n => (a[0] + a[1..].iter().sum::<f64>() / (n - 1) as f64) / 2.0,
    };
    // each static β of the grid: the weight-space mix, through the mixture's exact per-row mix
    let mut static_scores = vec![];
    for beta in grid {
        let mut acc = vec![];
        for (set, bs) in batches.iter().enumerate() {
            let mut probs = vec![vec![]; sets[set].len()];
            for ((idx, batch), p) in bs.iter().zip(&passes[set]) {
                let out = mixture.run_with(be, batch, vec![beta.clone(); batch.batch], Some(p))?;
                for (k, &i) in idx.iter().enumerate() {
                    probs[i] = out.probs[k].clone();
                }
            }
            acc.push(accuracy(&probs, sets[set]));
        }
        static_scores.push((beta.clone(), score(&acc)));
    }
    let static_beta = static_scores
        .iter()
        .fold((f64::NEG_INFINITY, &grid[0]), |b, (beta, s)| if *s > b.0 { (*s, beta) } else { b })
        .1
        .clone();
    let mut dev_scores = vec![];
    for &tau in taus {
        let rules =
            [BetaRule::Entropy { tau }, BetaRule::Calibrated { tau, temperatures: temperatures.clone() }];
        let mut acc = vec![vec![]; rules.len()];
        for (set, bs) in batches.iter().enumerate() {
            let mut probs = vec![vec![vec![]; sets[set].len()]; rules.len()];
            for ((idx, batch), p) in bs.iter().zip(&passes[set]) {
                for (r, out) in mixture.run_rules_given(be, batch, &rules, Some(p))?.into_iter().enumerate() {
                    for (k, &i) in idx.iter().enumerate() {
                        probs[r][i] = out.probs[k].clone();
                    }
                }
            }
            for r in 0..rules.len() {
                acc[r].push(accuracy(&probs[r], sets[set]));
            }
        }
        dev_scores.push((tau, score(&acc[0]), score(&acc[1])));
    }
    let best = |f: fn(&(f32, f64, f64)) -> f64| {
        dev_scores
            .iter()
            .fold((f64::NEG_INFINITY, taus[0]), |b, d| if f(d) > b.0 { (f(d), d.0) } else { b })
            .1
    };
    Ok(Tuning {
        entropy_tau: best(|d| d.1),
        calibrated_tau: best(|d| d.2),
        temperatures,
        dev_scores,
        static_beta,
        static_scores,
        dev_examples: c.dev.len(),
        dev_sets: c.dev_sets.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
    })
}

/// Clean and transfer accuracy of every method, the sweeps, the dev tuning, the routing and the
/// attribution table.
fn evaluation<B: Backend + 'static>(
    be: &B,
    c: &Ctx,
    zoo: &Zoo,
    times: &BTreeMap<String, f64>,
) -> Result<Evaluation> {
    let tok = &ModelDir::open(&c.model_dir(), c.plan.max_len)?.tokenizer;
    let (mut methods, mut sweep) = method_rows(c, zoo, times);
    let mut inputs: Vec<(String, &[Example])> = vec![("clean".into(), c.test)];
    inputs.extend(c.sets.iter().map(|(k, _, v)| (k.clone(), v.as_slice())));
    let batches: Vec<Vec<(Vec<usize>, TokenBatch)>> =
        inputs.iter().map(|(_, ex)| eval_batches(tok, ex)).collect::<Result<_>>()?;
    let bar = indicatif::ProgressBar::new((methods.len() + sweep.len()) as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} methods evaluated [{elapsed_precise}]",
    )?);
    let record = |row: &mut MethodRow, set: usize, acc: f64| {
        if set == 0 {
            row.clean = acc;
        } else {
            row.transfer.insert(inputs[set].0.clone(), acc);
        }
    };
    // the members' passes over every input set (with the router, their pooled states too): the
    // members' own accuracies and every β rule's input
    let mixture = zoo.mixture(be, BetaRule::MinEntropy)?;
    let m = mixture.m();
    let passes: Vec<Vec<MemberPasses>> = batches
        .iter()
        .map(|bs| bs.iter().map(|(_, b)| mixture.member_passes(be, b, zoo.router.is_some())).collect())
        .collect::<Result<_>>()?;
    // single models and static mixes: one pass each per distinct classifier (a static β on one
    // member is that member, Adapter Soup a point of the β grid)
    let mut scored: Vec<(Spec, Vec<f64>)> = (0..m)
        .map(|i| {
            let accs = (0..batches.len())
                .map(|set| {
                    accuracy(
                        &member_set_probs(&batches[set], &passes[set], i, inputs[set].1.len()),
                        inputs[set].1,
                    )
                })
                .collect();
            (Spec::Checkpoint { dir: Zoo::member_dir(i, c) }, accs)
        })
        .collect();
    for row in methods.iter_mut().chain(sweep.iter_mut()).filter(|r| !r.spec.is_rule()) {
        let spec = Zoo::canonical(&row.spec, c);
        let k = match scored.iter().position(|(s, _)| *s == spec) {
            Some(k) => k,
            None => {
                let clf = zoo.build(be, &spec, c)?;
                let mut accs = vec![];
                for (set, bs) in batches.iter().enumerate() {
                    let mut probs = vec![vec![]; inputs[set].1.len()];
                    for (idx, batch) in bs {
                        for (i, p) in idx.iter().zip(clf.probs(be, batch)?) {
                            probs[*i] = p;
                        }
                    }
                    accs.push(accuracy(&probs, inputs[set].1));
                }
                scored.push((spec, accs));
                scored.len() - 1
            }
        };
        for (set, acc) in scored[k].1.iter().enumerate() {
            record(row, set, *acc);
        }
        bar.inc(1);
    }
    // τ and the temperatures, chosen on dev
    let mut taus: Vec<f32> = sweep
        .iter()
        .filter_map(|r| match r.spec {
            Spec::Entropy { tau } => Some(tau),
            _ => None,
        })
        .collect();
    taus.dedup();
    let grid: Vec<Vec<f32>> = sweep
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Static { beta } => Some(beta.clone()),
            _ => None,
        })
        .collect();
    let tuning = tune(be, c, tok, &mixture, &taus, &grid)?;
    // every β rule on the one mixture, from the members' passes above: the sweep's, then the
    // methods' own (dev-tuned entropy, calibrated entropy, the router), then the oracle
    let mut rules: Vec<(Option<usize>, Spec, BetaRule)> = sweep
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.spec {
            Spec::Entropy { tau } => Some((Some(i), r.spec.clone(), BetaRule::Entropy { tau: *tau })),
            Spec::MinEntropy => Some((Some(i), r.spec.clone(), BetaRule::MinEntropy)),
            _ => None,
        })
        .collect();
    let chosen = rules
        .iter()
        .position(|(_, _, r)| *r == BetaRule::Entropy { tau: c.a.tau })
        .context("the chosen τ")?;
    let tuned = rules
        .iter()
        .position(|(_, _, r)| *r == BetaRule::Entropy { tau: tuning.entropy_tau })
        .context("the dev-tuned τ")?;
    let calibrated =
        BetaRule::Calibrated { tau: tuning.calibrated_tau, temperatures: tuning.temperatures.clone() };
    rules.push((
        None,
        Spec::Calibrated { tau: tuning.calibrated_tau, temperatures: tuning.temperatures.clone() },
        calibrated,
    ));
    if zoo.router.is_some() {
        rules.push((None, Spec::Router, BetaRule::Router { dir: c.out.join("router") }));
    }
    let just: Vec<BetaRule> = rules.iter().map(|r| r.2.clone()).collect();
    let oracle = just.len();
    // per rule (and the oracle) and set: each example's probabilities and β
    let mut results: Vec<Vec<(Vec<Vec<f32>>, Vec<Vec<f32>>)>> = vec![vec![]; just.len() + 1];
    for (set, bs) in batches.iter().enumerate() {
        let n = inputs[set].1.len();
        for r in results.iter_mut() {
            r.push((vec![vec![]; n], vec![vec![]; n]));
        }
        let want = rightful(c, set, m);
        let oracle_beta: Vec<f32> =
            (0..m).map(|i| if want.contains(&i) { 1.0 / want.len() as f32 } else { 0.0 }).collect();
        for ((idx, batch), p) in bs.iter().zip(&passes[set]) {
            let mut outs = mixture.run_rules_given(be, batch, &just, Some(p))?;
            outs.push(mixture.run_with(be, batch, vec![oracle_beta.clone(); batch.batch], Some(p))?);
            for (r, out) in outs.into_iter().enumerate() {
                for (k, &i) in idx.iter().enumerate() {
                    results[r][set].0[i] = out.probs[k].clone();
                    results[r][set].1[i] = out.beta[k].clone();
                }
            }
        }
    }
    for (r, (row, _, _)) in rules.iter().enumerate() {
        if let Some(row) = row {
            for (set, (probs, _)) in results[r].iter().enumerate() {
                record(&mut sweep[*row], set, accuracy(probs, inputs[set].1));
            }
        }
    }
    bar.inc(rules.iter().filter(|r| r.0.is_some()).count() as u64);
    bar.finish_and_clear();
    // the attribution (entropy β at the configured τ) and the routing of each rule
    let set_label = |s: usize| match s {
        0 => "clean test".to_string(),
        s => format!("{} ({})", inputs[s].0, if c.sets[s - 1].1 { "known" } else { "unseen" }),
    };
    let names: Vec<String> =
        std::iter::once("clean".to_string()).chain(c.plan.known.iter().map(|k| format!("adv_{k}"))).collect();
    let mut attribution = Attribution { members: names, rows: vec![] };
    for (set, (_, beta)) in results[chosen].iter().enumerate() {
        let n = beta.len();
        let mut counts = vec![0usize; m];
        let mut mean_beta = vec![0f64; m];
        for b in beta {
            counts[argmax(b)] += 1;
            for (s, v) in mean_beta.iter_mut().zip(b) {
                *s += *v as f64 / n as f64;
            }
        }
        attribution.rows.push(report::AttributionRow { set: set_label(set), examples: n, counts, mean_beta });
    }
    let rule_name = |r: usize| -> String {
        match r {
            r if r == oracle => "oracle (upper bound)".into(),
            r if r == tuned && r == chosen => {
                format!("entropy β, τ = {} (configured and dev-tuned)", c.a.tau)
            }
            r if r == tuned => format!("entropy β, τ = {} (dev-tuned)", tuning.entropy_tau),
            r if r == chosen => format!("entropy β, τ = {} (configured)", c.a.tau),
            r => match &rules[r].1 {
                Spec::Calibrated { tau, .. } => format!("calibrated entropy β, τ = {tau} (dev-tuned)"),
                Spec::Router => "learned router (admix's own)".into(),
                Spec::MinEntropy => "min-entropy β".into(),
                _ => String::new(),
            },
        }
    };
    let mut routing = vec![];
    for r in (0..=oracle).filter(|&r| {
        r == chosen
            || r == tuned
            || r == oracle
            || rules[r].0.is_none()
            || matches!(rules[r].1, Spec::MinEntropy)
    }) {
        for (set, (_, beta)) in results[r].iter().enumerate() {
            let want = rightful(c, set, m);
            let n = beta.len().max(1) as f64;
            let right = beta.iter().filter(|b| want.contains(&argmax(b))).count() as f64;
            let mass: f64 = beta.iter().map(|b| want.iter().map(|&i| b[i] as f64).sum::<f64>()).sum();
            routing.push(RoutingRow {
                rule: rule_name(r),
                set: set_label(set),
                examples: beta.len(),
                accuracy: 100.0 * right / n,
                mean_beta: mass / n,
            });
        }
    }
    for row in methods.iter_mut().chain(sweep.iter_mut()) {
        row.finish(c.sets.iter().map(|(k, known, _)| (k.as_str(), *known)));
    }
    // the AdpMixup rows: the best static β on test (an upper bound), entropy β at the configured
    // and the dev-tuned τ, calibrated entropy, the router; then the oracle
    let best = sweep
        .iter()
        .filter(|r| r.kind == "beta-sweep")
        .max_by(|x, y| x.score.total_cmp(&y.score))
        .context("empty β grid")?;
    let mut row = best.clone();
    if let Spec::Static { beta } = &row.spec {
        row.name = format!("AdpMixup, best static β on test (upper bound; β_clean = {:.2})", beta[0]);
    }
    row.kind = "adpmixup".into();
    methods.push(row);
    let base = sweep[rules[chosen].0.context("a sweep row")?].clone();
    let dev_static = sweep
        .iter()
        .find(|r| r.spec == Spec::Static { beta: tuning.static_beta.clone() })
        .context("the dev-tuned static β")?;
    let mut row = dev_static.clone();
    row.name = format!("AdpMixup, static β (β_clean = {:.2}, dev-tuned)", tuning.static_beta[0]);
    row.kind = "adpmixup".into();
    methods.push(row);
    let mut row = base.clone();
    row.name = format!("AdpMixup, entropy β (τ = {})", c.a.tau);
    row.kind = "adpmixup".into();
    methods.push(row);
    if tuned != chosen {
        let mut row = sweep[rules[tuned].0.context("a sweep row")?].clone();
        row.name = format!("AdpMixup, entropy β (τ = {}, dev-tuned)", tuning.entropy_tau);
        row.kind = "adpmixup".into();
        methods.push(row);
    }
    let dev_cost: f64 =
        c.plan.known.iter().map(|k| times.get(&format!("attack-dev-{k}")).copied().unwrap_or(0.0)).sum();
    for r in (0..=oracle).filter(|&r| r == oracle || rules[r].0.is_none()) {
        let (name, kind, spec, extra) = match r {
            r if r == oracle => ("oracle router (upper bound)".to_string(), "upper-bound", Spec::Oracle, 0.0),
            r => match &rules[r].1 {
                Spec::Calibrated { tau, .. } => (
                    format!("AdpMixup, calibrated entropy β (τ = {tau}, dev-tuned)"),
                    "adpmixup",
                    rules[r].1.clone(),
                    dev_cost,
                ),
                _ => (
                    "AdpMixup, learned router (admix's own)".to_string(),
                    "adpmixup",
                    Spec::Router,
                    dev_cost + times.get("train-router").copied().unwrap_or(0.0),
                ),
            },
        };
        let mut row = MethodRow::new(&name, kind, spec, base.trainable_params, base.train_seconds + extra);
        if let (Spec::Router, Some((router, _))) = (&row.spec, &zoo.router) {
            row.trainable_params +=
                router.layers.iter().map(|d| d.w.data().len() + d.b.data().len()).sum::<usize>();
        }
        for (set, (probs, _)) in results[r].iter().enumerate() {
            record(&mut row, set, accuracy(probs, inputs[set].1));
        }
        row.finish(c.sets.iter().map(|(k, known, _)| (k.as_str(), *known)));
        methods.push(row);
    }
    Ok(Evaluation { methods, sweep, attribution, routing, tuning })
}

/// The `evaluate` stage's record (`evaluation.config.json`): what it scored and with which τ and β.
#[derive(Serialize)]
struct EvaluateRecord<'a> {
    precision: Option<Precision>,
    tau: f32,
    taus: &'a [f32],
    beta_step: f32,
    test_examples: usize,
    /// (attack, known, adversarial examples)
    sets: Vec<(&'a str, bool, usize)>,
    dev_examples: usize,
    /// (known attack, adversarial dev examples)
    dev_sets: Vec<(&'a str, usize)>,
    router: bool,
    /// what is chosen on dev
    tuned: &'a [&'a str],
}

/// An adaptive stage's record (`adaptive/<method>-<attack>.config.json`).
#[derive(Serialize)]
struct AdaptiveRecord<'a> {
    precision: Option<Precision>,
    method: &'a Spec,
    attack: &'a str,
    examples: usize,
    query_budget: u64,
    seed: u64,
}

/// The `evaluate` stage: every method on the clean test set and the transfer sets, the sweeps, the
/// dev tuning, the routing and the attribution, kept in `evaluation.json`.
pub(super) fn evaluate<B: Backend + 'static>(be: &B, c: &Ctx, st: &Stages, stage: &str) -> Result<()> {
    let zoo = Zoo::open(c)?;
    let file = c.out.join("evaluation.json");
    let times = st.seconds()?;
    let record = EvaluateRecord {
        precision: c.a.precision,
        tau: c.a.tau,
        taus: &c.a.taus,
        beta_step: c.a.beta_step,
        test_examples: c.test.len(),
        sets: c.sets.iter().map(|(k, known, v)| (k.as_str(), *known, v.len())).collect(),
        dev_examples: c.dev.len(),
        dev_sets: c.dev_sets.iter().map(|(k, v)| (k.as_str(), v.len())).collect(),
        router: zoo.router.is_some(),
        tuned: &["temperatures", "entropy τ", "calibrated entropy τ", "static β"],
    };
    st.run_recorded(stage, &c.out.join("evaluation.config.json"), &record, || {
        let e = evaluation(be, c, &zoo, &times)?;
        io::write_atomic(&file, serde_json::to_string_pretty(&e)?.as_bytes())
    })?;
    Ok(())
}

fn read_evaluation(dir: &std::path::Path) -> Result<Evaluation> {
    let file = dir.join("evaluation.json");
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: bad evaluation", file.display()))
}

/// One adaptive attack: a method of the main table (by its canonical spec) and an attack.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct AdaptiveStage {
    pub name: String,
    spec: Spec,
    attack: String,
}

impl AdaptiveStage {
    /// Where the stage's summary and record go.
    fn file(&self, c: &Ctx, ext: &str) -> std::path::PathBuf {
        c.out.join("adaptive").join(format!("{}.{ext}", &self.name["adaptive-".len()..]))
    }
}

/// The adaptive protocol's stages: every method of `evaluate`'s table (the oracle excepted) attacked
/// directly with every known and unseen attack; methods that are one classifier (the best static β
/// may be a member) are attacked once, under the first row's name.
pub(super) fn adaptive_stages(c: &Ctx) -> Result<Vec<AdaptiveStage>> {
    if c.plan.adaptive == 0 {
        return Ok(vec![]);
    }
    let e = read_evaluation(c.out)?;
    let mut seen: Vec<Spec> = vec![];
    let mut out = vec![];
    let core = |r: &MethodRow| match &r.spec {
        Spec::Checkpoint { dir } => dir != "full",
        Spec::ModelSoup => false,
        // Adapter Soup and the best static β on test (an upper bound) are static mixes too
        Spec::Static { .. } => r.kind == "adpmixup" && !r.is_upper_bound(),
        _ => true,
    };
    let wanted = |r: &&MethodRow| {
        r.spec != Spec::Oracle && (c.plan.adaptive_methods == AdaptiveMethods::All || core(r))
    };
    for row in e.methods.iter().filter(wanted) {
        let spec = Zoo::canonical(&row.spec, c);
        if seen.contains(&spec) {
            continue;
        }
        seen.push(spec);
        for k in c.plan.known.iter().chain(&c.plan.unseen) {
            let name = format!("adaptive-{}-{k}", report::slug(&row.name));
            out.push(AdaptiveStage { name, spec: row.spec.clone(), attack: k.clone() });
        }
    }
    Ok(out)
}

/// Runs one adaptive stage: the method attacked as a whole on the first test examples.
pub(super) fn adaptive<B: Backend + 'static>(be: &B, c: &Ctx, st: &Stages, s: &AdaptiveStage) -> Result<()> {
    let victims: Vec<Example> = c.test.iter().take(c.plan.adaptive).cloned().collect();
    let record = AdaptiveRecord {
        precision: c.a.precision,
        method: &s.spec,
        attack: &s.attack,
        examples: victims.len(),
        query_budget: c.a.query_budget,
        seed: c.plan.seed,
    };
    std::fs::create_dir_all(c.out.join("adaptive"))?;
    st.run_recorded(&s.name, &s.file(c, "config.json"), &record, || {
        let zoo = Zoo::open(c)?;
        let clf = zoo.build(be, &Zoo::canonical(&s.spec, c), c)?;
        let tok = &ModelDir::open(&c.model_dir(), c.plan.max_len)?.tokenizer;
        let mut cfg = AttackConfig::new(Choice::parse(&s.attack)?);
        cfg.query_budget = c.a.query_budget;
        cfg.seed = c.plan.seed;
        let (wn, gl) = run::resources(cfg.kind, None, None)?;
        let records = run::black_box(be, &*clf, tok, &victims, &cfg, wn.as_ref(), gl.as_ref())?;
        io::write_atomic(&s.file(c, "json"), serde_json::to_string_pretty(&Summary::of(&records))?.as_bytes())
    })?;
    Ok(())
}

/// The report of a finished run: `evaluate`'s tables with every method's adaptive accuracies, and
/// (with more training seeds, `others` their directories) every method over the seeds.
pub(super) fn report(c: &Ctx, seeds: &[u64], others: &[std::path::PathBuf]) -> Result<Report> {
    let mut e = read_evaluation(c.out)?;
    let mut by_seed = vec![e.methods.clone()];
    for dir in others {
        by_seed.push(read_evaluation(dir)?.methods);
    }
    let stages = adaptive_stages(c)?;
    for row in e.methods.iter_mut().filter(|r| r.spec != Spec::Oracle) {
        let spec = Zoo::canonical(&row.spec, c);
        for s in stages.iter().filter(|s| Zoo::canonical(&s.spec, c) == spec) {
            let file = s.file(c, "json");
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let summary: Summary =
                serde_json::from_str(&text).with_context(|| format!("{}: bad summary", file.display()))?;
            row.adaptive.insert(s.attack.clone(), summary.accuracy_under_attack);
        }
    }
    let sets = c
        .sets
        .iter()
        .map(|(k, known, v)| SetInfo { attack: k.clone(), known: *known, examples: v.len() })
        .collect();
    let mut report = Report::new(
        serde_json::to_value(c.plan)?,
        c.test.len(),
        sets,
        e.methods,
        e.sweep,
        e.attribution,
        c.a.tau,
    );
    report.routing = e.routing;
    report.tuning = e.tuning;
    let labels = |v: &[Example]| v.iter().map(|e| e.label).collect::<Vec<_>>();
    let sets: Vec<(String, Vec<usize>)> = c.sets.iter().map(|(k, _, v)| (k.clone(), labels(v))).collect();
    report.majority = report::Majority::of(&labels(c.dev), &labels(c.test), &sets);
    if !others.is_empty() {
        report.seeds = seeds.to_vec();
        report.seed_rows = report::seed_rows(&by_seed);
    }
    Ok(report)
}
