//! The CPU backend: f32, multi-threaded with rayon, GEMMs by the `gemm` crate. It is the reference
//! every other backend is tested against, and a real product path for machines without a GPU.

mod activation;
pub mod attack;
mod attention;
pub mod bf16;
mod dropout;
mod embedding;
mod layernorm;
pub use layernorm::layernorm_row;
mod linear;
mod loss;
pub mod math;
pub mod mix;
mod optim;
mod pooling;

use anyhow::{ensure, Result};

use super::{Activation, AdamWStep, Backend, DropKey, EmbeddingWeights, PgdStep, TopkFlips};
use crate::backend::TokenBatch;
use crate::weights::Tensor;

/// An activation matrix on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    fn check_same(&self, other: &Mat, op: &str) -> Result<()> {
        ensure!(
            self.rows == other.rows && self.cols == other.cols,
            "{op}: shapes {}x{} and {}x{}",
            self.rows,
            self.cols,
            other.rows,
            other.cols
        );
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Rows per rayon task for row-wise ops: big enough to amortise scheduling.
const ROW_CHUNK: usize = 16;

impl Backend for Cpu {
    type Act = Mat;
    type Weight = Tensor;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn weight(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Mat> {
        crate::backend::shapes::upload(data.len(), rows, cols)?;
        Ok(Mat { rows, cols, data: data.to_vec() })
    }

    fn download(&self, x: &Mat) -> Result<(usize, usize, Vec<f32>)> {
        Ok((x.rows, x.cols, x.data.clone()))
    }

    fn embed(
        &self,
        batch: &TokenBatch,
        w: &EmbeddingWeights<Tensor>,
        eps: f32,
        delta: Option<&Mat>,
    ) -> Result<Mat> {
        embedding::embed(batch, w, eps, delta)
    }

    fn linear(
        &self,
        x: &Mat,
        w: &Tensor,
        b: &Tensor,
        act: Activation,
        residual: Option<&Mat>,
    ) -> Result<Mat> {
        linear::linear(x, w, b, act, residual)
    }

    fn add(&self, a: &Mat, b: &Mat) -> Result<Mat> {
        a.check_same(b, "add")?;
        let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
        Ok(Mat { rows: a.rows, cols: a.cols, data })
    }

    fn layernorm(&self, x: &Mat, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Mat> {
        layernorm::layernorm(x, gamma, beta, eps)
    }

    fn attention(
        &self,
        qkv: &Mat,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<Mat> {
        attention::attention(qkv, lens, seq, heads, dropout)
    }

    fn gather_rows(&self, x: &Mat, rows: &[usize]) -> Result<Mat> {
        crate::backend::shapes::rows_in("gather_rows", rows, x.rows)?;
        let mut out = Mat::zeros(rows.len(), x.cols);
        for (i, &r) in rows.iter().enumerate() {
            out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(x.row(r));
        }
        Ok(out)
    }

    fn mix_rows(
        &self,
        y: &Mat,
        m: usize,
        beta: &[f32],
        act: Activation,
        residual: Option<&Mat>,
    ) -> Result<Mat> {
        mix::mix_rows(y, m, beta, act, residual)
    }

    fn mean_pool_l2(&self, x: &Mat, lens: &[usize], seq: usize) -> Result<Mat> {
        pooling::mean_pool_l2(x, lens, seq)
    }

    fn dropout(&self, x: Mat, drop: DropKey) -> Result<Mat> {
        Ok(dropout::dropout(x, drop))
    }

    fn activation(&self, x: &Mat, act: Activation) -> Result<Mat> {
        Ok(activation::activation(x, act))
    }

    fn activation_backward(&self, dy: Mat, pre: &Mat, act: Activation) -> Result<Mat> {
        dy.check_same(pre, "activation_backward")?;
        Ok(activation::activation_backward(dy, pre, act))
    }

    fn linear_backward(
        &self,
        dy: &Mat,
        x: &Mat,
        w: &Tensor,
        grads: Option<(&mut Mat, &mut Mat)>,
        need_dx: bool,
    ) -> Result<Option<Mat>> {
        linear::linear_backward(dy, x, w, grads, need_dx)
    }

    fn layernorm_backward(
        &self,
        dy: &Mat,
        x: &Mat,
        gamma: &Tensor,
        eps: f32,
        grads: Option<(&mut Mat, &mut Mat)>,
    ) -> Result<Mat> {
        layernorm::layernorm_backward(dy, x, gamma, eps, grads)
    }

    fn embed_backward(
        &self,
        dy: &Mat,
        batch: &TokenBatch,
        w: &EmbeddingWeights<Tensor>,
        eps: f32,
        delta: Option<&Mat>,
        grads: Option<&mut EmbeddingWeights<Mat>>,
    ) -> Result<Mat> {
        embedding::embed_backward(dy, batch, w, eps, delta, grads)
    }

    fn attention_backward(
        &self,
        dctx: &Mat,
        qkv: &Mat,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<Mat> {
        attention::attention_backward(dctx, qkv, lens, seq, heads, dropout)
    }

    fn scatter_rows(&self, dy: &Mat, rows: &[usize], total: usize) -> Result<Mat> {
        crate::backend::shapes::scatter(dy.rows, rows, total)?;
        let mut out = Mat::zeros(total, dy.cols);
        for (i, &r) in rows.iter().enumerate() {
            out.data[r * dy.cols..(r + 1) * dy.cols].copy_from_slice(dy.row(i));
        }
        Ok(out)
    }

    fn cross_entropy(&self, logits: &Mat, labels: &[u32]) -> Result<(f32, Mat)> {
        loss::cross_entropy(logits, labels)
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<Mat> {
        Ok(Mat::zeros(rows, cols))
    }

    fn zeros_like(&self, w: &Tensor) -> Result<Mat> {
        let shape = w.shape();
        let n = w.data().len();
        let rows = if shape.len() >= 2 { shape[0] } else { 1 };
        Ok(Mat::zeros(rows, n / rows.max(1)))
    }

    fn fill_zero(&self, x: &mut Mat) -> Result<()> {
        x.data.fill(0.0);
        Ok(())
    }

    fn add_assign(&self, acc: &mut Mat, x: &Mat) -> Result<()> {
        acc.check_same(x, "add_assign")?;
        acc.data.iter_mut().zip(&x.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn sum_squares(&self, x: &Mat) -> Result<f64> {
        Ok(optim::sum_squares(x))
    }

    fn adamw(&self, param: &mut Tensor, grad: &Mat, m: &mut Mat, v: &mut Mat, h: &AdamWStep) -> Result<()> {
        optim::adamw(param, grad, m, v, h)
    }

    fn weight_to_host(&self, w: &Tensor) -> Result<Tensor> {
        Ok(w.clone())
    }

    fn pgd_step(
        &self,
        delta: &mut Mat,
        grad: &Mat,
        lens: &[usize],
        seq: usize,
        step: &PgdStep,
    ) -> Result<()> {
        delta.check_same(grad, "pgd_step")?;
        attack::pgd_step(delta, grad, lens, seq, step)
    }

    fn topk_flips(&self, prod: &Mat, q: &TopkFlips) -> Result<Vec<Vec<(u32, f32)>>> {
        attack::topk_flips(prod, q)
    }
}
