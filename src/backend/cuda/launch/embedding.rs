//! The embedding gather fused with its LayerNorm, and its backward (kernels/embedding.cu).

use anyhow::Result;

use super::{elementwise, ROWS_PER_BLOCK};
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::cuda::tensor::DevTensor;
use crate::backend::{EmbedSpec, EmbeddingWeights};

/// Embedding gather + LayerNorm of `rows` tokens (sequences of `seq`), positions numbered as `spec`
/// says; ids must be in range; `delta` (f32 `[rows, h]`) perturbs the word rows.
#[allow(clippy::too_many_arguments)]
pub fn embed(
    exec: &dyn Executor,
    out: &DevBuf,
    ids: &DevBuf,
    type_ids: &DevBuf,
    w: &EmbeddingWeights<DevTensor>,
    delta: Option<&DevBuf>,
    rows: usize,
    seq: usize,
    spec: EmbedSpec,
) -> Result<()> {
    let h = w.word.shape[1];
    let dims = Launch::linear(rows.div_ceil(ROWS_PER_BLOCK) as u32, 128, (ROWS_PER_BLOCK * h * 4) as u32);
    // SAFETY: embed_layernorm_bf16's parameters.
    unsafe {
        Args::new()
            .buf(out)
            .buf(ids)
            .buf(type_ids)
            .buf(w.word.buf())
            .ptr(delta.map_or(0, |d| d.ptr()))
            .buf(w.position.buf())
            .buf(w.token_type.buf())
            .buf(w.ln_gamma.buf())
            .buf(w.ln_beta.buf())
            .i32(rows as i32)
            .i32(seq as i32)
            .i32(spec.positions.kernel_arg())
            .i32(h as i32)
            .f32(spec.eps)
            .launch(exec, "embed_layernorm_bf16", dims)
    }
}

/// Backward of [`embed`] to the pre-LayerNorm sum (`dsum`, bf16); with `grads` (f32 tables and
/// LayerNorm parameters), accumulates into them.
#[allow(clippy::too_many_arguments)]
pub fn embed_backward(
    exec: &dyn Executor,
    dsum: &DevBuf,
    stats: &DevBuf,
    dy: &DevBuf,
    ids: &DevBuf,
    type_ids: &DevBuf,
    w: &EmbeddingWeights<DevTensor>,
    delta: Option<&DevBuf>,
    (rows, seq): (usize, usize),
    spec: EmbedSpec,
    grads: Option<&EmbeddingWeights<&DevBuf>>,
) -> Result<()> {
    let h = w.word.shape[1];
    let dims = Launch::linear(rows.div_ceil(ROWS_PER_BLOCK) as u32, 128, (ROWS_PER_BLOCK * 2 * h * 4) as u32);
    // SAFETY: embed_backward_bf16's parameters.
    unsafe {
        Args::new()
            .buf(dsum)
            .buf(stats)
            .buf(dy)
            .buf(ids)
            .buf(type_ids)
            .buf(w.word.buf())
            .ptr(delta.map_or(0, |d| d.ptr()))
            .buf(w.position.buf())
            .buf(w.token_type.buf())
            .buf(w.ln_gamma.buf())
            .i32(rows as i32)
            .i32(seq as i32)
            .i32(spec.positions.kernel_arg())
            .i32(h as i32)
            .f32(spec.eps)
            .launch(exec, "embed_backward_bf16", dims)?;
    }
    let Some(g) = grads else { return Ok(()) };
    // SAFETY: embed_param_grads_f32's parameters.
    unsafe {
        Args::new()
            .buf(g.ln_gamma)
            .buf(g.ln_beta)
            .buf(stats)
            .buf(dy)
            .buf(ids)
            .buf(type_ids)
            .buf(w.word.buf())
            .ptr(delta.map_or(0, |d| d.ptr()))
            .buf(w.position.buf())
            .buf(w.token_type.buf())
            .i32(rows as i32)
            .i32(seq as i32)
            .i32(spec.positions.kernel_arg())
            .i32(h as i32)
            .launch(exec, "embed_param_grads_f32", Launch::linear(h.div_ceil(128) as u32, 128, 0))?;
    }
    // SAFETY: embed_table_grads_f32(dword, dposition, dtype, dsum, ids, type_ids, rows, seq, padding_idx, cols).
    unsafe {
        Args::new()
            .buf(g.word)
            .buf(g.position)
            .buf(g.token_type)
            .buf(dsum)
            .buf(ids)
            .buf(type_ids)
            .i32(rows as i32)
            .i32(seq as i32)
            .i32(spec.positions.kernel_arg())
            .i32(h as i32)
            .launch(exec, "embed_table_grads_f32", elementwise(rows * h))
    }
}
