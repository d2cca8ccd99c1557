//! Every kernel, forward and backward, against the CPU reference (llm.c's dev/cuda ladder, made automatic):
//! fresh random inputs per run, outputs poisoned before the launch (the emulator poisons every
//! allocation; [`Cuda::poisoned`] does it on a GPU), shapes that are not multiples of the tiles,
//! and ‖out − ref‖/‖ref‖ ≤ 1e-2 (bf16 storage). The CPU reference gets the same bf16-rounded
//! inputs. `cargo test` runs these on the emulator under both schedules; the GPU check runs them
//! on the device.

use anyhow::{ensure, Result};

use super::Cuda;
use crate::backend::bf16;
use crate::backend::cpu::{Cpu, Mat};
use crate::backend::TokenBatch;
use crate::backend::{Activation, Backend, EmbedSpec, EmbeddingWeights, Norm, PgdStep, Positions, TopkFlips};
use crate::weights::Tensor;

/// Relative error bound of bf16 paths.
pub const BF16_TOL: f64 = 1e-2;

/// A kernel check: runs on a backend with a seed, returns the worst relative error.
pub type KernelCheck = fn(&Cuda, u64) -> Result<f64>;

/// Every check: (name, run).
pub const CHECKS: &[(&str, KernelCheck)] = &[
    ("linear: forward (GEMM + bias/activation/residual epilogues)", check_linear),
    ("linear: backward (dX, dW, db)", check_linear_backward),
    ("layernorm: forward", check_layernorm),
    ("layernorm: backward (dx, dγ, dβ)", check_layernorm_backward),
    ("embedding: gather + layernorm", check_embed),
    ("embedding: backward (with LayerNorm and table gradients)", check_embedding_backward),
    ("attention: forward (online softmax, key mask)", check_attention),
    ("attention: with dropout, and its backward", check_attention_backward),
    ("elementwise: add, add_assign, gather and scatter rows", check_elementwise),
    ("activation: forward and backward", check_activation),
    ("dropout: the CPU's mask", check_dropout),
    ("pooling: mean + l2", check_mean_pool),
    ("loss: cross-entropy", check_loss),
    ("optim: sum of squares, AdamW (f32 master weights, moments, the bf16 copy)", check_optim),
    ("attack: PGD step and projection (L2, L∞)", check_pgd_step),
    ("attack: HotFlip masked top-k", check_topk_flips),
    ("mix: per-row blend of stacked projections", check_adapter_mix),
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    /// bf16-representable values in [-scale, scale)
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| bf16::to_f32(bf16::from_f32(((self.next() % 2_000_001) as f32 / 1e6 - 1.0) * scale)))
            .collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// ‖a − b‖/‖b‖, with any NaN (an unwritten or poisoned output) an error.
pub fn rel_err(got: &[f32], want: &[f32]) -> Result<f64> {
    ensure!(got.len() == want.len(), "length {} vs {}", got.len(), want.len());
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        anyhow::bail!("element {i} is {} (unwritten or poisoned output)", got[i]);
    }
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    Ok((num / den.max(1e-30)).sqrt())
}

fn compare(name: &str, cuda: &Cuda, got: &<Cuda as Backend>::Act, want: &Mat) -> Result<f64> {
    let (rows, cols, data) = cuda.download(got)?;
    ensure!(
        rows == want.rows && cols == want.cols,
        "{name}: shape {rows}x{cols}, expected {}x{}",
        want.rows,
        want.cols
    );
    let e = rel_err(&data, &want.data).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    ensure!(e <= BF16_TOL, "{name}: relative error {e:.2e} > {BF16_TOL:.0e}");
    Ok(e)
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), data)
}

/// Random embedding tables (two token types) and LayerNorm parameters.
fn random_embeddings(r: &mut Rng, vocab: usize, positions: usize, h: usize) -> EmbeddingWeights<Tensor> {
    EmbeddingWeights {
        word: tensor(&[vocab, h], r.vec(vocab * h, 1.0)),
        position: tensor(&[positions, h], r.vec(positions * h, 0.5)),
        token_type: tensor(&[2, h], r.vec(2 * h, 0.5)),
        ln_gamma: tensor(&[h], r.vec(h, 1.0)),
        ln_beta: tensor(&[h], r.vec(h, 0.2)),
    }
}

