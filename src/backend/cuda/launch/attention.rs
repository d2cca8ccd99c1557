//! Fused self-attention and its backward (kernels/attention.cu).

use anyhow::Result;

use super::dropout_args;
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::DropKey;

/// Shared memory of the attention kernel for head dimension `d`: Q, K (padded) and V tiles in f32.
pub fn attention_smem(d: usize) -> u32 {
    (4 * (16 * d + 32 * (d + 1) + 32 * d)) as u32
}

/// Fused attention of `batch` sequences of `seq` on `qkv [batch·seq, 3·heads·d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    exec: &dyn Executor,
    ctx: &DevBuf,
    qkv: &DevBuf,
    lens: &DevBuf,
    batch: usize,
    seq: usize,
    heads: usize,
    d: usize,
    drop: Option<DropKey>,
) -> Result<()> {
    let (key, threshold, dscale) = dropout_args(drop);
    let dims = Launch {
        grid: [seq.div_ceil(16) as u32, heads as u32, batch as u32],
        block: [128, 1, 1],
        smem: attention_smem(d),
    };
    let kernel = format!("attention_bf16_dpl{}", d.div_ceil(32));
    // SAFETY: attention_bf16_dplN(ctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale).
    unsafe {
        Args::new()
            .buf(ctx)
            .buf(qkv)
            .buf(lens)
            .i32(seq as i32)
            .i32(heads as i32)
            .i32(d as i32)
            .f32(1.0 / (d as f32).sqrt())
            .u64(key)
            .u64(threshold)
            .f32(dscale)
            .launch(exec, &kernel, dims)
    }
}

/// Shared memory of the attention backward kernels for head dimension `d`.
pub fn attention_backward_smem(d: usize) -> u32 {
    (4 * (32 * d + 64 * (d + 1) + 96)) as u32
}

/// Backward of [`attention`]: `dqkv [batch·seq, 3·heads·d]` from `dctx`, recomputing the
/// probabilities; `stats` is f32 scratch of `batch·heads·seq·3`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    exec: &dyn Executor,
    dqkv: &DevBuf,
    stats: &DevBuf,
    dctx: &DevBuf,
    qkv: &DevBuf,
    lens: &DevBuf,
    (batch, seq, heads, d): (usize, usize, usize, usize),
    drop: Option<DropKey>,
) -> Result<()> {
    let dims = Launch {
        grid: [seq.div_ceil(16) as u32, heads as u32, batch as u32],
        block: [128, 1, 1],
        smem: attention_backward_smem(d),
    };
    let (key, threshold, dscale) = dropout_args(drop);
    let dpl = d.div_ceil(32);
    for kernel in [format!("attention_backward_dq_dpl{dpl}"), format!("attention_backward_dkv_dpl{dpl}")] {
        // SAFETY: attention_backward_*(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key,
        // threshold, dscale); the caller sizes the buffers.
        unsafe {
            Args::new()
                .buf(dqkv)
                .buf(stats)
                .buf(dctx)
                .buf(qkv)
                .buf(lens)
                .i32(seq as i32)
                .i32(heads as i32)
                .i32(d as i32)
                .f32(1.0 / (d as f32).sqrt())
                .u64(key)
                .u64(threshold)
                .f32(dscale)
                .launch(exec, &kernel, dims)?;
        }
    }
    Ok(())
}
