//! The training loop: seeded length-bucketed batches, dropout, AdamW with linear warmup + decay
//! and clipping, dev evaluation each epoch, the best checkpoint kept, and resumption.
//!
//! Output directory layout:
//! - `best/`: the checkpoint with the highest dev accuracy (AdapterHub format, see [`checkpoint`]);
//! - `last/`: the latest checkpoint plus `optimizer.safetensors` and `trainer_state.json`, from
//!   which an interrupted run resumes;
//! - `metrics.jsonl`: one line per epoch (train loss, dev metrics, seconds).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::optim::{linear_schedule, AdamW, AdamWConfig};
use crate::backend::Backend;
use crate::classifier::checkpoint::{self, Meta};
use crate::classifier::metrics::{evaluate, Metrics};
use crate::data::batches::{epoch_batches, make_batch, Encoded};
use crate::io::{replace_dir, write_atomic, write_safetensors};
use crate::model::bert::DropoutPlan;
use crate::model::classify::Model;
use crate::weights::WeightFile;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// fraction of all steps spent in linear warmup
    pub warmup_ratio: f32,
    pub adamw: AdamWConfig,
    /// hidden dropout (attention probabilities use the model config's rate scaled alike)
    pub dropout: f32,
    pub attention_dropout: f32,
    pub seed: u64,
    /// save `last/` every this many steps (besides each epoch end); 0 = only at epoch ends
    pub save_every: usize,
    /// stop after this many steps in total (smoke tests, benchmarks)
    pub max_steps: Option<usize>,
    /// FreeLB adversarial training: each step ascends this PGD on the word embeddings and
    /// averages the parameter gradients of its K passes (`attack::embedding::freelb_accumulate`)
    pub freelb: Option<crate::attack::embedding::Pgd>,
}

/// Tokenized splits and label names.
pub struct TrainData {
    pub train: Vec<Encoded>,
    pub dev: Option<Vec<Encoded>>,
    pub labels: Vec<String>,
    pub pad_id: u32,
}

/// One epoch's record (also a line of `metrics.jsonl`).
#[derive(Clone, Debug)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub train_seconds: f64,
    pub dev: Option<Metrics>,
}

pub struct Summary {
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_dev_accuracy: Option<f64>,
}

/// The fields of a run that must agree for `last/` to be resumed.
pub fn fingerprint(cfg: &TrainConfig, data: &TrainData, full: bool) -> serde_json::Value {
    json!({
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.adamw.lr,
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.adamw.weight_decay,
        "dropout": cfg.dropout,
        "seed": cfg.seed,
        "full": full,
        "freelb": cfg.freelb.map(|p| json!({"norm": format!("{:?}", p.norm), "eps": p.eps, "alpha": p.alpha, "steps": p.steps})),
        "train_examples": data.train.len(),
        "data_sha256": data_digest(data),
        "labels": data.labels,
    })
}

/// A digest of the encoded training and dev examples (token ids, type ids, labels, in order): a
/// run is resumed only on the data it started on.
fn data_digest(data: &TrainData) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (split, examples) in [("train", Some(&data.train)), ("dev", data.dev.as_ref())] {
        h.update(split.as_bytes());
        for e in examples.into_iter().flatten() {
            h.update((e.ids.len() as u64).to_le_bytes());
            e.ids.iter().chain(&e.type_ids).chain([&e.label]).for_each(|v| h.update(v.to_le_bytes()));
        }
    }
    format!("{:x}", h.finalize())
}