fn on_device(
    cuda: &Cuda,
    w: &EmbeddingWeights<Tensor>,
) -> Result<EmbeddingWeights<<Cuda as Backend>::Weight>> {
    Ok(EmbeddingWeights {
        word: cuda.weight(&w.word)?,
        position: cuda.weight(&w.position)?,
        token_type: cuda.weight(&w.token_type)?,
        ln_gamma: cuda.weight(&w.ln_gamma)?,
        ln_beta: cuda.weight(&w.ln_beta)?,
    })
}

pub fn check_linear(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    let shapes = [
        (1, 8, 8, Activation::Identity, false),
        (37, 70, 40, Activation::Gelu, true),
        (130, 96, 64, Activation::Relu, false),
        (64, 64, 32, Activation::Tanh, true),
        (33, 24, 4, Activation::Silu, true),
        (5, 2, 384, Activation::Identity, false),
        (100, 72, 36, Activation::Gelu, false),
    ];
    for (m, n, k, act, res) in shapes {
        let x = r.vec(m * k, 1.0);
        let w = tensor(&[n, k], r.vec(n * k, 0.5));
        let b = tensor(&[n], r.vec(n, 0.5));
        let resid = r.vec(m * n, 1.0);
        let want = Cpu.linear(
            &Cpu.upload(m, k, &x)?,
            &w,
            &b,
            act,
            res.then(|| Cpu.upload(m, n, &resid)).transpose()?.as_ref(),
        )?;
        let dres = res.then(|| cuda.upload(m, n, &resid)).transpose()?;
        let got =
            cuda.linear(&cuda.upload(m, k, &x)?, &cuda.weight(&w)?, &cuda.weight(&b)?, act, dres.as_ref())?;
        worst = worst.max(compare(&format!("linear {m}x{n}x{k} {act:?}"), cuda, &got, &want)?);
    }
    Ok(worst)
}

pub fn check_layernorm(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    for (rows, cols) in [(1, 32), (7, 384), (13, 100)] {
        let x: Vec<f32> = r.vec(rows * cols, 2.0).into_iter().map(|v| v + 0.5).collect();
        let g = tensor(&[cols], r.vec(cols, 1.0));
        let b = tensor(&[cols], r.vec(cols, 0.3));
        let want = Cpu.layernorm(&Cpu.upload(rows, cols, &x)?, &g, &b, 1e-12)?;
        let got =
            cuda.layernorm(&cuda.upload(rows, cols, &x)?, &cuda.weight(&g)?, &cuda.weight(&b)?, 1e-12)?;
        worst = worst.max(compare(&format!("layernorm {rows}x{cols}"), cuda, &got, &want)?);
    }
    Ok(worst)
}

pub fn check_embed(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let (vocab, positions, h) = (50, 20, 48);
    let w = random_embeddings(&mut r, vocab, positions, h);
    let (batch, seq) = (3, 7);
    let lens = vec![7, 3, 5];
    let ids = (0..batch * seq).map(|_| r.below(vocab) as u32).collect();
    let type_ids = (0..batch * seq).map(|i| (i % seq > 3) as u32).collect();
    let tb = TokenBatch { batch, seq, ids, type_ids, lens, truncated: vec![false; batch] };
    let dw = on_device(cuda, &w)?;
    let mut worst: f64 = 0.0;
    // BERT's positions, and RoBERTa's (counted from padding_idx + 1, pads at padding_idx)
    let roberta = EmbedSpec { positions: Positions::AfterPadding { padding_idx: 1 }, eps: 1e-5 };
    let padded = with_pads(&tb, 1);
    for (name, spec, tb) in [("", EmbedSpec::absolute(1e-12), &tb), (", RoBERTa positions", roberta, &padded)]
    {
        let want = Cpu.embed(tb, &w, spec, None)?;
        let got = cuda.embed(tb, &dw, spec, None)?;
        worst = worst.max(compare(&format!("embed 3x7x48{name}"), cuda, &got, &want)?);
        // with an attack's perturbation of the word rows (f32 on the device)
        let delta = r.vec(batch * seq * h, 0.05);
        let want = Cpu.embed(tb, &w, spec, Some(&Cpu.upload(batch * seq, h, &delta)?))?;
        let got = cuda.embed(tb, &dw, spec, Some(&cuda.upload_state(batch * seq, h, &delta)?))?;
        worst = worst.max(compare(&format!("embed 3x7x48 + δ{name}"), cuda, &got, &want)?);
    }
    Ok(worst)
}

