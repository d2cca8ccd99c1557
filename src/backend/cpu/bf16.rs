//! An opt-in bf16 GEMM for the CPU backend's inference linears, on CPUs with AVX512-BF16
//! (`vdpbf16ps`: 32 bf16 products per instruction, twice the f32 FMA rate): activations and
//! weights are rounded to bf16 (nearest even), products are exact and accumulate in f32 — the
//! numerics of the CUDA path's GEMMs. The f32 path stays the reference; this one belongs to a CPU
//! backend made with [`super::Cpu::bf16`] (attack-time scoring, where the GEMMs are the whole cost).
//!
//! Weights are packed once, kept with the weight tensor itself ([`Tensor::derived`]: freed with it,
//! remade if its values change), into 16-column panels of bf16 pairs along K:
//! `panel[p][kk][lane] = (W[16p + lane][2kk], W[16p + lane][2kk + 1])`, so one 64-byte load feeds
//! 16 output columns; an 8-row × 32-column micro-kernel keeps 16 accumulators in registers.

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
            "this CPU has no AVX512-BF16 (vdpbf16ps): the bf16 CPU path is unavailable; use the default f32"
        );
    }
    Ok(())
}

/// bf16 bits of `x`, rounded to nearest even (the host's one rule, [`crate::backend::bf16`]).
fn bf16_bits(x: f32) -> u32 {
    crate::backend::bf16::from_f32(x) as u32
}

/// A weight `[n, k]` packed into 16-column panels of bf16 pairs, `n` padded to 32, `k` to 2.
struct Packed {
    n: usize,
    k2: usize,
    panels: Vec<u32>,
}

fn pack(w: &[f32], n: usize, k: usize) -> Packed {
    let k2 = k.div_ceil(2);
    let np = n.div_ceil(32) * 2;
    let mut panels = vec![0u32; np * k2 * 16];
    for col in 0..n {
        let (p, lane) = (col / 16, col % 16);
        for kk in 0..k2 {
            let lo = bf16_bits(w[col * k + 2 * kk]);
            let hi = if 2 * kk + 1 < k { bf16_bits(w[col * k + 2 * kk + 1]) } else { 0 };
            panels[(p * k2 + kk) * 16 + lane] = lo | (hi << 16);
        }
    }
    Packed { n, k2, panels }
}

/// `out[m×n] += x[m×k] · w[n×k]ᵀ` with bf16 inputs and f32 accumulation. Needs [`available`].
pub fn gemm_acc(out: &mut [f32], x: &[f32], w: &Tensor, m: usize, n: usize, k: usize) {
    assert!(available(), "bf16 GEMM without AVX512-BF16");
    assert!(out.len() == m * n && x.len() == m * k && w.data().len() == n * k, "bf16 gemm shapes");
    let pw = w.derived(|w| pack(w, n, k));
    debug_assert_eq!(pw.n, n);
    let k2 = pw.k2;
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

    #[test]
    fn matches_bf16_rounded_inputs_with_f32_accumulation() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let round =
            |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| half::bf16::from_f32(x).to_f32() as f64).collect() };
        // shapes off every tile: rows not a multiple of 8 or 32, columns not of 16 or 32, odd k
        for (m, n, k) in [(1, 2, 24), (13, 24, 384), (37, 33, 7), (70, 1536, 384), (9, 384, 1536)] {
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
}
