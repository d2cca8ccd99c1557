//! The gradient norm and AdamW (kernels/optim.cu).

use std::sync::Arc;

use anyhow::Result;

use super::elementwise;
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::cuda::tensor::DType;

/// Σ x² over `n` elements of `dtype`, in f64 (per-block partial sums added on the host).
pub fn sum_squares(exec: &Arc<dyn Executor>, x: &DevBuf, n: usize, dtype: DType) -> Result<f64> {
    let blocks = n.div_ceil(256).clamp(1, 1024);
    let partial = DevBuf::new(exec, blocks * 8)?;
    // SAFETY: sum_squares_partial(partial, x, n, is_f32); `blocks` partials.
    unsafe {
        Args::new().buf(&partial).buf(x).u64(n as u64).i32((dtype == DType::F32) as i32).launch(
            &**exec,
            "sum_squares_partial",
            Launch::linear(blocks as u32, 256, 0),
        )?
    };
    Ok(partial.to_vec::<f64>()?.iter().sum())
}

/// One AdamW update of `n` parameters (f32 master, its bf16 copy, f32 gradient and moments).
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    exec: &dyn Executor,
    master: &DevBuf,
    param: &DevBuf,
    grad: &DevBuf,
    m: &DevBuf,
    v: &DevBuf,
    n: usize,
    h: &crate::backend::AdamWStep,
) -> Result<()> {
    // the scalar factors exactly as the CPU backend forms them
    let crate::backend::AdamWFactors { step_size, bc2_sqrt, decay } = h.factors();
    // SAFETY: adamw_f32(master, param, grad, m, v, n, grad_scale, decay, beta1, beta2, step_size, bc2_sqrt, eps).
    unsafe {
        Args::new()
            .buf(master)
            .buf(param)
            .buf(grad)
            .buf(m)
            .buf(v)
            .u64(n as u64)
            .f32(h.grad_scale)
            .f32(decay)
            .f32(h.beta1)
            .f32(h.beta2)
            .f32(step_size)
            .f32(bc2_sqrt)
            .f32(h.eps)
            .launch(exec, "adamw_f32", elementwise(n))
    }
}