/// `tb` with the ids past each row's length set to `pad` (RoBERTa tells pads by their id).
fn with_pads(tb: &TokenBatch, pad: u32) -> TokenBatch {
    let mut out = tb.clone();
    for (b, &len) in tb.lens.iter().enumerate() {
        out.ids[b * tb.seq + len..(b + 1) * tb.seq].fill(pad);
    }
    out
}

pub fn check_attention(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    // (batch, seq, heads, head dim): dims 8/32/40/64/128, sequences across several key tiles, up to 512
    for (batch, seq, heads, d) in
        [(2, 5, 4, 8), (2, 37, 2, 32), (1, 20, 2, 64), (1, 17, 1, 128), (2, 70, 3, 40)]
    {
        let lens: Vec<usize> = (0..batch).map(|b| if b == 0 { seq } else { 1 + r.below(seq) }).collect();
        let qkv = r.vec(batch * seq * 3 * heads * d, 1.5);
        let rows = batch * seq;
        let want = Cpu.attention(&Cpu.upload(rows, 3 * heads * d, &qkv)?, &lens, seq, heads, None)?;
        let got = cuda.attention(&cuda.upload(rows, 3 * heads * d, &qkv)?, &lens, seq, heads, None)?;
        worst = worst.max(compare(&format!("attention b{batch} s{seq} h{heads} d{d}"), cuda, &got, &want)?);
    }
    Ok(worst)
}

pub fn check_mean_pool(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let (batch, seq, cols) = (3, 9, 300);
    let x = r.vec(batch * seq * cols, 1.0);
    let lens = vec![9, 1, 4];
    let want = Cpu.mean_pool_l2(&Cpu.upload(batch * seq, cols, &x)?, &lens, seq)?;
    let got = cuda.mean_pool_l2(&cuda.upload(batch * seq, cols, &x)?, &lens, seq)?;
    compare("mean_pool_l2", cuda, &got, &want)
}

pub fn check_linear_backward(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    // (m, n, k): aligned, ragged, and a bottleneck of 4 (the rowwise forms)
    for (m, n, k) in [(64, 64, 64), (37, 70, 40), (130, 24, 96), (33, 4, 32), (50, 32, 4), (9, 2, 384)] {
        let x = r.vec(m * k, 1.0);
        let dy = r.vec(m * n, 1.0);
        let w = tensor(&[n, k], r.vec(n * k, 0.5));
        let dw0 = r.vec(n * k, 0.1);
        let db0 = r.vec(n, 0.1);
        let (cx, cdy) = (Cpu.upload(m, k, &x)?, Cpu.upload(m, n, &dy)?);
        let (mut cdw, mut cdb) = (Cpu.upload(n, k, &dw0)?, Cpu.upload(1, n, &db0)?);
        let cdx = Cpu.linear_backward(&cdy, &cx, &w, Some((&mut cdw, &mut cdb)), true)?.unwrap();
        let (gx, gdy) = (cuda.upload(m, k, &x)?, cuda.upload(m, n, &dy)?);
        let (mut gdw, mut gdb) = (cuda.zeros(n, k)?, cuda.zeros(1, n)?);
        // accumulate onto non-zero buffers, as training does across micro-steps
        cuda.add_assign(&mut gdw, &f32_mat(cuda, n, k, &dw0)?)?;
        cuda.add_assign(&mut gdb, &f32_mat(cuda, 1, n, &db0)?)?;
        let gdx =
            cuda.linear_backward(&gdy, &gx, &cuda.weight(&w)?, Some((&mut gdw, &mut gdb)), true)?.unwrap();
        let shape = format!("{m}x{n}x{k}");
        worst = worst.max(compare(&format!("linear dX {shape}"), cuda, &gdx, &cdx)?);
        worst = worst.max(compare(&format!("linear dW {shape}"), cuda, &gdw, &cdw)?);
        worst = worst.max(compare(&format!("linear db {shape}"), cuda, &gdb, &cdb)?);
    }
    Ok(worst)
}

