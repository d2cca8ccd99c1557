//! The bf16 GEMMs of a CPU backend made with [`super::Cpu::bf16`] (`--precision bf16`), on CPUs with
//! AVX512-BF16 (`vdpbf16ps`: 32 bf16 products per instruction, twice the f32 FMA rate): activations
//! and weights are rounded to bf16 (nearest even), products are exact and accumulate in f32 — the
//! numerics of the CUDA path's GEMMs. The f32 path stays the reference. Two products against a
//! weight `W [n×k]`: the linear layer's `x·Wᵀ` ([`gemm_acc`]) and its input gradient `dy·W`
//! ([`gemm_acc_t`]); the weight gradient stays f32 (the master weights are f32, as on the GPU).
//! Attention's per-head products ([`small`]) use the same micro-kernel on one thread each.
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
pub(super) struct Packed {
    n: usize,
    k2: usize,
    panels: Vec<u32>,
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
    let b = packings.w.get_or_init(|| small::packed_rows(w.data(), n, k, k));
    gemm_packed(out, x, b, m, k);
}

/// `out[m×k] += dy[m×n] · W[n×k]` (a linear layer's input gradient) with bf16 inputs and f32
/// accumulation. Needs [`available`].
pub fn gemm_acc_t(out: &mut [f32], dy: &[f32], w: &Tensor, m: usize, n: usize, k: usize) {
    assert!(w.data().len() == n * k, "bf16 gemm shapes");
    let packings = w.derived(|_| Packings::default());
    // Wᵀ [k×n]: row c of Wᵀ is column c of W
    let b = packings.wt.get_or_init(|| small::packed_cols(w.data(), n, k, k));
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
    // a task owns up to 128 rows; each panel pair (two 16-column panels) is reused by all of its
    // 8-row micro-blocks while it is hot in cache. Fewer rows when that leaves a thread idle (one
    // sequence is 128 rows)
    let tasks = 2 * rayon::current_num_threads();
    let rows = (m.div_ceil(tasks).div_ceil(8) * 8).clamp(8, 128);
    out.par_chunks_mut(rows * n).enumerate().for_each(|(blk, out)| {
        let r0 = blk * rows;
        // SAFETY: available() was asserted; xa holds the block's rows, padded to 8.
        unsafe { block(out, &xa[r0 * k2..], pw) };
    });
}

/// `out[rows×n] += A · B[n×k]ᵀ` on one thread, for `A`'s bf16 pairs `a` (at least `rows` rounded
/// up to 8 rows of `B.k2` pairs).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bf16"))]
unsafe fn block(out: &mut [f32], a: &[u32], pw: &Packed) {
    let (n, k2) = (pw.n, pw.k2);
    let rows = out.len() / n;
    for pp in 0..pw.panels.len() / (32 * k2) {
        let b = &pw.panels[2 * pp * k2 * 16..(2 * pp + 2) * k2 * 16];
        let c0 = 32 * pp;
        for rr in (0..rows).step_by(8) {
            let mut acc = [0f32; 8 * 32];
            kernel_8x32(&a[rr * k2..(rr + 8) * k2], b, k2, &mut acc);
            let (height, width) = ((rows - rr).min(8), 32.min(n - c0));
            for r in 0..height {
                let dst = &mut out[(rr + r) * n + c0..(rr + r) * n + c0 + width];
                for (d, a) in dst.iter_mut().zip(&acc[r * 32..r * 32 + width]) {
                    *d += a;
                }
            }
        }
    }
}

/// Operands read in place from strided rows (`row r` of a matrix at `src[r·ld..]`) and packed on
/// one thread: the weights' panels (once per weight) and attention's operands (per sequence and
/// head, with [`small::gemm`] as their product).
pub(super) mod small {
    use super::*;

    /// `A [m×k]` as bf16 pairs, `m` padded to 8.
    pub struct Rows {
        k2: usize,
        pairs: Vec<u32>,
    }

    /// The rows `src[r·ld..r·ld + k]`, `r < m`, as bf16 pairs. Needs [`available`].
    pub fn rows(src: &[f32], m: usize, k: usize, ld: usize) -> Rows {
        assert!(available(), "bf16 GEMM without AVX512-BF16");
        let k2 = k.div_ceil(2);
        let mut pairs = vec![0u32; m.div_ceil(8) * 8 * k2];
        for (r, dst) in pairs.chunks_mut(k2).take(m).enumerate() {
            // SAFETY: available() was asserted above.
            unsafe { to_pairs(&src[r * ld..r * ld + k], dst) };
        }
        Rows { k2, pairs }
    }

    /// The columns of `src`'s rows as the rows of `A [m×k]`: `A[i][j] = src[j·ld + i]`, `i < m`,
    /// `j < k`, as bf16 pairs. Needs [`available`].
    pub fn cols(src: &[f32], m: usize, k: usize, ld: usize) -> Rows {
        let b = packed_cols(src, k, m, ld);
        let k2 = b.k2;
        let mut pairs = vec![0u32; m.div_ceil(8) * 8 * k2];
        for (i, row) in pairs.chunks_mut(k2).take(m).enumerate() {
            let panel = &b.panels[(i / 16) * k2 * 16..];
            for (kk, v) in row.iter_mut().enumerate() {
                *v = panel[kk * 16 + i % 16];
            }
        }
        Rows { k2, pairs }
    }

