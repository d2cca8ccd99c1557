//! Counter-based dropout (see [`DropKey`]); the same function is its own backward.

use rayon::prelude::*;

use super::Mat;
use crate::backend::DropKey;

const CHUNK: usize = 1 << 14;

pub fn dropout(x: Mat, drop: DropKey) -> Mat {
    let scale = drop.scale();
    let mut out = x;
    out.data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xs)| {
        let base = (c * CHUNK) as u64;
        for (i, v) in xs.iter_mut().enumerate() {
            *v = if drop.keep(base + i as u64) { *v * scale } else { 0.0 };
        }
    });
    out
}