/// An f32 device matrix holding `data` (a zero matrix plus `data`, through the op set).
fn f32_mat(cuda: &Cuda, rows: usize, cols: usize, data: &[f32]) -> Result<<Cuda as Backend>::Act> {
    let m = cuda.zeros(rows, cols)?;
    cuda.executor().htod(m.buf().ptr(), bytemuck::cast_slice(data))?;
    Ok(m)
}

pub fn check_attention_backward(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    for (batch, seq, heads, d, p) in
        [(2, 5, 4, 8, 0.0), (2, 37, 2, 32, 0.2), (1, 20, 2, 64, 0.0), (2, 45, 1, 40, 0.1)]
    {
        let lens: Vec<usize> = (0..batch).map(|b| if b == 0 { seq } else { 1 + r.below(seq) }).collect();
        let rows = batch * seq;
        let h = heads * d;
        let qkv = r.vec(rows * 3 * h, 1.5);
        let dctx = r.vec(rows * h, 1.0);
        let drop = (p > 0.0).then(|| crate::backend::DropKey::new(p, seed, 3, 11));
        let cq = Cpu.upload(rows, 3 * h, &qkv)?;
        let gq = cuda.upload(rows, 3 * h, &qkv)?;
        let name = format!("b{batch} s{seq} h{heads} d{d} p{p}");
        let want = Cpu.attention(&cq, &lens, seq, heads, drop)?;
        let got = cuda.attention(&gq, &lens, seq, heads, drop)?;
        worst = worst.max(compare(&format!("attention {name}"), cuda, &got, &want)?);
        let want = Cpu.attention_backward(&Cpu.upload(rows, h, &dctx)?, &cq, &lens, seq, heads, drop)?;
        let got = cuda.attention_backward(&cuda.upload(rows, h, &dctx)?, &gq, &lens, seq, heads, drop)?;
        worst = worst.max(compare(&format!("attention backward {name}"), cuda, &got, &want)?);
    }
    Ok(worst)
}

/// f32 state paths (the PGD step keeps δ in f32 on both sides) are held to 1e-5.
const F32_TOL: f64 = 1e-5;

pub fn check_pgd_step(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let (seq, h) = (9, 40);
    // a full row, a short one, one with a zero gradient (no step), one of length 1
    let lens = [9usize, 4, 6, 1];
    let rows = lens.len() * seq;
    let mut grad = r.vec(rows * h, 1.0);
    grad[2 * seq * h..3 * seq * h].fill(0.0);
    let mut worst: f64 = 0.0;
    for (norm, alpha, eps) in [(Norm::Linf, 0.01, 0.03), (Norm::L2, 0.5, 0.8), (Norm::L2, 0.05, 10.0)] {
        // a start inside, on and outside the ball, pads not zero: every branch of the projection
        let delta = r.vec(rows * h, 0.02);
        let step = PgdStep { norm, alpha, eps };
        let mut want = Cpu.upload(rows, h, &delta)?;
        Cpu.pgd_step(&mut want, &Cpu.upload(rows, h, &grad)?, &lens, seq, &step)?;
        let mut got = cuda.upload_state(rows, h, &delta)?;
        cuda.pgd_step(&mut got, &cuda.upload(rows, h, &grad)?, &lens, seq, &step)?;
        let (_, _, data) = cuda.download(&got)?;
        let e = rel_err(&data, &want.data)?;
        ensure!(e <= F32_TOL, "pgd step {norm:?} α={alpha} ε={eps}: relative error {e:.2e} > {F32_TOL:.0e}");
        worst = worst.max(e);
    }
    Ok(worst)
}

