//! Mean cross-entropy over a batch and its gradient.

use anyhow::{ensure, Result};

use super::Mat;

pub fn cross_entropy(logits: &Mat, labels: &[u32]) -> Result<(f32, Mat)> {
    let (b, c) = (logits.rows, logits.cols);
    ensure!(labels.len() == b, "cross_entropy: {} labels for {b} rows", labels.len());
    let mut grad = Mat::zeros(b, c);
    let mut loss = 0.0f64;
    for (r, &label) in labels.iter().enumerate() {
        ensure!((label as usize) < c, "label {label} is out of range for {c} classes");
        let row = logits.row(r);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        loss += z.ln() + max - row[label as usize] as f64;
        for (j, g) in grad.data[r * c..(r + 1) * c].iter_mut().enumerate() {
            let p = (row[j] as f64 - max).exp() / z;
            *g = ((p - if j == label as usize { 1.0 } else { 0.0 }) / b as f64) as f32;
        }
    }
    Ok(((loss / b as f64) as f32, grad))
}
