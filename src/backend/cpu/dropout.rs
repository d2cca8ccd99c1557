//! Counter-based dropout (see [`DropKey`]); the same function is its own backward.

use rayon::prelude::*;

use super::Mat;
use crate::backend::DropKey;

const CHUNK: usize = 1 << 14;

pub fn dropout(x: Mat, drop: DropKey) -> Mat {
    let mut out = x;
    out.data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xs)| apply(xs, (c * CHUNK) as u64, drop));
    out
}

/// `xs[i] ← keep(base + i) ? xs[i]·scale : 0`: the mask of elements `base..` of a site. The
/// 64-bit hash vectorises with AVX-512 (`vpmullq`); every version draws the same mask.
pub fn apply(xs: &mut [f32], base: u64, drop: DropKey) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
            #[target_feature(enable = "avx512f,avx512dq,avx2")]
            unsafe fn wide(xs: &mut [f32], base: u64, drop: DropKey) {
                apply_lanes(xs, base, drop)
            }
            // SAFETY: the features were detected just above.
            return unsafe { wide(xs, base, drop) };
        }
    }
    apply_lanes(xs, base, drop)
}

#[inline(always)]
fn apply_lanes(xs: &mut [f32], base: u64, drop: DropKey) {
    let scale = drop.scale();
    for (i, v) in xs.iter_mut().enumerate() {
        *v = if drop.keep(base + i as u64) { *v * scale } else { 0.0 };
    }
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

    #[test]
    fn the_vectorised_mask_is_the_keys_mask() {
        // DropKey::keep is the definition every backend follows (the CUDA kernels' too)
        for p in [0.1f32, 0.5, 1e-9] {
            let key = DropKey::new(p, 3, 1, 2);
            let mut xs = vec![2.0f32; 1000];
            apply(&mut xs, 12_345, key);
            for (i, &v) in xs.iter().enumerate() {
                let want = if key.keep(12_345 + i as u64) { 2.0 * key.scale() } else { 0.0 };
                assert_eq!(v, want, "p {p}, element {i}");
            }
        }
    }
}