/// The top-k reads the same bf16 scores on both sides and does the same f32 arithmetic, so the
/// flips must be identical: same entries, same order (ties to the smaller id), same gains.
pub fn check_topk_flips(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    // a vocabulary that is not a multiple of the block; an odd site count; k = 1, 7, 32
    let (sites, vocab) = (3, 1000);
    // coarse values: many exact ties between entries
    let prod: Vec<f32> = r.vec(2 * sites * vocab, 1.0).iter().map(|v| (v * 16.0).round() / 16.0).collect();
    let base = r.vec(sites, 0.5);
    let old: Vec<u32> = (0..sites).map(|_| r.below(vocab) as u32).collect();
    let old_norm: Vec<f32> = (0..sites).map(|_| 0.5 + r.below(100) as f32 / 100.0).collect();
    let norms: Vec<f32> = (0..vocab).map(|_| 0.5 + r.below(100) as f32 / 100.0).collect();
    let allowed: Vec<bool> = (0..vocab).map(|_| r.below(4) != 0).collect();
    for (k, min_cos) in [(1, -1.0), (7, 0.1), (32, 0.3), (32, 0.99)] {
        let q = TopkFlips {
            sites,
            base: &base,
            old: &old,
            old_norm: &old_norm,
            norms: &norms,
            allowed: &allowed,
            min_cos,
            k,
        };
        let want = Cpu.topk_flips(&Cpu.upload(2 * sites, vocab, &prod)?, &q)?;
        let got = cuda.topk_flips(&cuda.upload(2 * sites, vocab, &prod)?, &q)?;
        ensure!(got == want, "top-{k} (cos ≥ {min_cos}): the device gave {got:?}, the CPU {want:?}");
        ensure!(want.iter().all(|t| t.len() <= k), "more than k flips");
    }
    Ok(0.0)
}

/// The fused adapter interpolation: m = 1 (a plain adapter), 2 and 3 projections, widths that are
/// not multiples of the block, with and without activation and residual, β rows that are one-hot,
/// uniform and arbitrary (not necessarily convex: the kernel must not assume it).
pub fn check_adapter_mix(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let rows = 11;
    let mut worst: f64 = 0.0;
    for (m, n, act, with_residual) in [
        (1, 24, Activation::Relu, false),
        (2, 384, Activation::Identity, true),
        (3, 133, Activation::Tanh, false),
    ] {
        let y = r.vec(rows * m * n, 2.0);
        let mut beta = r.vec(rows * m, 1.0);
        beta[..m].fill(1.0 / m as f32);
        beta[m..2 * m].fill(0.0);
        beta[m] = 1.0;
        let res = r.vec(rows * n, 1.0);
        let (cy, cres) = (Cpu.upload(rows, m * n, &y)?, Cpu.upload(rows, n, &res)?);
        let (dy, dres) = (cuda.upload(rows, m * n, &y)?, cuda.upload(rows, n, &res)?);
        let want = Cpu.mix_rows(&cy, m, &beta, act, with_residual.then_some(&cres))?;
        let got = cuda.mix_rows(&dy, m, &beta, act, with_residual.then_some(&dres))?;
        worst = worst.max(compare(&format!("mix m={m} n={n} {act:?}"), cuda, &got, &want)?);
    }
    Ok(worst)
}