/// Trains `model` in place, writing into `out`. With `resume`, continues the run in `out/last`
/// (whose weights the caller has loaded into `model`); `fp` ([`fingerprint`] plus whatever else
/// defines the run) must match the one stored there.
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &TrainData,
    cfg: &TrainConfig,
    meta: &Meta,
    out: &Path,
    resume: bool,
    fp: &serde_json::Value,
) -> Result<Summary> {
    if cfg.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    if !(cfg.adamw.lr > 0.0) {
        bail!("learning rate must be positive (got {})", cfg.adamw.lr);
    }
    if data.train.is_empty() {
        bail!("the training split is empty");
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    let probe = out.join(".admix-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(&probe);

    let lens: Vec<usize> = data.train.iter().map(|e| e.ids.len()).collect();
    let steps_per_epoch = data.train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_ratio as f64 * total as f64).ceil() as u64;
    let mut opt: AdamW<B::Act> = AdamW::new(cfg.adamw.clone());
    let mut best: (usize, Option<f64>) = (0, None);
    let mut step = 0usize;
    let mut epochs = vec![];
    // the running loss of an epoch interrupted by a save: resumed, so that its record is the same
    let mut resumed_loss = None;
    if resume {
        let state = resumable_state(out, fp)?;
        step = state["step"].as_u64().unwrap_or(0) as usize;
        resumed_loss = Some((
            state["epoch_loss_sum"].as_f64().unwrap_or(0.0),
            state["epoch_loss_steps"].as_u64().unwrap_or(0) as usize,
        ));
        best = (state["best_epoch"].as_u64().unwrap_or(0) as usize, state["best_dev_accuracy"].as_f64());
        let (m, v) = load_moments(be, model, &out.join("last").join("optimizer.safetensors"))?;
        opt.restore(m, v, step as u64);
    }
    let total_steps = cfg.max_steps.map_or(total, |m| m.min(total));

    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_every = steps_per_epoch.div_ceil(10).max(1);
    while step < total_steps {
        let epoch = step / steps_per_epoch;
        let batches = epoch_batches(&lens, cfg.batch_size, cfg.seed, epoch);
        let bar = ProgressBar::new(steps_per_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} {bar:30} {pos}/{len} steps {per_sec} loss {msg} eta {eta}",
            )
            .unwrap(),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        bar.set_position((step % steps_per_epoch) as u64);
        bar.reset_eta();
        let started = Instant::now();
        let (mut loss_sum, mut loss_n) = resumed_loss.take().unwrap_or((0.0f64, 0usize));
        for idx in &batches[step % steps_per_epoch..] {
            if step >= total_steps {
                break;
            }
            let (batch, labels) = make_batch(&data.train, idx, data.pad_id);
            let plan = DropoutPlan {
                hidden: cfg.dropout,
                attention: cfg.attention_dropout,
                seed: cfg.seed,
                step: step as u64,
            };
            model.zero_grads(be)?;
            let pass = match &cfg.freelb {
                None => model.forward_backward(be, &batch, &labels, Some(plan), false).map(|o| (o.loss, 1.0)),
                Some(pgd) => {
                    // the random start depends on the seed and the step only: resumable
                    let mut rng = crate::rng::Rng::new(cfg.seed ^ 0xF4EE_1B00 ^ (step as u64) << 20);
                    crate::attack::embedding::freelb_accumulate(
                        be,
                        model,
                        &batch,
                        &labels,
                        Some(plan),
                        pgd,
                        &mut rng,
                    )
                    .map(|loss| (loss, 1.0 / pgd.steps as f32))
                }
            };
            let (loss, mult) = pass.map_err(|e| {
                bar.abandon();
                e.context(format!(
                    "training stopped at step {} (epoch {}); the last good checkpoint is in {}",
                    step + 1,
                    epoch + 1,
                    out.join("last").display()
                ))
            })?;
            let lr = cfg.adamw.lr * linear_schedule(step as u64, warmup, total as u64);
            opt.update_scaled(be, model.params(), lr, mult)
                .with_context(|| format!("optimizer step {}", step + 1))?;
            step += 1;
            loss_sum += loss as f64;
            loss_n += 1;
            bar.set_message(format!("{:.4}", loss_sum / loss_n as f64));
            bar.inc(1);
            if !interactive && step % log_every == 0 {
                // logs (no terminal): a line every tenth of an epoch instead of the bar
                let done = step % steps_per_epoch;
                let done = if done == 0 { steps_per_epoch } else { done };
                eprintln!(
                    "epoch {}: step {done}/{steps_per_epoch}, loss {:.4}, {:.2} steps/s",
                    epoch + 1,
                    loss_sum / loss_n as f64,
                    loss_n as f64 / started.elapsed().as_secs_f64()
                );
            }
            if cfg.save_every > 0 && step % cfg.save_every == 0 && step % steps_per_epoch != 0 {
                save_last(be, model, &opt, meta, out, fp, step, best, (loss_sum, loss_n))?;
            }
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let epoch_done = step % steps_per_epoch == 0;
        let dev = match &data.dev {
            Some(dev) if epoch_done || step >= total_steps => {
                let pb = ProgressBar::new(dev.len() as u64);
                pb.set_style(ProgressStyle::with_template("dev   {bar:30} {pos}/{len} examples").unwrap());
                let (m, _) = evaluate(be, model, dev, cfg.eval_batch_size, data.pad_id, &data.labels, |n| {
                    pb.inc(n as u64)
                })?;
                pb.finish_and_clear();
                Some(m)
            }
            _ => None,
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            step,
            train_loss: loss_sum / loss_n.max(1) as f64,
            train_seconds,
            dev: dev.clone(),
        };
        eprintln!(
            "epoch {}: train loss {:.4} ({:.1} s){}",
            record.epoch,
            record.train_loss,
            train_seconds,
            dev.as_ref().map_or(String::new(), |m| format!(", dev accuracy {:.2}%", 100.0 * m.accuracy))
        );
        let improved = match (&dev, best.1) {
            (Some(m), Some(b)) => m.accuracy > b,
            (Some(_), None) => true,
            (None, _) => data.dev.is_none(),
        };
        if improved {
            best = (epoch + 1, dev.as_ref().map(|m| m.accuracy));
            replace_dir(&out.join("best"), |dir| {
                checkpoint::write(be, model, meta, dir)?;
                write_atomic(
                    &dir.join("metrics.json"),
                    serde_json::to_string_pretty(&record_json(&record))?.as_bytes(),
                )
            })?;
        }
        append_metrics(out, &record)?;
        let running = if epoch_done { (0.0, 0) } else { (loss_sum, loss_n) };
        save_last(be, model, &opt, meta, out, fp, step, best, running)?;
        epochs.push(record);
    }
    Ok(Summary { epochs, best_epoch: best.0, best_dev_accuracy: best.1 })
}

fn record_json(r: &EpochRecord) -> serde_json::Value {
    json!({
        "epoch": r.epoch,
        "step": r.step,
        "train_loss": r.train_loss,
        "train_seconds": r.train_seconds,
        "dev": r.dev,
    })
}

fn append_metrics(out: &Path, r: &EpochRecord) -> Result<()> {
    let path = out.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text += &record_json(r).to_string();
    text.push('\n');
    write_atomic(&path, text.as_bytes())
}

#[allow(clippy::too_many_arguments)]
fn save_last<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    opt: &AdamW<B::Act>,
    meta: &Meta,
    out: &Path,
    fp: &serde_json::Value,
    step: usize,
    best: (usize, Option<f64>),
    (loss_sum, loss_steps): (f64, usize),
) -> Result<()> {
    replace_dir(&out.join("last"), |dir| {
        checkpoint::write(be, model, meta, dir)?;
        let (m, v) = opt.moments();
        let mut tensors = vec![];
        for ((p, m), v) in model.params().iter().zip(m).zip(v) {
            for (kind, t) in [("m", m), ("v", v)] {
                let (rows, cols, data) = be.download(t)?;
                tensors.push((format!("{kind}.{}", p.name), vec![rows, cols], data));
            }
        }
        write_safetensors(&dir.join("optimizer.safetensors"), &tensors)?;
        let state = json!({
            "step": step,
            "best_epoch": best.0,
            "best_dev_accuracy": best.1,
            "epoch_loss_sum": loss_sum,
            "epoch_loss_steps": loss_steps,
            "fingerprint": fp,
        });
        write_atomic(&dir.join("trainer_state.json"), serde_json::to_string_pretty(&state)?.as_bytes())
    })
}