    /// `B [n×k]` packed from its rows `src[j·ld..j·ld + k]` (as `K` in `Q·Kᵀ`). Needs
    /// [`available`].
    pub fn packed_rows(src: &[f32], n: usize, k: usize, ld: usize) -> Packed {
        let a = rows(src, n, k, ld);
        let k2 = a.k2;
        let np = n.div_ceil(32) * 2;
        let mut panels = vec![0u32; np * k2 * 16];
        for (j, row) in a.pairs.chunks(k2).take(n).enumerate() {
            let panel = &mut panels[(j / 16) * k2 * 16..];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * 16 + j % 16] = v;
            }
        }
        Packed { n, k2, panels }
    }

    /// `B [n×k]` packed from the columns of `src`'s rows: `B[c][j] = src[j·ld + c]`, `j < k`,
    /// `c < n` (as `Vᵀ` in `P·V`). Needs [`available`].
    pub fn packed_cols(src: &[f32], k: usize, n: usize, ld: usize) -> Packed {
        assert!(available(), "bf16 GEMM without AVX512-BF16");
        let k2 = k.div_ceil(2);
        let np = n.div_ceil(32) * 2;
        let mut panels = vec![0u32; np * k2 * 16];
        for (p, panel) in panels.chunks_mut(k2 * 16).enumerate() {
            let c0 = 16 * p;
            let width = 16.min(n.saturating_sub(c0));
            if width == 0 {
                break;
            }
            for kk in 0..k2 {
                let lo = &src[2 * kk * ld + c0..2 * kk * ld + c0 + width];
                let hi =
                    (2 * kk + 1 < k).then(|| &src[(2 * kk + 1) * ld + c0..(2 * kk + 1) * ld + c0 + width]);
                // SAFETY: available() was asserted above.
                unsafe { interleave(lo, hi, &mut panel[kk * 16..kk * 16 + width]) };
            }
        }
        Packed { n, k2, panels }
    }

    /// `out[m×n] += A · B[n×k]ᵀ`, `m` the rows of `out`.
    pub fn gemm(out: &mut [f32], a: &Rows, b: &Packed) {
        assert!(a.k2 == b.k2 && out.len() % b.n.max(1) == 0, "bf16 gemm shapes");
        assert!(a.pairs.len() >= (out.len() / b.n.max(1)).div_ceil(8) * 8 * a.k2, "bf16 gemm shapes");
        if b.n == 0 {
            return;
        }
        // SAFETY: available() was asserted when `a` was made; its rows are padded to 8.
        unsafe { block(out, &a.pairs, b) };
    }
}

/// `dst[i] = (bf16(lo[i]), bf16(hi[i]))` as one pair (`hi` absent: 0), nearest even.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn interleave(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    if lo.len() == 16 {
        let l: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr())));
        let mut v = _mm512_cvtepu16_epi32(l);
        if let Some(hi) = hi {
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr())));
            v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
        return;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = bf16_bits(lo[i]) | hi.map_or(0, |h| bf16_bits(h[i]) << 16);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn interleave(_lo: &[f32], _hi: Option<&[f32]>, _dst: &mut [u32]) {
    unreachable!("bf16 GEMM needs x86-64 AVX512-BF16")
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

    /// `n` values uniform in [-1, 1).
    fn rng(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
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
    fn small_products_read_strided_rows_and_columns() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // A [m×k] and B [n×k] as row blocks of wider matrices (leading dimension ld); Bᵀ read as
        // the columns of a [k×n] block: odd k, n off the 16-column panels and on them
        for (m, n, k) in [(1, 1, 1), (9, 17, 7), (13, 40, 32), (8, 16, 33)] {
            let ld = n.max(k) + 5;
            let (a, b) = (rng(m * ld, 11), rng(n * ld, 12));
            let bt = rng(k * ld, 13);
            let rows = small::rows(&a, m, k, ld);
            let mut got = vec![0.0f32; m * n];
            small::gemm(&mut got, &rows, &small::packed_rows(&b, n, k, ld));
            let mut got_t = vec![0.0f32; m * n];
            small::gemm(&mut got_t, &rows, &small::packed_cols(&bt, k, n, ld));
            // Aᵀ's rows from A's columns: (Aᵀ)ᵀ·B = A·B
            let at: Vec<f32> =
                (0..k * ld).map(|e| if e % ld < m { a[(e % ld) * ld + e / ld] } else { 0.0 }).collect();
            let mut got_c = vec![0.0f32; m * n];
            small::gemm(&mut got_c, &small::cols(&at, m, k, ld), &small::packed_rows(&b, n, k, ld));
            assert_eq!(got_c, got, "{m}x{n}x{k}: A from its transpose's columns");
            let r = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|c| r(a[i * ld + c]) * r(b[j * ld + c])).sum();
                    let want_t: f64 = (0..k).map(|c| r(a[i * ld + c]) * r(bt[c * ld + j])).sum();
                    assert!((got[i * n + j] as f64 - want).abs() < 1e-5, "{m}x{n}x{k} ({i}, {j})");
                    assert!((got_t[i * n + j] as f64 - want_t).abs() < 1e-5, "{m}x{n}x{k} ({i}, {j}) of Bᵀ");
                }
            }
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