/// Add, accumulation (bf16 activations' gradients and f32 gradient buffers), row gather and
/// scatter (kernels/elementwise.cu).
pub fn check_elementwise(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let (rows, cols) = (19, 45);
    let a = r.vec(rows * cols, 3.0);
    let b = r.vec(rows * cols, 3.0);
    let (ca, cb) = (Cpu.upload(rows, cols, &a)?, Cpu.upload(rows, cols, &b)?);
    let (da, db) = (cuda.upload(rows, cols, &a)?, cuda.upload(rows, cols, &b)?);
    let mut worst = compare("add", cuda, &cuda.add(&da, &db)?, &Cpu.add(&ca, &cb)?)?;
    let mut want = Cpu.upload(rows, cols, &a)?;
    Cpu.add_assign(&mut want, &cb)?;
    let mut got = cuda.upload(rows, cols, &a)?;
    cuda.add_assign(&mut got, &db)?;
    worst = worst.max(compare("add_assign bf16", cuda, &got, &want)?);
    let mut got32 = f32_mat(cuda, rows, cols, &a)?;
    cuda.add_assign(&mut got32, &f32_mat(cuda, rows, cols, &b)?)?;
    worst = worst.max(compare("add_assign f32", cuda, &got32, &want)?);
    let pick: Vec<usize> = (0..7).map(|_| r.below(rows)).collect();
    worst = worst.max(compare(
        "gather_rows",
        cuda,
        &cuda.gather_rows(&da, &pick)?,
        &Cpu.gather_rows(&ca, &pick)?,
    )?);
    let rows_at = [4usize, 0, 9];
    let part = r.vec(3 * cols, 1.0);
    let want = Cpu.scatter_rows(&Cpu.upload(3, cols, &part)?, &rows_at, 11)?;
    let got = cuda.scatter_rows(&cuda.upload(3, cols, &part)?, &rows_at, 11)?;
    worst = worst.max(compare("scatter_rows", cuda, &got, &want)?);
    Ok(worst)
}

/// Every activation and its backward in place (kernels/activation.cu); the backward must copy a
/// shared buffer before writing (copy on write).
pub fn check_activation(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let (rows, cols) = (23, 37);
    let pre = r.vec(rows * cols, 3.0);
    let dy = r.vec(rows * cols, 1.0);
    let (cpre, gpre) = (Cpu.upload(rows, cols, &pre)?, cuda.upload(rows, cols, &pre)?);
    let mut worst: f64 = 0.0;
    for act in [Activation::Identity, Activation::Gelu, Activation::Relu, Activation::Tanh, Activation::Silu]
    {
        let e =
            compare(&format!("{act:?}"), cuda, &cuda.activation(&gpre, act)?, &Cpu.activation(&cpre, act)?)?;
        worst = worst.max(e);
    }
    for act in [Activation::Gelu, Activation::Relu, Activation::Tanh, Activation::Silu] {
        let want = Cpu.activation_backward(Cpu.upload(rows, cols, &dy)?, &cpre, act)?;
        let g = cuda.upload(rows, cols, &dy)?;
        let keep = g.clone(); // copy on write: the clone must not see the in-place update
        let got = cuda.activation_backward(g, &gpre, act)?;
        worst = worst.max(compare(&format!("{act:?} backward"), cuda, &got, &want)?);
        let (_, _, untouched) = cuda.download(&keep)?;
        ensure!(rel_err(&untouched, &dy)? < 4e-3, "{act:?} backward wrote through a shared buffer");
    }
    Ok(worst)
}

/// Dropout (kernels/dropout.cu): the same mask as the CPU, element for element.
pub fn check_dropout(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let (rows, cols) = (23, 37);
    let dy = r.vec(rows * cols, 1.0);
    let drop = crate::backend::DropKey::new(0.3, seed, 7, 3);
    let want = Cpu.dropout(Cpu.upload(rows, cols, &dy)?, drop)?;
    let got = cuda.dropout(cuda.upload(rows, cols, &dy)?, drop)?;
    let (_, _, g) = cuda.download(&got)?;
    for (i, (a, b)) in g.iter().zip(&want.data).enumerate() {
        ensure!((*a == 0.0) == (*b == 0.0), "dropout mask differs from the CPU's at element {i}");
    }
    compare("dropout", cuda, &got, &want)
}

/// Cross-entropy (computed on the host from the downloaded logits, the gradient uploaded).
pub fn check_loss(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let logits = r.vec(6 * 3, 4.0);
    let labels = [0u32, 2, 1, 1, 0, 2];
    let (cl, cg) = Cpu.cross_entropy(&Cpu.upload(6, 3, &logits)?, &labels)?;
    let (gl, gg) = cuda.cross_entropy(&cuda.upload(6, 3, &logits)?, &labels)?;
    ensure!((cl - gl).abs() <= 1e-2 * cl.abs().max(1e-3), "cross-entropy loss {gl} vs {cl}");
    compare("cross-entropy gradient", cuda, &gg, &cg)
}

