//! The bf16 GEMMs of a CPU backend made with [`super::Cpu::bf16`] (`--precision bf16`), on CPUs with
//! AVX512-BF16 (`vdpbf16ps`: 32 bf16 products per instruction, twice the f32 FMA rate): activations
//! and weights are rounded to bf16 (nearest even), products are exact and accumulate in f32 — the
//! numerics of the CUDA path's GEMMs. The f32 path stays the reference. Two products against a
//! weight `W [n×k]`: the linear layer's `x·Wᵀ` ([`gemm_acc`]) and its input gradient `dy·W`
//! ([`gemm_acc_t`]); the weight gradient stays f32 (the master weights are f32, as on the GPU).
//!
//! Weights are packed once per orientation, kept with the weight tensor itself
//! ([`Tensor::derived`]: freed with it, remade if its values change), into 16-column panels of bf16
//! pairs along the reduced dimension: for `B [n×k]` (`W`, or `Wᵀ` for the gradient)
//! `panel[p][kk][lane] = (B[16p + lane][2kk], B[16p + lane][2kk + 1])`, so one 64-byte load feeds
//! 16 output columns; an 8-row × 32-column micro-kernel keeps 16 accumulators in registers.

use std::sync::OnceLock;

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::weights::Tensor;

/// Whether this CPU has AVX512-BF16.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An error where this CPU lacks AVX512-BF16.
pub fn require() -> Result<()> {
    if !available() {
        bail!(
            "precision bf16 on the CPU needs AVX512-BF16 (vdpbf16ps), which this CPU lacks (use --precision f32)"
        );
    }
    Ok(())
}

/// bf16 bits of `x`, rounded to nearest even (the host's one rule, [`crate::backend::bf16`]).
fn bf16_bits(x: f32) -> u32 {
    crate::backend::bf16::from_f32(x) as u32
}

/// A matrix `B [n×k]` packed into 16-column panels of bf16 pairs, `n` padded to 32, `k` to 2.
struct Packed {
    n: usize,
    k2: usize,
    panels: Vec<u32>,
}

/// Packs `B [n×k]` given elementwise: `b(row, col)`.
fn pack(n: usize, k: usize, b: impl Fn(usize, usize) -> f32 + Sync) -> Packed {
    let k2 = k.div_ceil(2);
    let np = n.div_ceil(32) * 2;
    let mut panels = vec![0u32; np * k2 * 16];
    panels.par_chunks_mut(k2 * 16).enumerate().for_each(|(p, panel)| {
        for lane in 0..16.min(n.saturating_sub(16 * p)) {
            let row = 16 * p + lane;
            for kk in 0..k2 {
                let lo = bf16_bits(b(row, 2 * kk));
                let hi = if 2 * kk + 1 < k { bf16_bits(b(row, 2 * kk + 1)) } else { 0 };
                panel[kk * 16 + lane] = lo | (hi << 16);
            }
        }
    });
    Packed { n, k2, panels }
}

/// A weight's packings, each made on first use: `W` for `x·Wᵀ`, `Wᵀ` for `dy·W`.
#[derive(Default)]
struct Packings {
    w: OnceLock<Packed>,
    wt: OnceLock<Packed>,
}

/// `out[m×n] += x[m×k] · W[n×k]ᵀ` with bf16 inputs and f32 accumulation. Needs [`available`].
pub fn gemm_acc(out: &mut [f32], x: &[f32], w: &Tensor, m: usize, n: usize, k: usize) {
    assert!(w.data().len() == n * k, "bf16 gemm shapes");
    let packings = w.derived(|_| Packings::default());
    let b = packings.w.get_or_init(|| {
        let w = w.data();
        pack(n, k, |r, c| w[r * k + c])
    });
    gemm_packed(out, x, b, m, k);
}

/// `out[m×k] += dy[m×n] · W[n×k]` (a linear layer's input gradient) with bf16 inputs and f32
/// accumulation. Needs [`available`].
pub fn gemm_acc_t(out: &mut [f32], dy: &[f32], w: &Tensor, m: usize, n: usize, k: usize) {
    assert!(w.data().len() == n * k, "bf16 gemm shapes");
    let packings = w.derived(|_| Packings::default());
    let b = packings.wt.get_or_init(|| {
        let w = w.data();
        pack(k, n, |r, c| w[c * k + r])
    });
    gemm_packed(out, dy, b, m, n);
}

/// `out[m×n] += x[m×k] · B[n×k]ᵀ` for a packed `B`.
fn gemm_packed(out: &mut [f32], x: &[f32], pw: &Packed, m: usize, k: usize) {
    assert!(available(), "bf16 GEMM without AVX512-BF16");
    let (n, k2) = (pw.n, pw.k2);
    assert!(out.len() == m * n && x.len() == m * k && k.div_ceil(2) == k2, "bf16 gemm shapes");
    if m == 0 || n == 0 {
        return;
    }
    // activations as bf16 pairs, rows padded to a multiple of 8
    let mp = m.div_ceil(8) * 8;
    let mut xa = vec![0u32; mp * k2];
    xa.par_chunks_mut(k2 * 64).enumerate().for_each(|(c, rows)| {
        for (i, row) in rows.chunks_mut(k2).enumerate() {
            let r = c * 64 + i;
            if r < m {
                // SAFETY: available() was asserted above.
                unsafe { to_pairs(&x[r * k..(r + 1) * k], row) };
            }
        }
    });
    // a task owns 128 rows; each panel pair (two 16-column panels) is reused by all of its 8-row
    // micro-blocks while it is hot in cache
    const ROWS: usize = 128;
    out.par_chunks_mut(ROWS * n).enumerate().for_each(|(blk, out)| {
        let r0 = blk * ROWS;
        let rows = out.len() / n;
        for pp in 0..pw.panels.len() / (32 * k2) {
            let b = &pw.panels[2 * pp * k2 * 16..(2 * pp + 2) * k2 * 16];
            for rr in (0..rows).step_by(8) {
                let a = &xa[(r0 + rr) * k2..(r0 + rr + 8) * k2];
                let mut acc = [0f32; 8 * 32];
                // SAFETY: available() was asserted; the slices hold 8 rows of k2 pairs and two
                // panels of k2 × 16 pairs.
                unsafe { kernel_8x32(a, b, k2, &mut acc) };
                for r in 0..(rows - rr).min(8) {
                    let dst = &mut out[(rr + r) * n..(rr + r + 1) * n];
                    let c0 = 32 * pp;
                    for c in 0..32.min(n.saturating_sub(c0)) {
                        dst[c0 + c] += acc[r * 32 + c];
                    }
                }
            }
        }
    });
}

