//! `admix eval` as a library call: a classifier (one checkpoint or file, or a mixture, judged as a
//! whole) on a labelled split: accuracy, loss, per-class scores and each example's prediction.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::metrics::{evaluate, Metrics};
use super::ClassifierSpec;
use crate::backend::{Device, Precision};
use crate::data::{self, batches, Example};

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalJob {
    pub classifier: ClassifierSpec,
    /// base model directory (default: the fetched MiniLM; a full checkpoint brings its own)
    pub model: Option<PathBuf>,
    /// token limit (default: the checkpoint's trained length, else 128)
    pub max_len: Option<usize>,
    /// `mr` or a labelled file, and the MR split
    pub data: String,
    pub split: String,
    pub batch_size: usize,
    pub device: Device,
    /// the GEMMs' precision (default: the device's own)
    pub precision: Option<Precision>,
}

/// What an evaluation found.
pub struct EvalRun {
    pub metrics: Metrics,
    /// each example's predicted label id
    pub predictions: Vec<usize>,
    pub examples: Vec<Example>,
    pub labels: Vec<String>,
    /// the data, for messages (`MR test`, or the file)
    pub data: String,
}

pub fn run(job: &EvalJob) -> Result<EvalRun> {
    let loaded = super::load(&job.classifier, job.model.as_deref(), job.max_len)?;
    let examples = data::labelled_examples(&job.data, &job.split, &loaded.labels)?;
    let encoded = batches::encode_split(&loaded.model, &examples, "evaluation")?;
    let pad = loaded.model.tokenizer.pad_id();
    let (metrics, predictions) = crate::with_backend!(job.device.open(job.precision)?, be => {
        let built = loaded.build(&be)?;
        let bar = indicatif::ProgressBar::new(encoded.len() as u64);
        let out = evaluate(&be, built.classify(), &encoded, job.batch_size.max(1), pad, &loaded.labels, |n| {
            bar.inc(n as u64)
        })?;
        bar.finish_and_clear();
        out
    });
    Ok(EvalRun {
        metrics,
        predictions,
        examples,
        labels: loaded.labels,
        data: data::describe(&job.data, &job.split),
    })
}
