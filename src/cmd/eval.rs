//! `admix eval`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use admix::classifier::eval::{self, EvalJob, EvalRun};

use super::{ClassifierArgs, LabelledData, MaxLen, Runtime};

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory (a run directory means its best/); or name the classifier with
    /// --adapter (repeat to evaluate a mixture)
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    clf: ClassifierArgs,
    #[command(flatten)]
    data: LabelledData,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Print the metrics as JSON
    #[arg(long)]
    json: bool,
    /// Also write per-example predictions (JSONL) here
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    max_len: MaxLen,
    #[command(flatten)]
    rt: Runtime,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    a.rt.init()?;
    let job = EvalJob {
        classifier: a.clf.spec(a.checkpoint.as_deref())?,
        model: a.rt.model.clone(),
        max_len: a.max_len.get(),
        data: a.data.data.clone(),
        split: a.data.split.clone(),
        batch_size: a.batch_size,
        device: a.rt.device,
        precision: a.rt.precision,
    };
    let r = eval::run(&job)?;
    if let Some(p) = &a.predictions {
        super::write_jsonl(
            Some(p),
            r.examples.iter().zip(&r.predictions).enumerate().map(|(i, (e, &p))| {
                serde_json::json!({"index": i, "text": e.text, "label": r.labels[e.label], "prediction": r.labels[p]})
            }),
        )?;
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r.metrics)?)?;
        return Ok(());
    }
    print(&mut out, &r, &job)
}

fn print(out: &mut impl Write, r: &EvalRun, job: &EvalJob) -> Result<()> {
    let m = &r.metrics;
    let names: Vec<String> = job.classifier.sources.iter().map(|s| s.path.display().to_string()).collect();
    writeln!(out, "{} on {}: {} examples", names.join(" + "), r.data, m.examples)?;
    writeln!(out, "accuracy  {:.2}%   loss {:.4}   macro F1 {:.4}", 100.0 * m.accuracy, m.loss, m.macro_f1)?;
    writeln!(out, "{:<16} {:>9} {:>9} {:>9} {:>8}", "label", "precision", "recall", "f1", "support")?;
    for c in &m.per_class {
        writeln!(
            out,
            "{:<16} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            c.label, c.precision, c.recall, c.f1, c.support
        )?;
    }
    Ok(())
}
