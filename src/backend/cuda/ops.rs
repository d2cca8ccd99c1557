//! The op set on the CUDA backend: shapes checked, buffers allocated, launches configured, written
//! once for both executors. Activations are bf16 `[rows, cols]`; weights bf16 with their shape.

use std::sync::Arc;

use anyhow::{bail, ensure, Result};

use super::executor::{Args, DevBuf, Executor, Launch};
use super::{bf16, Cuda};
use crate::backend::{Activation, Backend, DropKey, EmbeddingWeights};
use crate::model::tokenizer::TokenBatch;
use crate::model::weights::Tensor;

/// A bf16 activation matrix on the device. Clones share the buffer (ops never write their inputs).
#[derive(Clone)]
pub struct DevMat {
    pub rows: usize,
    pub cols: usize,
    buf: Arc<DevBuf>,
}

impl DevMat {
    pub fn buf(&self) -> &DevBuf {
        &self.buf
    }
}

/// A bf16 parameter tensor on the device.
pub struct DevTensor {
    pub shape: Vec<usize>,
    buf: DevBuf,
}

impl DevTensor {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

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

const GEMM_TILE: usize = 64;
const GEMM_SMEM: u32 = 3 * (64 + 64) * 40 * 2;
const ROWS_PER_BLOCK: usize = 4;

fn elementwise(n: usize) -> Launch {
    Launch::linear(n.div_ceil(256).min(65_535) as u32, 256, 0)
}

fn training_only(op: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{op} is not implemented on the cuda backend yet (training on the GPU path is the next step); use --device cpu"
    )
}

impl Cuda {
    fn mat(&self, rows: usize, cols: usize) -> Result<DevMat> {
        let buf = DevBuf::new(&self.exec, rows * cols * 2)?;
        if self.poison {
            buf.fill(0xff)?;
        }
        Ok(DevMat { rows, cols, buf: Arc::new(buf) })
    }

    fn ints(&self, v: impl IntoIterator<Item = usize>) -> Result<DevBuf> {
        let v: Vec<i32> = v.into_iter().map(|x| x as i32).collect();
        DevBuf::from_slice(&self.exec, &v)
    }

    fn exec(&self) -> &dyn Executor {
        &*self.exec
    }
}

impl Backend for Cuda {
    type Act = DevMat;
    type Weight = DevTensor;

