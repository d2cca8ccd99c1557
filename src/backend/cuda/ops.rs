//! The op set on the CUDA backend: shapes checked, buffers allocated, launches configured, written
//! once for both executors. Activations are bf16 `[rows, cols]`; weights bf16 with their shape.

use std::sync::Arc;

use anyhow::{bail, ensure, Result};

use super::executor::{DevBuf, Executor};
use super::launch;
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
    pub fn buf(&self) -> &DevBuf {
        &self.buf
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
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
        launch::embed(self.exec(), &out.buf, &ids, &tys, w, rows, batch.seq, eps)?;
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
        ensure!(b.numel() == n, "linear: bias has {} entries, expected {n}", b.numel());
        if let Some(r) = residual {
            ensure!(
                r.rows == x.rows && r.cols == n,
                "linear: residual is {}x{}, expected {}x{n}",
                r.rows,
                r.cols,
                x.rows
            );
        }
        let out = self.mat(x.rows, n)?;
        let res = residual.map(|r| &*r.buf);
        launch::linear(self.exec(), &out.buf, &x.buf, &w.buf, Some(&b.buf), res, (x.rows, n, k), act)?;
        Ok(out)
    }

    fn add(&self, a: &DevMat, b: &DevMat) -> Result<DevMat> {
        ensure!(a.rows == b.rows && a.cols == b.cols, "add: {}x{} + {}x{}", a.rows, a.cols, b.rows, b.cols);
        let out = self.mat(a.rows, a.cols)?;
        launch::add(self.exec(), &out.buf, &a.buf, &b.buf, a.rows * a.cols)?;
        Ok(out)
    }

    fn layernorm(&self, x: &DevMat, gamma: &DevTensor, beta: &DevTensor, eps: f32) -> Result<DevMat> {
        ensure!(
            gamma.numel() == x.cols && beta.numel() == x.cols,
            "layernorm: parameters for {} columns",
            gamma.numel()
        );
        let out = self.mat(x.rows, x.cols)?;
        launch::layernorm(self.exec(), &out.buf, &x.buf, &gamma.buf, &beta.buf, x.rows, x.cols, eps)?;
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
        launch::attention(self.exec(), &out.buf, &qkv.buf, &lens_dev, batch, seq, heads, d)?;
        Ok(out)
    }

    fn gather_rows(&self, x: &DevMat, rows: &[usize]) -> Result<DevMat> {
        if let Some(r) = rows.iter().find(|&&r| r >= x.rows) {
            bail!("gather_rows: row {r} out of {}", x.rows);
        }
        let out = self.mat(rows.len(), x.cols)?;
        if !rows.is_empty() {
            let idx = self.ints(rows.iter().copied())?;
            launch::gather_rows(self.exec(), &out.buf, &x.buf, &idx, rows.len(), x.cols)?;
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
        launch::mean_pool_l2(self.exec(), &out.buf, &x.buf, &lens_dev, lens.len(), seq, x.cols)?;
        Ok(out)
    }

    fn dropout(&self, _x: DevMat, _drop: DropKey) -> Result<DevMat> {
        Err(training_only("dropout"))
    }

    fn activation(&self, x: &DevMat, act: Activation) -> Result<DevMat> {
        let out = self.mat(x.rows, x.cols)?;
        launch::activation(self.exec(), &out.buf, &x.buf, x.rows * x.cols, act)?;
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
        self.zeros(rows, w.numel() / rows.max(1))
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
        Ok(Tensor::from_vec(w.shape.clone(), bf16::to_vec(&h[..w.numel()])))
    }
}
