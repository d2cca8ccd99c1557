//! Add, gradient accumulation, row gather and scatter (kernels/elementwise.cu).

use anyhow::Result;

use super::elementwise;
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::cuda::tensor::DType;

/// `out = a + b` over `n` elements.
pub fn add(exec: &dyn Executor, out: &DevBuf, a: &DevBuf, b: &DevBuf, n: usize) -> Result<()> {
    // SAFETY: add_bf16(out, a, b, n).
    unsafe { Args::new().buf(out).buf(a).buf(b).u64(n as u64).launch(exec, "add_bf16", elementwise(n)) }
}

/// `out[i] = x[rows[i]]` for the `n` rows listed (checked by the caller).
pub fn gather_rows(
    exec: &dyn Executor,
    out: &DevBuf,
    x: &DevBuf,
    rows: &DevBuf,
    n: usize,
    cols: usize,
) -> Result<()> {
    // SAFETY: gather_rows_bf16(out, x, rows, cols).
    unsafe {
        Args::new().buf(out).buf(x).buf(rows).i32(cols as i32).launch(
            exec,
            "gather_rows_bf16",
            Launch::linear(n as u32, 128, 0),
        )
    }
}

/// `acc += x` over `n` elements of `dtype`.
pub fn add_assign(exec: &dyn Executor, acc: &DevBuf, x: &DevBuf, n: usize, dtype: DType) -> Result<()> {
    let kernel = if dtype == DType::F32 { "add_assign_f32" } else { "add_assign_bf16" };
    // SAFETY: add_assign_*(acc, x, n).
    unsafe { Args::new().buf(acc).buf(x).u64(n as u64).launch(exec, kernel, elementwise(n)) }
}

/// `out[rows[i]] = dy[i]` for the `n` rows listed (out zeroed by the caller).
pub fn scatter_rows(
    exec: &dyn Executor,
    out: &DevBuf,
    dy: &DevBuf,
    rows: &DevBuf,
    n: usize,
    cols: usize,
) -> Result<()> {
    // SAFETY: scatter_rows_bf16(out, dy, rows, cols).
    unsafe {
        Args::new().buf(out).buf(dy).buf(rows).i32(cols as i32).launch(
            exec,
            "scatter_rows_bf16",
            Launch::linear(n as u32, 128, 0),
        )
    }
}