    fn name(&self) -> &'static str {
        self.label
    }

    fn weight(&self, t: &Tensor) -> Result<DevTensor> {
        Ok(DevTensor {
            shape: t.shape().to_vec(),
            buf: DevBuf::from_slice(&self.exec, &bf16::from_slice(t.data()))?,
        })
    }

    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<DevMat> {
        ensure!(data.len() == rows * cols, "upload: {} values for {rows}x{cols}", data.len());
        Ok(DevMat { rows, cols, buf: Arc::new(DevBuf::from_slice(&self.exec, &bf16::from_slice(data))?) })
    }

    fn download(&self, x: &DevMat) -> Result<(usize, usize, Vec<f32>)> {
        let h: Vec<u16> = x.buf.to_vec()?;
        Ok((x.rows, x.cols, bf16::to_vec(&h[..x.rows * x.cols])))
    }

    fn embed(&self, batch: &TokenBatch, w: &EmbeddingWeights<DevTensor>, eps: f32) -> Result<DevMat> {
        let (vocab, h) = (w.word.shape[0], w.word.shape[1]);
        let (positions, types) = (w.position.shape[0], w.token_type.shape[0]);
        ensure!(batch.seq <= positions, "embed: sequence length {} > {positions} positions", batch.seq);
        if let Some(id) = batch.ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("embed: token id {id} outside the vocabulary of {vocab}");
        }
        if let Some(t) = batch.type_ids.iter().find(|&&t| t as usize >= types) {
            bail!("embed: token type {t} outside the {types} types");
        }
        let rows = batch.batch * batch.seq;
        let ids = self.ints(batch.ids.iter().map(|&i| i as usize))?;
        let tys = self.ints(batch.type_ids.iter().map(|&i| i as usize))?;
        let out = self.mat(rows, h)?;
        let dims = Launch::linear(rows.div_ceil(ROWS_PER_BLOCK) as u32, 128, (ROWS_PER_BLOCK * h * 4) as u32);
        // SAFETY: embed_layernorm_bf16's parameters; ids/types checked against the tables above.
        unsafe {
            Args::new()
                .buf(&out.buf)
                .buf(&ids)
                .buf(&tys)
                .buf(&w.word.buf)
                .buf(&w.position.buf)
                .buf(&w.token_type.buf)
                .buf(&w.ln_gamma.buf)
                .buf(&w.ln_beta.buf)
                .i32(rows as i32)
                .i32(batch.seq as i32)
                .i32(h as i32)
                .f32(eps)
                .launch(self.exec(), "embed_layernorm_bf16", dims)?;
        }
        Ok(out)
    }

    fn linear(
        &self,
        x: &DevMat,
        w: &DevTensor,
        b: &DevTensor,
        act: Activation,
        residual: Option<&DevMat>,
    ) -> Result<DevMat> {
        ensure!(w.shape.len() == 2, "linear: weight must be 2-D, got {:?}", w.shape);
        let (n, k) = (w.shape[0], w.shape[1]);
        ensure!(x.cols == k, "linear: input has {} columns, weight expects {k}", x.cols);
        ensure!(b.len() == n, "linear: bias has {} entries, expected {n}", b.len());
        if let Some(r) = residual {
            ensure!(
                r.rows == x.rows && r.cols == n,
                "linear: residual is {}x{}, expected {}x{n}",
                r.rows,
                r.cols,
                x.rows
            );
        }
        let m = x.rows;
        let out = self.mat(m, n)?;
        let kernel = if k % 8 == 0 { "gemm_bf16" } else { "gemm_bf16_rowwise_k" };
        let dims = Launch {
            grid: [n.div_ceil(GEMM_TILE) as u32, m.div_ceil(GEMM_TILE) as u32, 1],
            block: [128, 1, 1],
            smem: GEMM_SMEM,
        };
        // SAFETY: gemm_bf16(out, x, w, bias, residual, M, N, K, act) with the shapes checked above.
        unsafe {
            Args::new()
                .buf(&out.buf)
                .buf(&x.buf)
                .buf(&w.buf)
                .buf(&b.buf)
                .ptr(residual.map_or(0, |r| r.buf.ptr()))
                .i32(m as i32)
                .i32(n as i32)
                .i32(k as i32)
                .i32(act_code(act))
                .launch(self.exec(), kernel, dims)?;
        }
        Ok(out)
    }

    fn add(&self, a: &DevMat, b: &DevMat) -> Result<DevMat> {
        ensure!(a.rows == b.rows && a.cols == b.cols, "add: {}x{} + {}x{}", a.rows, a.cols, b.rows, b.cols);
        let out = self.mat(a.rows, a.cols)?;
        let n = a.rows * a.cols;
        // SAFETY: add_bf16(out, a, b, n) over n elements of each.
        unsafe {
            Args::new().buf(&out.buf).buf(&a.buf).buf(&b.buf).u64(n as u64).launch(
                self.exec(),
                "add_bf16",
                elementwise(n),
            )?;
        }
        Ok(out)
    }

    fn layernorm(&self, x: &DevMat, gamma: &DevTensor, beta: &DevTensor, eps: f32) -> Result<DevMat> {
        ensure!(
            gamma.len() == x.cols && beta.len() == x.cols,
            "layernorm: parameters for {} columns",
            gamma.len()
        );
        let out = self.mat(x.rows, x.cols)?;
        let dims =
            Launch::linear(x.rows.div_ceil(ROWS_PER_BLOCK) as u32, 128, (ROWS_PER_BLOCK * x.cols * 4) as u32);
        // SAFETY: layernorm_bf16(out, x, gamma, beta, rows, cols, eps).
        unsafe {
            Args::new()
                .buf(&out.buf)
                .buf(&x.buf)
                .buf(&gamma.buf)
                .buf(&beta.buf)
                .i32(x.rows as i32)
                .i32(x.cols as i32)
                .f32(eps)
                .launch(self.exec(), "layernorm_bf16", dims)?;
        }
        Ok(out)
    }

    fn attention(
        &self,
        qkv: &DevMat,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<DevMat> {
        if dropout.is_some() {
            return Err(training_only("attention dropout"));
        }
        let batch = lens.len();
        ensure!(qkv.rows == batch * seq, "attention: {} rows for {batch} sequences of {seq}", qkv.rows);
        ensure!(
            qkv.cols % 3 == 0 && (qkv.cols / 3) % heads == 0,
            "attention: {} columns for {heads} heads",
            qkv.cols
        );
        ensure!(lens.iter().all(|&l| l > 0 && l <= seq), "attention: sequence lengths must be in 1..={seq}");
        let h = qkv.cols / 3;
        let d = h / heads;
        ensure!(d <= 128, "attention: head dimension {d} > 128 is not supported by the kernels");
        let out = self.mat(qkv.rows, h)?;
        let lens_dev = self.ints(lens.iter().copied())?;
        let smem = (4 * (16 * d + 32 * (d + 1) + 32 * d)) as u32;
        let dims =
            Launch { grid: [seq.div_ceil(16) as u32, heads as u32, batch as u32], block: [128, 1, 1], smem };
        let kernel = format!("attention_bf16_dpl{}", d.div_ceil(32));
        // SAFETY: attention_bf16_dplN(ctx, qkv, lens, seq, heads, d, scale) with the shapes checked above.
        unsafe {
            Args::new()
                .buf(&out.buf)
                .buf(&qkv.buf)
                .buf(&lens_dev)
                .i32(seq as i32)
                .i32(heads as i32)
                .i32(d as i32)
                .f32(1.0 / (d as f32).sqrt())
                .launch(self.exec(), &kernel, dims)?;
        }
        Ok(out)
    }

    fn gather_rows(&self, x: &DevMat, rows: &[usize]) -> Result<DevMat> {
        if let Some(r) = rows.iter().find(|&&r| r >= x.rows) {
            bail!("gather_rows: row {r} out of {}", x.rows);
        }
        let out = self.mat(rows.len(), x.cols)?;
        if rows.is_empty() {
            return Ok(out);
        }
        let idx = self.ints(rows.iter().copied())?;
        // SAFETY: gather_rows_bf16(out, x, rows, cols); rows checked above.
        unsafe {
            Args::new().buf(&out.buf).buf(&x.buf).buf(&idx).i32(x.cols as i32).launch(
                self.exec(),
                "gather_rows_bf16",
                Launch::linear(rows.len() as u32, 128, 0),
            )?;
        }
        Ok(out)
    }

    fn mean_pool_l2(&self, x: &DevMat, lens: &[usize], seq: usize) -> Result<DevMat> {
        ensure!(
            x.rows == lens.len() * seq,
            "mean_pool: {} rows for {} sequences of {seq}",
            x.rows,
            lens.len()
        );
        ensure!(lens.iter().all(|&l| l > 0 && l <= seq), "mean_pool: sequence lengths must be in 1..={seq}");
        let out = self.mat(lens.len(), x.cols)?;
        let lens_dev = self.ints(lens.iter().copied())?;
        // SAFETY: mean_pool_l2_bf16(out, x, lens, seq, cols); 256 threads → 8 partial sums.
        unsafe {
            Args::new().buf(&out.buf).buf(&x.buf).buf(&lens_dev).i32(seq as i32).i32(x.cols as i32).launch(
                self.exec(),
                "mean_pool_l2_bf16",
                Launch::linear(lens.len() as u32, 256, (4 * x.cols + 32) as u32),
            )?;
        }
        Ok(out)
    }

    fn dropout(&self, _x: DevMat, _drop: DropKey) -> Result<DevMat> {
        Err(training_only("dropout"))
    }

    fn activation(&self, x: &DevMat, act: Activation) -> Result<DevMat> {
        let out = self.mat(x.rows, x.cols)?;
        let n = x.rows * x.cols;
        // SAFETY: activation_bf16(out, x, n, act).
        unsafe {
            Args::new().buf(&out.buf).buf(&x.buf).u64(n as u64).i32(act_code(act)).launch(
                self.exec(),
                "activation_bf16",
                elementwise(n),
            )?;
        }
        Ok(out)
    }

    fn activation_backward(&self, _dy: DevMat, _pre: &DevMat, _act: Activation) -> Result<DevMat> {
        Err(training_only("activation_backward"))
    }

    fn linear_backward(
        &self,
        _dy: &DevMat,
        _x: &DevMat,
        _w: &DevTensor,
        _grads: Option<(&mut DevMat, &mut DevMat)>,
        _need_dx: bool,
    ) -> Result<Option<DevMat>> {
        Err(training_only("linear_backward"))
    }

    fn layernorm_backward(
        &self,
        _dy: &DevMat,
        _x: &DevMat,
        _gamma: &DevTensor,
        _eps: f32,
        _grads: Option<(&mut DevMat, &mut DevMat)>,
    ) -> Result<DevMat> {
        Err(training_only("layernorm_backward"))
    }

    fn embed_backward(
        &self,
        _dy: &DevMat,
        _batch: &TokenBatch,
        _w: &EmbeddingWeights<DevTensor>,
        _eps: f32,
        _grads: Option<&mut EmbeddingWeights<DevMat>>,
    ) -> Result<DevMat> {
        Err(training_only("embed_backward"))
    }

    fn attention_backward(
        &self,
        _dctx: &DevMat,
        _qkv: &DevMat,
        _lens: &[usize],
        _seq: usize,
        _heads: usize,
        _dropout: Option<DropKey>,
    ) -> Result<DevMat> {
        Err(training_only("attention_backward"))
    }

    fn scatter_rows(&self, _dy: &DevMat, _rows: &[usize], _total: usize) -> Result<DevMat> {
        Err(training_only("scatter_rows"))
    }

    fn cross_entropy(&self, _logits: &DevMat, _labels: &[u32]) -> Result<(f32, DevMat)> {
        Err(training_only("cross_entropy"))
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<DevMat> {
        let m = self.mat(rows, cols)?;
        m.buf.fill(0)?;
        Ok(m)
    }

    fn zeros_like(&self, w: &DevTensor) -> Result<DevMat> {
        let rows = if w.shape.len() == 1 { 1 } else { w.shape[0] };
        self.zeros(rows, w.len() / rows.max(1))
    }

    fn fill_zero(&self, _x: &mut DevMat) -> Result<()> {
        Err(training_only("fill_zero"))
    }

    fn add_assign(&self, _acc: &mut DevMat, _x: &DevMat) -> Result<()> {
        Err(training_only("add_assign"))
    }

    fn sum_squares(&self, x: &DevMat) -> Result<f64> {
        let (_, _, v) = self.download(x)?;
        Ok(v.iter().map(|&e| (e as f64) * (e as f64)).sum())
    }

    fn adamw(
        &self,
        _param: &mut DevTensor,
        _grad: &DevMat,
        _m: &mut DevMat,
        _v: &mut DevMat,
        _h: &crate::backend::AdamWStep,
    ) -> Result<()> {
        Err(training_only("adamw"))
    }

    fn weight_to_host(&self, w: &DevTensor) -> Result<Tensor> {
        let h: Vec<u16> = w.buf.to_vec()?;
        Ok(Tensor::from_vec(w.shape.clone(), bf16::to_vec(&h[..w.len()])))
    }
}
