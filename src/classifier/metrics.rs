//! Classification metrics: accuracy, mean loss, per-class precision / recall / F1, macro F1.

use anyhow::Result;
use serde::Serialize;

use crate::backend::Backend;
use crate::data::batches::{eval_batches, make_batch, Encoded};
use crate::model::classify::{argmax, ensure_finite, Classify};

#[derive(Clone, Debug, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub examples: usize,
    pub accuracy: f64,
    /// mean cross-entropy
    pub loss: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
}

/// Metrics of predictions against gold labels.
pub fn score(pred: &[usize], gold: &[usize], losses: &[f64], labels: &[String]) -> Metrics {
    let n = gold.len();
    let correct = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    let per_class: Vec<ClassMetrics> = labels
        .iter()
        .enumerate()
        .map(|(c, label)| {
            let tp = pred.iter().zip(gold).filter(|&(&p, &g)| p == c && g == c).count() as f64;
            let predicted = pred.iter().filter(|&&p| p == c).count() as f64;
            let support = gold.iter().filter(|&&g| g == c).count();
            let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
            let recall = if support > 0 { tp / support as f64 } else { 0.0 };
            let f1 =
                if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassMetrics { label: label.clone(), precision, recall, f1, support }
        })
        .collect();
    Metrics {
        examples: n,
        accuracy: correct as f64 / n.max(1) as f64,
        loss: losses.iter().sum::<f64>() / n.max(1) as f64,
        macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / per_class.len().max(1) as f64,
        per_class,
    }
}

/// Evaluates a classifier (a model, or a mixture as a whole) on `data`; returns the metrics and each
/// example's predicted label.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &dyn Classify<B>,
    data: &[Encoded],
    batch_size: usize,
    pad_id: u32,
    labels: &[String],
    mut progress: impl FnMut(usize),
) -> Result<(Metrics, Vec<usize>)> {
    let lens: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let mut pred = vec![0usize; data.len()];
    let mut losses = vec![0.0f64; data.len()];
    for idx in eval_batches(&lens, batch_size) {
        let (batch, gold) = make_batch(data, &idx, pad_id);
        let probs = model.probs(be, &batch)?;
        ensure_finite(&probs.concat(), "probability")?;
        for ((&i, p), &g) in idx.iter().zip(&probs).zip(&gold) {
            pred[i] = argmax(p);
            losses[i] = -(p[g as usize].max(1e-30) as f64).ln();
        }
        progress(idx.len());
    }
    let gold: Vec<usize> = data.iter().map(|e| e.label as usize).collect();
    Ok((score(&pred, &gold, &losses, labels), pred))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_against_hand_counts() {
        let labels = vec!["a".to_string(), "b".to_string()];
        // gold: a a b b ; pred: a b b b → acc 3/4; a: P 1, R 1/2; b: P 2/3, R 1
        let m = score(&[0, 1, 1, 1], &[0, 0, 1, 1], &[0.0; 4], &labels);
        assert_eq!(m.accuracy, 0.75);
        assert!((m.per_class[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!((m.macro_f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-12);
    }
}