/// LayerNorm's backward with its parameter gradients (kernels/layernorm.cu).
pub fn check_layernorm_backward(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    for (rows, cols) in [(7, 384), (13, 100), (1, 32)] {
        let x: Vec<f32> = r.vec(rows * cols, 2.0);
        let dy = r.vec(rows * cols, 1.0);
        let g = tensor(&[cols], r.vec(cols, 1.0));
        let (mut cg, mut cb) = (Cpu.zeros(1, cols)?, Cpu.zeros(1, cols)?);
        let want = Cpu.layernorm_backward(
            &Cpu.upload(rows, cols, &dy)?,
            &Cpu.upload(rows, cols, &x)?,
            &g,
            1e-12,
            Some((&mut cg, &mut cb)),
        )?;
        let (mut gg, mut gb) = (cuda.zeros(1, cols)?, cuda.zeros(1, cols)?);
        let got = cuda.layernorm_backward(
            &cuda.upload(rows, cols, &dy)?,
            &cuda.upload(rows, cols, &x)?,
            &cuda.weight(&g)?,
            1e-12,
            Some((&mut gg, &mut gb)),
        )?;
        let name = format!("{rows}x{cols}");
        worst = worst.max(compare(&format!("layernorm backward dx {name}"), cuda, &got, &want)?);
        worst = worst.max(compare(&format!("layernorm backward dγ {name}"), cuda, &gg, &cg)?);
        worst = worst.max(compare(&format!("layernorm backward dβ {name}"), cuda, &gb, &cb)?);
    }
    Ok(worst)
}

/// The embedding's backward through a perturbed forward, with the LayerNorm's and (full
/// fine-tuning) the tables' gradients (kernels/embedding.cu).
pub fn check_embedding_backward(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let mut worst: f64 = 0.0;
    // embedding: tables small enough that rows repeat (table gradients accumulate)
    let (vocab, positions, h) = (11, 9, 40);
    let w = random_embeddings(&mut r, vocab, positions, h);
    let (batch, seq) = (3, 7);
    let ids = (0..batch * seq).map(|_| r.below(vocab) as u32).collect();
    let type_ids = (0..batch * seq).map(|i| (i % seq > 3) as u32).collect();
    let tb = TokenBatch { batch, seq, ids, type_ids, lens: vec![7, 3, 5], truncated: vec![false; batch] };
    let dy = r.vec(batch * seq * h, 1.0);
    let zeros = |be: &dyn Fn(usize, usize) -> Result<<Cuda as Backend>::Act>| -> Result<_> {
        Ok(EmbeddingWeights {
            word: be(vocab, h)?,
            position: be(positions, h)?,
            token_type: be(2, h)?,
            ln_gamma: be(1, h)?,
            ln_beta: be(1, h)?,
        })
    };
    let cgrads_zero = || -> Result<_> {
        Ok(EmbeddingWeights {
            word: Cpu.zeros(vocab, h)?,
            position: Cpu.zeros(positions, h)?,
            token_type: Cpu.zeros(2, h)?,
            ln_gamma: Cpu.zeros(1, h)?,
            ln_beta: Cpu.zeros(1, h)?,
        })
    };
    // through a perturbed forward (δ changes the LayerNorm's statistics, so its backward); BERT's
    // positions, then RoBERTa's (9 rows: padding_idx 1 + 1 + 7 tokens)
    let roberta = EmbedSpec { positions: Positions::AfterPadding { padding_idx: 1 }, eps: 1e-5 };
    let padded = with_pads(&tb, 1);
    let dw = on_device(cuda, &w)?;
    for (spec, tb) in [(EmbedSpec::absolute(1e-12), &tb), (roberta, &padded)] {
        let mut cgrads = cgrads_zero()?;
        let delta = r.vec(batch * seq * h, 0.05);
        let (cd, gd) = (Cpu.upload(batch * seq, h, &delta)?, cuda.upload_state(batch * seq, h, &delta)?);
        let want = Cpu.embed_backward(
            &Cpu.upload(batch * seq, h, &dy)?,
            tb,
            &w,
            spec,
            Some(&cd),
            Some(&mut cgrads),
        )?;
        let mut ggrads = zeros(&|r, c| cuda.zeros(r, c))?;
        let gdy = cuda.upload(batch * seq, h, &dy)?;
        let got = cuda.embed_backward(&gdy, tb, &dw, spec, Some(&gd), Some(&mut ggrads))?;
        let tag = if spec.positions == Positions::Absolute { "" } else { ", RoBERTa positions" };
        worst = worst.max(compare(&format!("embedding backward{tag}"), cuda, &got, &want)?);
        for (name, g, c) in [
            ("word", &ggrads.word, &cgrads.word),
            ("position", &ggrads.position, &cgrads.position),
            ("token type", &ggrads.token_type, &cgrads.token_type),
            ("LayerNorm γ", &ggrads.ln_gamma, &cgrads.ln_gamma),
            ("LayerNorm β", &ggrads.ln_beta, &cgrads.ln_beta),
        ] {
            worst = worst.max(compare(&format!("embedding {name} gradient{tag}"), cuda, g, c)?);
        }
    }
    Ok(worst)
}