/// Whether `out/last` holds a run to resume: `false` when there is none, an error when it was
/// made with other settings.
pub fn can_resume(out: &Path, fp: &serde_json::Value) -> Result<bool> {
    let last = out.join("last");
    crate::io::recover_dir(&last)?;
    if !last.join("trainer_state.json").exists() {
        return Ok(false);
    }
    resumable_state(out, fp)?;
    Ok(true)
}

/// The trainer state in `out/last`, if it was made with the settings `fp`.
fn resumable_state(out: &Path, fp: &serde_json::Value) -> Result<serde_json::Value> {
    let state = read_state(&out.join("last"))?;
    if state["fingerprint"] != *fp {
        if state["fingerprint"]["data_sha256"] != fp["data_sha256"] {
            bail!(
                "{} holds a run on other data (the training or dev examples changed); choose another --out or pass --overwrite",
                out.display()
            );
        }
        bail!("{} holds a run with other settings; choose another --out or pass --overwrite", out.display());
    }
    Ok(state)
}

/// The trainer state of a `last/` checkpoint.
pub fn read_state(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

fn load_moments<B: Backend>(be: &B, model: &mut Model<B>, path: &Path) -> Result<(Vec<B::Act>, Vec<B::Act>)> {
    let file = WeightFile::open(path)?;
    let (mut m, mut v) = (vec![], vec![]);
    for p in model.params() {
        let (rows, cols, _) = be.download(p.grad)?;
        for (kind, out) in [("m", &mut m), ("v", &mut v)] {
            let t = file.tensor(&format!("{kind}.{}", p.name), &[rows, cols])?;
            out.push(be.upload_state(rows, cols, t.data())?);
        }
    }
    Ok((m, v))
}
