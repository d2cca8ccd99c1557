//! The PGD step and HotFlip's top-k (kernels/attack.cu).

use anyhow::Result;

use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::{Norm, PgdStep};

/// One PGD step on `delta` (f32 `[batch·seq, cols]`) from `grad` (bf16), one block per sequence.
pub fn pgd_step(
    exec: &dyn Executor,
    delta: &DevBuf,
    grad: &DevBuf,
    lens: &DevBuf,
    (batch, seq, cols): (usize, usize, usize),
    step: &PgdStep,
) -> Result<()> {
    let norm = match step.norm {
        Norm::Linf => 0,
        Norm::L2 => 1,
    };
    // SAFETY: pgd_step_f32(delta, grad, lens, seq, cols, norm, alpha, eps).
    unsafe {
        Args::new()
            .buf(delta)
            .buf(grad)
            .buf(lens)
            .i32(seq as i32)
            .i32(cols as i32)
            .i32(norm)
            .f32(step.alpha)
            .f32(step.eps)
            .launch(exec, "pgd_step_f32", Launch::linear(batch as u32, 256, 0))
    }
}

/// HotFlip's masked top-k, one block per site: `out_gain`/`out_id` `[sites, k]`.
#[allow(clippy::too_many_arguments)]
pub fn hotflip_topk(
    exec: &dyn Executor,
    out_gain: &DevBuf,
    out_id: &DevBuf,
    prod: &DevBuf,
    (base, old, old_norm): (&DevBuf, &DevBuf, &DevBuf),
    (norm, allowed): (&DevBuf, &DevBuf),
    (sites, vocab, k): (usize, usize, usize),
    min_cos: f32,
) -> Result<()> {
    // SAFETY: hotflip_topk_bf16(out_gain, out_id, prod, base, old, old_norm, norm, allowed, sites,
    // vocab, min_cos, k).
    unsafe {
        Args::new()
            .buf(out_gain)
            .buf(out_id)
            .buf(prod)
            .buf(base)
            .buf(old)
            .buf(old_norm)
            .buf(norm)
            .buf(allowed)
            .i32(sites as i32)
            .i32(vocab as i32)
            .f32(min_cos)
            .i32(k as i32)
            .launch(exec, "hotflip_topk_bf16", Launch::linear(sites as u32, 256, 0))
    }
}
