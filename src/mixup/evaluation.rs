//! The `evaluate` stage (every method on the clean test set and every transfer set, the β sweep,
//! the τ ablation, the β attribution) and the adaptive attacks on every method.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::methods::{method_rows, Zoo};
use super::report::{self, Attribution, MethodRow, Report, SetInfo, Spec};
use super::stages::Stages;
use super::Ctx;
use crate::adapter::mix::BetaRule;
use crate::attack::metrics::Summary;
use crate::attack::run::{self, AttackConfig};
use crate::backend::{Backend, Precision, TokenBatch};
use crate::data::batches;
use crate::data::Example;
use crate::io;
use crate::model::classify::argmax;
use crate::model::tokenizer::TextTokenizer;
use crate::model::ModelDir;
use crate::Choice;

/// Batches of `examples` in length order: `(example indices, batch)`.
fn eval_batches(tok: &TextTokenizer, examples: &[Example]) -> Result<Vec<(Vec<usize>, TokenBatch)>> {
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
}

/// Clean and transfer accuracy of every method, the sweeps, and the attribution table.
fn evaluation<B: Backend + 'static>(
    be: &B,
    c: &Ctx,
    zoo: &Zoo,
    times: &BTreeMap<String, f64>,
) -> Result<Evaluation> {
    let tok = &ModelDir::open(&c.model_dir(), 64)?.tokenizer;
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
    // single models and static mixes: one pass each per distinct classifier (a static β on one
    // member is that member, Adapter Soup a point of the β grid); the members' probabilities are
    // kept for the β rules
    let member_specs: Vec<Spec> =
        (0..zoo.members.len()).map(|i| Spec::Checkpoint { dir: Zoo::member_dir(i, c) }).collect();
    let mut member_probs: Vec<Vec<Vec<Vec<f32>>>> = vec![vec![]; member_specs.len()]; // [member][set][example]
    let mut scored: Vec<(Spec, Vec<f64>)> = vec![]; // each classifier's accuracy per input set
    for row in methods
        .iter_mut()
        .chain(sweep.iter_mut())
        .filter(|r| !matches!(r.spec, Spec::Entropy { .. } | Spec::MinEntropy))
    {
        let spec = Zoo::canonical(&row.spec, c);
        let k = match scored.iter().position(|(s, _)| *s == spec) {
            Some(k) => k,
            None => {
                let clf = zoo.build(be, &spec, c)?;
                let member = member_specs.iter().position(|m| *m == spec);
                let mut accs = vec![];
                for (set, bs) in batches.iter().enumerate() {
                    let mut probs = vec![vec![]; inputs[set].1.len()];
                    for (idx, batch) in bs {
                        for (i, p) in idx.iter().zip(clf.probs(be, batch)?) {
                            probs[*i] = p;
                        }
                    }
                    accs.push(accuracy(&probs, inputs[set].1));
                    if let Some(m) = member {
                        member_probs[m].push(probs);
                    }
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
    if member_probs.iter().any(|m| m.len() != batches.len()) {
        bail!("a member adapter is missing from the methods");
    }
    // every β rule on one mixture, from the members' probabilities above
    let rules: Vec<(usize, BetaRule)> = sweep
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.spec {
            Spec::Entropy { tau } => Some((i, BetaRule::Entropy { tau })),
            Spec::MinEntropy => Some((i, BetaRule::MinEntropy)),
            _ => None,
        })
        .collect();
    let chosen =
        rules.iter().position(|(_, r)| *r == BetaRule::Entropy { tau: c.a.tau }).context("the chosen τ")?;
    let names: Vec<String> =
        std::iter::once("clean".to_string()).chain(c.plan.known.iter().map(|k| format!("adv_{k}"))).collect();
    let mut attribution = Attribution { members: names, rows: vec![] };
    let mixture = zoo.mixture(be, BetaRule::MinEntropy)?;
    let just: Vec<BetaRule> = rules.iter().map(|(_, r)| r.clone()).collect();
    for (set, bs) in batches.iter().enumerate() {
        let n = inputs[set].1.len();
        let mut probs = vec![vec![vec![]; n]; rules.len()];
        let m = mixture.m();
        let (mut counts, mut mean_beta) = (vec![0usize; m], vec![0f64; m]);
        for (idx, batch) in bs {
            let given: Vec<Vec<Vec<f32>>> =
                member_probs.iter().map(|p| idx.iter().map(|&i| p[set][i].clone()).collect()).collect();
            for (r, out) in mixture.run_rules_given(be, batch, &just, Some(&given))?.into_iter().enumerate() {
                for (k, &i) in idx.iter().enumerate() {
                    probs[r][i] = out.probs[k].clone();
                    if r == chosen {
                        counts[argmax(&out.beta[k])] += 1;
                        for (s, v) in mean_beta.iter_mut().zip(&out.beta[k]) {
                            *s += *v as f64 / n as f64;
                        }
                    }
                }
            }
        }
        for (r, (row, _)) in rules.iter().enumerate() {
            record(&mut sweep[*row], set, accuracy(&probs[r], inputs[set].1));
        }
        let label = match set {
            0 => "clean test".to_string(),
            s => format!("{} ({})", inputs[s].0, if c.sets[s - 1].1 { "known" } else { "unseen" }),
        };
        attribution.rows.push(report::AttributionRow { set: label, examples: n, counts, mean_beta });
    }
    bar.inc(rules.len() as u64);
    bar.finish_and_clear();
    for row in methods.iter_mut().chain(sweep.iter_mut()) {
        row.finish(c.sets.iter().map(|(k, known, _)| (k.as_str(), *known)));
    }
    // the best static β (by the mean of clean and robust accuracy) and the chosen τ join the table
    let best = sweep
        .iter()
        .filter(|r| r.kind == "beta-sweep")
        .max_by(|x, y| x.score.total_cmp(&y.score))
        .context("empty β grid")?;
    let mut row = best.clone();
    if let Spec::Static { beta } = &row.spec {
        row.name = format!("AdpMixup, best static β (β_clean = {:.2})", beta[0]);
    }
    row.kind = "adpmixup".into();
    methods.push(row);
    let mut row = sweep[rules[chosen].0].clone();
    row.name = format!("AdpMixup, entropy β (τ = {})", c.a.tau);
    row.kind = "adpmixup".into();
    methods.push(row);
    Ok(Evaluation { methods, sweep, attribution })
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

pub(super) fn evaluate<B: Backend + 'static>(be: &B, c: &Ctx, st: &mut Stages) -> Result<Report> {
    let zoo = Zoo::open(c)?;
    let file = c.out.join("evaluation.json");
    let times = st.log.seconds.clone();
    let record = EvaluateRecord {
        precision: c.a.precision,
        tau: c.a.tau,
        taus: &c.a.taus,
        beta_step: c.a.beta_step,
        test_examples: c.test.len(),
        sets: c.sets.iter().map(|(k, known, v)| (k.as_str(), *known, v.len())).collect(),
    };
    st.run_recorded("evaluate", &c.out.join("evaluation.config.json"), &record, || {
        let e = evaluation(be, c, &zoo, &times)?;
        io::write_atomic(&file, serde_json::to_string_pretty(&e)?.as_bytes())
    })?;
    let mut e: Evaluation = serde_json::from_str(&std::fs::read_to_string(&file)?)
        .with_context(|| format!("{}: bad evaluation", file.display()))?;

    // the adaptive protocol: every method of the table attacked directly
    if c.plan.adaptive > 0 {
        let tok = &ModelDir::open(&c.model_dir(), 64)?.tokenizer;
        let victims: Vec<Example> = c.test.iter().take(c.plan.adaptive).cloned().collect();
        let attacks: Vec<String> = c.plan.known.iter().chain(&c.plan.unseen).cloned().collect();
        let dir = c.out.join("adaptive");
        std::fs::create_dir_all(&dir)?;
        // methods that are one classifier (the best static β may be a member) are attacked once
        let mut attacked: Vec<(Spec, BTreeMap<String, f64>)> = vec![];
        for row in e.methods.iter_mut() {
            let spec = Zoo::canonical(&row.spec, c);
            if let Some((_, adaptive)) = attacked.iter().find(|(s, _)| *s == spec) {
                row.adaptive = adaptive.clone();
                continue;
            }
            let clf = zoo.build(be, &spec, c)?;
            for k in &attacks {
                let stage = format!("adaptive-{}-{k}", report::slug(&row.name));
                let file = dir.join(format!("{}.json", &stage["adaptive-".len()..]));
                let record = AdaptiveRecord {
                    precision: c.a.precision,
                    method: &row.spec,
                    attack: k,
                    examples: victims.len(),
                    query_budget: c.a.query_budget,
                    seed: c.plan.seed,
                };
                let record_file = dir.join(format!("{}.config.json", &stage["adaptive-".len()..]));
                st.run_recorded(&stage, &record_file, &record, || {
                    let mut cfg = AttackConfig::new(Choice::parse(k)?);
                    cfg.query_budget = c.a.query_budget;
                    cfg.seed = c.plan.seed;
                    let (wn, gl) = run::resources(cfg.kind, None, None)?;
                    let records = run::black_box(be, &*clf, tok, &victims, &cfg, wn.as_ref(), gl.as_ref())?;
                    io::write_atomic(&file, serde_json::to_string_pretty(&Summary::of(&records))?.as_bytes())
                })?;
                let summary: Summary = serde_json::from_str(&std::fs::read_to_string(&file)?)
                    .with_context(|| format!("{}: bad summary", file.display()))?;
                row.adaptive.insert(k.clone(), summary.accuracy_under_attack);
            }
            attacked.push((spec, row.adaptive.clone()));
        }
    }
    let sets = c
        .sets
        .iter()
        .map(|(k, known, v)| SetInfo { attack: k.clone(), known: *known, examples: v.len() })
        .collect();
    Ok(Report::new(
        serde_json::to_value(c.plan)?,
        c.test.len(),
        sets,
        e.methods,
        e.sweep,
        e.attribution,
        c.a.tau,
    ))
}
