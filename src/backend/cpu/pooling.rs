//! Sentence embedding: mean over valid tokens, then L2 normalisation (sentence-transformers).

use anyhow::Result;

use super::Mat;

pub fn mean_pool_l2(x: &Mat, lens: &[usize], seq: usize) -> Result<Mat> {
    crate::backend::shapes::sequences("mean_pool", x.rows, lens, seq)?;
    let h = x.cols;
    let mut out = Mat::zeros(lens.len(), h);
    for (b, &len) in lens.iter().enumerate() {
        let o = &mut out.data[b * h..(b + 1) * h];
        for s in 0..len {
            for (o, v) in o.iter_mut().zip(x.row(b * seq + s)) {
                *o += v;
            }
        }
        let inv = 1.0 / len as f32;
        o.iter_mut().for_each(|v| *v *= inv);
        let norm = o.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        o.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(out)
}