/// One row of f32 as bf16 pairs (nearest even), 32 values per `vcvtne2ps2bf16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_pairs(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let k = src.len();
    let full = k / 32;
    for j in 0..full {
        let lo = _mm512_loadu_ps(src.as_ptr().add(32 * j));
        let hi = _mm512_loadu_ps(src.as_ptr().add(32 * j + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(16 * j) as *mut _, v);
    }
    for kk in 16 * full..dst.len() {
        let lo = bf16_bits(src[2 * kk]);
        let hi = if 2 * kk + 1 < k { bf16_bits(src[2 * kk + 1]) } else { 0 };
        dst[kk] = lo | (hi << 16);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_pairs(_src: &[f32], _dst: &mut [u32]) {
    unreachable!("bf16 GEMM needs x86-64 AVX512-BF16")
}

/// 8 rows × 32 columns: `acc[r][c] = Σ_kk a[r][kk] · b[c / 16][kk][c % 16]` over bf16 pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_8x32(a: &[u32], b: &[u32], k2: usize, acc: &mut [f32; 256]) {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_ps(); 2]; 8];
    let (b0, b1) = (b.as_ptr(), b.as_ptr().add(k2 * 16));
    for kk in 0..k2 {
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(kk * 16) as *const _));
        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(kk * 16) as *const _));
        for (r, cr) in c.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.get_unchecked(r * k2 + kk) as i32));
            cr[0] = _mm512_dpbf16_ps(cr[0], x, w0);
            cr[1] = _mm512_dpbf16_ps(cr[1], x, w1);
        }
    }
    for (r, cr) in c.iter().enumerate() {
        _mm512_storeu_ps(acc.as_mut_ptr().add(r * 32), cr[0]);
        _mm512_storeu_ps(acc.as_mut_ptr().add(r * 32 + 16), cr[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_8x32(_a: &[u32], _b: &[u32], _k2: usize, _acc: &mut [f32; 256]) {
    unreachable!("bf16 GEMM needs x86-64 AVX512-BF16")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn round(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| half::bf16::from_f32(x).to_f32() as f64).collect()
    }

    // shapes off every tile: rows not a multiple of 8 or 32, columns not of 16 or 32, odd k
    const SHAPES: [(usize, usize, usize); 5] =
        [(1, 2, 24), (13, 24, 384), (37, 33, 7), (70, 1536, 384), (9, 384, 1536)];

    #[test]
    fn matches_bf16_rounded_inputs_with_f32_accumulation() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (m, n, k) in SHAPES {
            let (x, w) = (rng(m * k, 1 + m as u64), rng(n * k, 2 + n as u64));
            let bias = rng(n, 3);
            let mut out: Vec<f32> = (0..m).flat_map(|_| bias.clone()).collect();
            gemm_acc(&mut out, &x, &Tensor::from_vec(vec![n, k], w.clone()), m, n, k);
            let (xr, wr) = (round(&x), round(&w));
            let mut err: f64 = 0.0;
            let mut norm: f64 = 0.0;
            for r in 0..m {
                for c in 0..n {
                    let want: f64 =
                        bias[c] as f64 + (0..k).map(|i| xr[r * k + i] * wr[c * k + i]).sum::<f64>();
                    err = err.max((out[r * n + c] as f64 - want).abs());
                    norm = norm.max(want.abs());
                }
            }
            assert!(err <= 1e-5 * norm.max(1.0) * (k as f64).sqrt(), "{m}x{n}x{k}: error {err:.2e}");
        }
    }

    #[test]
    fn the_input_gradient_product_matches_bf16_rounded_inputs() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (m, n, k) in SHAPES {
            let (dy, w) = (rng(m * n, 4 + m as u64), rng(n * k, 5 + k as u64));
            let w = Tensor::from_vec(vec![n, k], w);
            // both orientations on one tensor, each its own packing
            let mut fwd = vec![0f32; m * n];
            gemm_acc(&mut fwd, &rng(m * k, 6), &w, m, n, k);
            let mut dx = vec![1f32; m * k];
            gemm_acc_t(&mut dx, &dy, &w, m, n, k);
            let (dyr, wr) = (round(&dy), round(w.data()));
            let mut err: f64 = 0.0;
            let mut norm: f64 = 0.0;
            for r in 0..m {
                for c in 0..k {
                    let want: f64 = 1.0 + (0..n).map(|j| dyr[r * n + j] * wr[j * k + c]).sum::<f64>();
                    err = err.max((dx[r * k + c] as f64 - want).abs());
                    norm = norm.max(want.abs());
                }
            }
            assert!(err <= 1e-5 * norm.max(1.0) * (n as f64).sqrt(), "{m}x{n}x{k}: error {err:.2e}");
        }
    }
}
