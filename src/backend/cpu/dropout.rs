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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_expected_fraction_and_repeats_for_the_same_key() {
        let x = Mat { rows: 100, cols: 1000, data: vec![1.0; 100_000] };
        let key = DropKey::new(0.1, 42, 7, 3);
        let y = dropout(x.clone(), key);
        let dropped = y.data.iter().filter(|&&v| v == 0.0).count() as f64 / 1e5;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        assert!(y.data.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(y, dropout(x.clone(), key));
        assert_ne!(y, dropout(x.clone(), DropKey::new(0.1, 42, 8, 3)), "another step, another mask");
        assert_ne!(y, dropout(x, DropKey::new(0.1, 42, 7, 4)), "another site, another mask");
    }
}
