//! `admix attack` as a library call: a classifier named by a [`ClassifierSpec`], a labelled split,
//! an [`AttackConfig`]; the records, TextAttack's summary and, with an output directory,
//! `results.jsonl`, `summary.json` and the job itself as `job.json` (the record of what ran).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics::{AttackRecord, Summary};
use super::run::{self, AttackConfig};
use crate::backend::{Device, Precision};
use crate::classifier::{self, ClassifierSpec};
use crate::data;

/// One attack run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackJob {
    /// the victim: one checkpoint or file, or a mixture (attacked as a whole)
    pub victim: ClassifierSpec,
    /// base model directory (default: the fetched MiniLM)
    pub model: Option<PathBuf>,
    /// token limit (default: the checkpoint's trained length, else 128)
    pub max_len: Option<usize>,
    /// `mr` or a labelled file, and the MR split
    pub data: String,
    pub split: String,
    /// attack the first N examples (default: all)
    pub num_examples: Option<usize>,
    pub device: Device,
    /// the GEMMs' precision (default: the device's own)
    pub precision: Option<Precision>,
    /// WordNet and GloVe directories (default: the fetched ones)
    pub wordnet: Option<PathBuf>,
    pub glove: Option<PathBuf>,
    pub attack: AttackConfig,
    /// where results.jsonl, summary.json and job.json go
    pub out: Option<PathBuf>,
}

/// What an attack run produced.
pub struct AttackRun {
    pub records: Vec<AttackRecord>,
    pub summary: Summary,
    pub seconds: f64,
    /// the data attacked, for messages (`MR test`, or the file)
    pub data: String,
}

/// Reads the victim and the data, runs the attack on the job's device, and writes the results
/// when the job has an output directory.
pub fn run(job: &AttackJob) -> Result<AttackRun> {
    job.attack.check()?;
    let backend = job.device.open(job.precision)?;
    let loaded = classifier::load(&job.victim, job.model.as_deref(), job.max_len)?;
    let mut examples = data::labelled_examples(&job.data, &job.split, &loaded.labels)?;
    if !job.attack.kind.is_black_box() && examples.iter().any(|e| e.pair.is_some()) {
        bail!(
            "{} on sentence pairs is not supported (the data has a second text); the black-box attacks \
             (deepwordbug, pwws, textfooler, textbugger) perturb a pair's first text",
            job.attack.kind.title()
        );
    }
    if let Some(n) = job.num_examples {
        examples.truncate(n);
    }
    if examples.is_empty() {
        bail!("no examples to attack");
    }
    let (wordnet, glove) = run::resources(job.attack.kind, job.wordnet.as_deref(), job.glove.as_deref())?;
    let host_bert = loaded.model.bert()?;
    let started = Instant::now();
    let records = crate::with_backend!(backend, be => {
        let built = loaded.build_on(&be, &host_bert)?;
        run::run(
            &be,
            built.classify(),
            built.model(),
            &loaded.model.tokenizer,
            &host_bert.emb.word,
            &examples,
            &job.attack,
            wordnet.as_ref(),
            glove.as_ref(),
        )?
    });
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary::of(&records);
    let attacked = AttackRun { records, summary, seconds, data: data::describe(&job.data, &job.split) };
    if let Some(dir) = &job.out {
        write_results(dir, job, &attacked)?;
    }
    Ok(attacked)
}

fn write_results(dir: &Path, job: &AttackJob, r: &AttackRun) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::io::write_jsonl(&dir.join("results.jsonl"), &r.records)?;
    let victims: Vec<&Path> = job.victim.sources.iter().map(|s| s.path.as_path()).collect();
    let json = serde_json::json!({
        "attack": job.attack.kind.title(),
        "data": r.data,
        "checkpoint": if victims.len() == 1 { serde_json::json!(victims[0]) } else { serde_json::json!(victims) },
        "device": crate::Choice::name(job.device),
        "precision": job.precision.map(crate::Choice::name),
        "seconds": r.seconds,
        "summary": r.summary,
    });
    crate::io::write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    crate::io::write_atomic(&dir.join("job.json"), serde_json::to_string_pretty(job)?.as_bytes())
}