/// The optimizer (kernels/optim.cu): the gradient norm's sum of squares (f32 and bf16), and
/// `adamw_f32`: two AdamW steps (gradient scaling, weight decay, bias corrections) on the f32
/// master weights and moments against the CPU's update, which does the same f32 operations (bound
/// 1e-5: only fused multiply-adds may differ); the bf16 copy the kernel writes for the next forward
/// must be the master weights rounded.
pub fn check_optim(cuda: &Cuda, seed: u64) -> Result<f64> {
    let mut r = Rng(seed);
    let big = r.vec(300_001, 2.0);
    let want_sq: f64 = big.iter().map(|v| (*v as f64).powi(2)).sum();
    let got_sq = cuda.sum_squares(&f32_mat(cuda, 1, big.len(), &big)?)?;
    let e = (got_sq - want_sq).abs() / want_sq;
    ensure!(e < 1e-9, "sum_squares f32: relative error {e:.2e}");
    let got_sq = cuda.sum_squares(&cuda.upload(1, big.len(), &big)?)?;
    ensure!((got_sq - want_sq).abs() / want_sq < 1e-9, "sum_squares bf16");
    let (rows, cols) = (37, 53);
    let n = rows * cols;
    let start = tensor(&[rows, cols], r.vec(n, 1.0));
    let (mut cp, mut gp) = (Cpu.weight(&start)?, cuda.weight(&start)?);
    let (mut cm, mut cv) = (Cpu.zeros(rows, cols)?, Cpu.zeros(rows, cols)?);
    let (mut gm, mut gv) = (cuda.zeros(rows, cols)?, cuda.zeros(rows, cols)?);
    let mut worst: f64 = 0.0;
    for step in 1..=2 {
        let g = r.vec(n, 0.5);
        let h = crate::backend::AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step,
            grad_scale: 0.7,
        };
        Cpu.adamw(&mut cp, &Cpu.upload(rows, cols, &g)?, &mut cm, &mut cv, &h)?;
        cuda.adamw(&mut gp, &f32_mat(cuda, rows, cols, &g)?, &mut gm, &mut gv, &h)?;
        let (want, got) = (Cpu.weight_to_host(&cp)?, cuda.weight_to_host(&gp)?);
        for (what, got, want) in [
            ("master weights", got.data().to_vec(), want.data().to_vec()),
            ("first moment", cuda.download(&gm)?.2, cm.data.clone()),
            ("second moment", cuda.download(&gv)?.2, cv.data.clone()),
        ] {
            let e = rel_err(&got, &want).map_err(|e| anyhow::anyhow!("adamw step {step} {what}: {e}"))?;
            ensure!(e <= 1e-5, "adamw step {step} {what}: relative error {e:.2e} > 1e-5");
            worst = worst.max(e);
        }
        let copy = bf16::to_vec(&gp.buf().to_vec::<u16>()?[..n]);
        let rounded = bf16::to_vec(&bf16::from_slice(got.data()));
        ensure!(copy == rounded, "adamw step {step}: the bf16 copy is not the master weights rounded");
    }
    Ok(worst)
}
