//! LayerNorm and its backward (kernels/layernorm.cu).

use anyhow::Result;

use super::ROWS_PER_BLOCK;
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};

/// Row-wise LayerNorm of `x [rows, cols]`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm(
    exec: &dyn Executor,
    out: &DevBuf,
    x: &DevBuf,
    gamma: &DevBuf,
    beta: &DevBuf,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    let dims = Launch::linear(rows.div_ceil(ROWS_PER_BLOCK) as u32, 128, (ROWS_PER_BLOCK * cols * 4) as u32);
    // SAFETY: layernorm_bf16(out, x, gamma, beta, rows, cols, eps).
    unsafe {
        Args::new().buf(out).buf(x).buf(gamma).buf(beta).i32(rows as i32).i32(cols as i32).f32(eps).launch(
            exec,
            "layernorm_bf16",
            dims,
        )
    }
}

/// Backward of [`layernorm`]: `dx` (bf16) and per-row `(mean, rstd)` in `stats` (f32 `[rows][2]`);
/// with `param_grads` (f32 dγ, dβ), accumulates into them.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    exec: &dyn Executor,
    dx: &DevBuf,
    stats: &DevBuf,
    dy: &DevBuf,
    x: &DevBuf,
    gamma: &DevBuf,
    (rows, cols): (usize, usize),
    eps: f32,
    param_grads: Option<(&DevBuf, &DevBuf)>,
) -> Result<()> {
    let dims =
        Launch::linear(rows.div_ceil(ROWS_PER_BLOCK) as u32, 128, (ROWS_PER_BLOCK * 2 * cols * 4) as u32);
    // SAFETY: layernorm_backward_bf16(dx, stats, dy, x, gamma, rows, cols, eps).
    unsafe {
        Args::new()
            .buf(dx)
            .buf(stats)
            .buf(dy)
            .buf(x)
            .buf(gamma)
            .i32(rows as i32)
            .i32(cols as i32)
            .f32(eps)
            .launch(exec, "layernorm_backward_bf16", dims)?;
    }
    if let Some((dg, db)) = param_grads {
        // SAFETY: layernorm_param_grads_f32(dgamma, dbeta, stats, dy, x, rows, cols).
        unsafe {
            Args::new().buf(dg).buf(db).buf(stats).buf(dy).buf(x).i32(rows as i32).i32(cols as i32).launch(
                exec,
                "layernorm_param_grads_f32",
                Launch::linear(cols.div_ceil(128) as u32, 128, 0),
            )?;
        }
    }
    Ok(())
}
