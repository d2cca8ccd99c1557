//! One function per kernel: its launch configuration (grid, block, shared memory) and argument
//! list, on caller-owned buffers. The op set (ops.rs) allocates outputs and calls these; the GPU
//! check times them on preallocated buffers. Written once for both executors.

use std::sync::Arc;

use anyhow::Result;

use super::executor::{Args, DevBuf, Executor, Launch};
use super::tensor::{DType, DevTensor};
use crate::backend::{Activation, DropKey, EmbeddingWeights, Norm, PgdStep};

/// `Activation` as the kernels' code (kernels/activation.cuh).
fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Identity => 0,
        Activation::Gelu => 1,
        Activation::Relu => 2,
        Activation::Tanh => 3,
        Activation::Silu => 4,
    }
}

/// The GEMM's block tile (kernels/gemm.cu: 64x64 per 128-thread block).
pub const GEMM_TILE: usize = 64;
/// 3 stages x 2 operand tiles x 2560 bf16 (a [64][40] or a transposed [32][72] tile).
pub const GEMM_SMEM: u32 = 3 * 2 * 2560 * 2;
/// Row kernels (LayerNorm, embedding) put one warp on a row, 4 rows per block.
const ROWS_PER_BLOCK: usize = 4;

fn elementwise(n: usize) -> Launch {
    Launch::linear(n.div_ceil(256).min(65_535) as u32, 256, 0)
}

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

/// One launch of a gemm.cu entry: C[m,n] = Σ_k A(m,k)·B(n,k) with leading dimensions (lda, ldb).
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
    // SAFETY: gemm.cu's entries take (out, a, b, bias, residual, M, N, K, lda, ldb, act); the
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

/// Embedding gather + LayerNorm of `rows` tokens (sequences of `seq`); ids must be in range;
/// `delta` (f32 `[rows, h]`) perturbs the word rows.
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
    eps: f32,
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
            .i32(h as i32)
            .f32(eps)
            .launch(exec, "embed_layernorm_bf16", dims)
    }
}

/// Shared memory of the attention kernel for head dimension `d`: Q, K (padded) and V tiles in f32.
pub fn attention_smem(d: usize) -> u32 {
    (4 * (16 * d + 32 * (d + 1) + 32 * d)) as u32
}

/// The dropout arguments of the attention kernels: (key, threshold = ceil(p·2³²), 1/(1−p)).
fn attention_dropout(drop: Option<DropKey>) -> (u64, u64, f32) {
    match drop {
        Some(k) => (k.key, (k.p as f64 * 4_294_967_296.0).ceil() as u64, k.scale()),
        None => (0, 0, 1.0),
    }
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
    let (key, threshold, dscale) = attention_dropout(drop);
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

/// `out = a + b` over `n` elements.
pub fn add(exec: &dyn Executor, out: &DevBuf, a: &DevBuf, b: &DevBuf, n: usize) -> Result<()> {
    // SAFETY: add_bf16(out, a, b, n).
    unsafe { Args::new().buf(out).buf(a).buf(b).u64(n as u64).launch(exec, "add_bf16", elementwise(n)) }
}

/// `out = act(x)` over `n` elements.
pub fn activation(exec: &dyn Executor, out: &DevBuf, x: &DevBuf, n: usize, act: Activation) -> Result<()> {
    // SAFETY: activation_bf16(out, x, n, act).
    unsafe {
        Args::new().buf(out).buf(x).u64(n as u64).i32(act_code(act)).launch(
            exec,
            "activation_bf16",
            elementwise(n),
        )
    }
}

/// AdpMixup's per-row blend of a stacked projection (kernels/mix.cu): `out[r, j] =
/// act(Σᵢ beta[r·m + i]·y[r, i·n + j]) + residual[r, j]` for `rows` rows (shapes checked by the
/// caller).
#[allow(clippy::too_many_arguments)]
pub fn adapter_mix(
    exec: &dyn Executor,
    out: &DevBuf,
    y: &DevBuf,
    beta: &DevBuf,
    residual: Option<&DevBuf>,
    (rows, n, m): (usize, usize, usize),
    act: Activation,
) -> Result<()> {
    let args = Args::new().buf(out).buf(y).buf(beta);
    let args = match residual {
        Some(r) => args.buf(r),
        None => args.ptr(0),
    };
    // SAFETY: adapter_mix_bf16(out, y, beta, residual or null, n, m, act); m floats of shared
    // memory.
    unsafe {
        args.i32(n as i32).i32(m as i32).i32(act_code(act)).launch(
            exec,
            "adapter_mix_bf16",
            Launch::linear(rows as u32, 128, (m * 4) as u32),
        )
    }
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

/// Mean over the valid rows of each of `batch` sequences, then L2 normalisation.
pub fn mean_pool_l2(
    exec: &dyn Executor,
    out: &DevBuf,
    x: &DevBuf,
    lens: &DevBuf,
    batch: usize,
    seq: usize,
    cols: usize,
) -> Result<()> {
    // SAFETY: mean_pool_l2_bf16(out, x, lens, seq, cols); 256 threads → 8 partial sums.
    unsafe {
        Args::new().buf(out).buf(x).buf(lens).i32(seq as i32).i32(cols as i32).launch(
            exec,
            "mean_pool_l2_bf16",
            Launch::linear(batch as u32, 256, (4 * cols + 32) as u32),
        )
    }
}

/// `acc += x` over `n` elements of `dtype`.
pub fn add_assign(exec: &dyn Executor, acc: &DevBuf, x: &DevBuf, n: usize, dtype: DType) -> Result<()> {
    let kernel = if dtype == DType::F32 { "add_assign_f32" } else { "add_assign_bf16" };
    // SAFETY: add_assign_*(acc, x, n).
    unsafe { Args::new().buf(acc).buf(x).u64(n as u64).launch(exec, kernel, elementwise(n)) }
}

/// `dy ← dy·act'(pre)` in place over `n` elements.
pub fn activation_backward(
    exec: &dyn Executor,
    dy: &DevBuf,
    pre: &DevBuf,
    n: usize,
    act: Activation,
) -> Result<()> {
    // SAFETY: activation_backward_bf16(dy, pre, n, act).
    unsafe {
        Args::new().buf(dy).buf(pre).u64(n as u64).i32(act_code(act)).launch(
            exec,
            "activation_backward_bf16",
            elementwise(n),
        )
    }
}

/// Dropout in place with the counter-based mask of `drop` (the CPU backend's mask).
pub fn dropout(exec: &dyn Executor, x: &DevBuf, n: usize, drop: DropKey) -> Result<()> {
    let (_, threshold, _) = attention_dropout(Some(drop));
    // SAFETY: dropout_bf16(x, n, key, threshold, scale).
    unsafe {
        Args::new().buf(x).u64(n as u64).u64(drop.key).u64(threshold).f32(drop.scale()).launch(
            exec,
            "dropout_bf16",
            elementwise(n),
        )
    }
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
    let (key, threshold, dscale) = attention_dropout(drop);
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
    eps: f32,
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
            .i32(h as i32)
            .f32(eps)
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
            .i32(h as i32)
            .launch(exec, "embed_param_grads_f32", Launch::linear(h.div_ceil(128) as u32, 128, 0))?;
    }
    // SAFETY: embed_table_grads_f32(dword, dposition, dtype, dsum, ids, type_ids, rows, seq, cols).
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
            .i32(h as i32)
            .launch(exec, "embed_table_grads_f32", elementwise(rows * h))
    }
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
