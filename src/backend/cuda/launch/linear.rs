//! The linear layer (kernels/linear.cu): the GEMM in its forward, dX and dW forms, and the bias gradient.

use anyhow::Result;

use super::act_code;
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::Activation;

/// The GEMM's block tile (kernels/linear.cu: 64x64 per 128-thread block).
pub const GEMM_TILE: usize = 64;
/// 3 stages x 2 operand tiles x 2560 bf16 (a [64][40] or a transposed [32][72] tile).
pub const GEMM_SMEM: u32 = 3 * 2 * 2560 * 2;

/// `out[m,n] = act(x[m,k]·w[n,k]ᵀ + b) + residual`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    exec: &dyn Executor,
    out: &DevBuf,
    x: &DevBuf,
    w: &DevBuf,
    b: Option<&DevBuf>,
    residual: Option<&DevBuf>,
    (m, n, k): (usize, usize, usize),
    act: Activation,
) -> Result<()> {
    let kernel = if k % 8 == 0 { "gemm_bf16" } else { "gemm_bf16_rowwise" };
    gemm(exec, kernel, out, x, w, b, residual, (m, n, k), (k, k), act)
}

/// `dx[m,k] = dy[m,n]·w[n,k]` (the input gradient of a linear layer), bf16.
pub fn linear_dx(
    exec: &dyn Executor,
    dx: &DevBuf,
    dy: &DevBuf,
    w: &DevBuf,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let kernel = if n % 8 == 0 && k % 8 == 0 { "gemm_bf16_tb" } else { "gemm_bf16_tb_rowwise" };
    // C[m, k_out] = Σ_red dy[m, red]·w[red, k_out]: A = dy (lda n), B(k_out, red) = w[red·k + k_out]
    gemm(exec, kernel, dx, dy, w, None, None, (m, k, n), (n, k), Activation::Identity)
}

/// `dw[n,k] += dy[m,n]ᵀ·x[m,k]` (the weight gradient of a linear layer), f32 accumulation.
pub fn linear_dw(
    exec: &dyn Executor,
    dw: &DevBuf,
    dy: &DevBuf,
    x: &DevBuf,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let kernel = if n % 8 == 0 && k % 8 == 0 { "gemm_f32acc_tab" } else { "gemm_f32acc_tab_rowwise" };
    // C[n, k] = Σ_m dy[m, n]·x[m, k]: A(n, m) = dy[m·n_ + n], B(k, m) = x[m·k_ + k]
    gemm(exec, kernel, dw, dy, x, None, None, (n, k, m), (n, k), Activation::Identity)
}

/// `db[n] += Σ_m dy[m, n]`, f32.
pub fn col_sum_acc(exec: &dyn Executor, db: &DevBuf, dy: &DevBuf, m: usize, n: usize) -> Result<()> {
    // SAFETY: col_sum_acc_f32(db, dy, M, N).
    unsafe {
        Args::new().buf(db).buf(dy).i32(m as i32).i32(n as i32).launch(
            exec,
            "col_sum_acc_f32",
            Launch::linear(n.div_ceil(256) as u32, 256, 0),
        )
    }
}

/// One launch of a GEMM entry of linear.cu: C[m,n] = Σ_k A(m,k)·B(n,k) with leading dimensions (lda, ldb).
#[allow(clippy::too_many_arguments)]
fn gemm(
    exec: &dyn Executor,
    kernel: &str,
    out: &DevBuf,
    a: &DevBuf,
    b: &DevBuf,
    bias: Option<&DevBuf>,
    residual: Option<&DevBuf>,
    (m, n, k): (usize, usize, usize),
    (lda, ldb): (usize, usize),
    act: Activation,
) -> Result<()> {
    let dims = Launch {
        grid: [n.div_ceil(GEMM_TILE) as u32, m.div_ceil(GEMM_TILE) as u32, 1],
        block: [128, 1, 1],
        smem: GEMM_SMEM,
    };
    // SAFETY: linear.cu's GEMM entries take (out, a, b, bias, residual, M, N, K, lda, ldb, act); the
    // callers size the buffers for these shapes.
    unsafe {
        Args::new()
            .buf(out)
            .buf(a)
            .buf(b)
            .ptr(bias.map_or(0, |b| b.ptr()))
            .ptr(residual.map_or(0, |r| r.ptr()))
            .i32(m as i32)
            .i32(n as i32)
            .i32(k as i32)
            .i32(lda as i32)
            .i32(ldb as i32)
            .i32(act_code(act))
            .launch(exec, kernel, dims)
    }
}
