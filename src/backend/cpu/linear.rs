//! Linear layer with fused epilogue: `act(x·Wᵀ + b) + residual`.

use anyhow::{ensure, Result};
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::apply_activation;
use super::{Mat, ROW_CHUNK};
use crate::backend::Activation;
use crate::weights::Tensor;

/// `dst[m×n] = a[m×k] · b[k×n]`, or `dst += a·b` with `accumulate`, with explicit strides (row
/// stride, col stride; `dst` is contiguous within a row).
/// The GEMM is parallelised over the rayon pool unless the problem is tiny.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // bounds: the last element each operand touches must be inside its slice
    assert!((m - 1) * dst_rs + n <= dst.len(), "gemm dst out of bounds");
    if k > 0 {
        assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "gemm lhs out of bounds");
        assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "gemm rhs out of bounds");
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the bounds of every operand were checked above; dst does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `act(x·Wᵀ + b) [+ residual]`; with `bf16` the GEMM takes bf16 inputs ([`super::bf16`]).
pub fn linear(
    x: &Mat,
    w: &Tensor,
    b: &Tensor,
    act: Activation,
    residual: Option<&Mat>,
    bf16: bool,
) -> Result<Mat> {
    let (n, k) = crate::backend::shapes::linear(
        (x.rows, x.cols),
        w.shape(),
        b.data().len(),
        residual.map(|r| (r.rows, r.cols)),
    )?;
    let m = x.rows;
    let mut out = Mat::zeros(m, n);
    let bias = b.data();
    out.data.par_chunks_mut(n * ROW_CHUNK).for_each(|rows| {
        for row in rows.chunks_mut(n) {
            row.copy_from_slice(bias);
        }
    });
    if bf16 {
        super::bf16::gemm_acc(&mut out.data, &x.data, w, m, n, k);
    } else {
        // out += x · Wᵀ ; Wᵀ[kk][j] = W[j][kk] → row stride 1, column stride k
        gemm_strided(m, n, k, &mut out.data, n, true, &x.data, k, 1, w.data(), 1, k, true);
    }
    if act != Activation::Identity || residual.is_some() {
        out.data.par_chunks_mut(n * ROW_CHUNK).enumerate().for_each(|(c, rows)| {
            apply_activation(act, rows);
            if let Some(r) = residual {
                let start = c * n * ROW_CHUNK;
                let len = rows.len();
                for (o, r) in rows.iter_mut().zip(&r.data[start..start + len]) {
                    *o += r;
                }
            }
        });
    }
    Ok(out)
}

/// Backward of `x·Wᵀ + b`: `dW += dyᵀ·x`, `db += Σ_rows dy`, `dx = dy·W` (with `bf16`, `dx`'s GEMM
/// takes bf16 inputs, [`super::bf16`]).
pub fn linear_backward(
    dy: &Mat,
    x: &Mat,
    w: &Tensor,
    grads: Option<(&mut Mat, &mut Mat)>,
    need_dx: bool,
    bf16: bool,
) -> Result<Option<Mat>> {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let m = x.rows;
    ensure!(
        dy.rows == m && dy.cols == n && x.cols == k,
        "linear_backward: dy {}x{}, x {}x{}, weight {n}x{k}",
        dy.rows,
        dy.cols,
        x.rows,
        x.cols
    );
    if let Some((dw, db)) = grads {
        ensure!(dw.data.len() == n * k && db.data.len() == n, "linear_backward: gradient buffers");
        // dW[n×k] += dyᵀ[n×m] · x[m×k]   (dyᵀ[j][r] = dy[r][j]: row stride 1, column stride n)
        gemm_strided(n, k, m, &mut dw.data, k, true, &dy.data, 1, n, &x.data, k, 1, true);
        // per-chunk partial sums, added in a fixed order: the result does not depend on scheduling
        let partial: Vec<Vec<f32>> = dy
            .data
            .par_chunks(n * ROW_CHUNK * 8)
            .map(|rows| {
                let mut s = vec![0.0f32; n];
                for row in rows.chunks(n) {
                    s.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
                s
            })
            .collect();
        let mut sums = vec![0.0f32; n];
        for p in &partial {
            sums.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        db.data.iter_mut().zip(&sums).for_each(|(d, s)| *d += s);
    }
    if !need_dx {
        return Ok(None);
    }
    // dx[m×k] = dy[m×n] · W[n×k]
    let mut dx = Mat::zeros(m, k);
    if bf16 {
        super::bf16::gemm_acc_t(&mut dx.data, &dy.data, w, m, n, k);
    } else {
        gemm_strided(m, k, n, &mut dx.data, k, false, &dy.data, n, 1, w.data(), k, 1, true);
    }
    Ok(Some(dx))
}
