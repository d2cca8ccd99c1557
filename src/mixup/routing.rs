//! The `train-router` stage: the members' passes over the training split's clean sentences and
//! each known attack's adversarial training examples (pooled states kept) become the router's
//! feature rows, each labelled with the member that should take it; the dev split and the dev
//! adversarial sets pick the epoch ([`crate::train::router`]).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::evaluation::eval_batches;
use crate::adapter::mix::BetaRule;
use crate::adapter::router::features;
use crate::adapter::router::RouterConfig;
use crate::backend::Backend;
use crate::classifier::{self, Built, ClassifierSpec, Source};
use crate::data::Example;
use crate::train::router::{fit, FitConfig, FitReport, Routed};

/// What the router is trained on: per member (0 clean, then one per known attack), the inputs it
/// should take.
pub(super) struct RouterData<'a> {
    pub train: Vec<&'a [Example]>,
    pub dev: Vec<&'a [Example]>,
}

/// The `train-router` stage's record (`router.config.json`).
#[derive(Serialize)]
pub(super) struct RouterRecord {
    pub fit: FitConfig,
    pub members: Vec<String>,
    pub train: Vec<usize>,
    pub dev: Vec<usize>,
}

/// Trains the router over the members in `dirs` (clean first) and saves it in `out`.
pub(super) fn train_router<B: Backend>(
    be: &B,
    model: Option<&Path>,
    max_len: usize,
    dirs: &[(String, &Path)],
    data: &RouterData,
    cfg: &FitConfig,
    out: &Path,
) -> Result<FitReport> {
    let spec = ClassifierSpec {
        sources: dirs.iter().map(|(_, d)| Source::dir(d)).collect(),
        mixing: BetaRule::MinEntropy,
        adapter_act: None,
    };
    let loaded = classifier::load(&spec, model, Some(max_len))?;
    let Built::Mixture(mixture) = loaded.build(be)? else {
        anyhow::bail!("a router needs two or more members")
    };
    let tok = &loaded.model.tokenizer;
    let table = tok.piece_table();
    let (m, labels, hidden) = (dirs.len(), loaded.labels.len(), loaded.model.config.hidden_size);
    let width = features::width(m, labels, hidden);
    let rows = |sets: &[&[Example]]| -> Result<Routed> {
        let mut out = Routed::default();
        for (member, examples) in sets.iter().enumerate() {
            for (_, batch) in eval_batches(tok, examples)? {
                let passes = mixture.member_passes(be, &batch, true)?;
                out.push(&features::rows(&passes, &batch, &table)?, width, member);
            }
        }
        Ok(out)
    };
    let train = rows(&data.train).context("the router's training features")?;
    let dev = rows(&data.dev).context("the router's dev features")?;
    let shape = RouterConfig::for_mixture(dirs.iter().map(|(n, _)| n.clone()).collect(), labels, hidden);
    let (router, report) = fit(be, cfg, shape, &train, &dev)?;
    crate::io::replace_dir(out, |tmp| router.save(tmp))?;
    Ok(report)
}
