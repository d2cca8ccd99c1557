//! The CPU backend: f32, multi-threaded with rayon, GEMMs by the `gemm` crate. It is the reference
//! every other backend is tested against, and a real product path for machines without a GPU.

mod attention;
mod embedding;
mod layernorm;
pub use layernorm::layernorm_row;
mod linear;
pub mod math;
mod pooling;

use anyhow::{ensure, Result};

use super::{Activation, Backend, EmbeddingWeights};
use crate::model::tokenizer::TokenBatch;
use crate::model::weights::Tensor;

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

    fn download(&self, x: &Mat) -> Result<(usize, usize, Vec<f32>)> {
        Ok((x.rows, x.cols, x.data.clone()))
    }

    fn embed(&self, batch: &TokenBatch, w: &EmbeddingWeights<Tensor>, eps: f32) -> Result<Mat> {
        embedding::embed(batch, w, eps)
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
        ensure!(
            a.rows == b.rows && a.cols == b.cols,
            "add: shapes {}x{} and {}x{}",
            a.rows,
            a.cols,
            b.rows,
            b.cols
        );
        let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
        Ok(Mat { rows: a.rows, cols: a.cols, data })
    }

    fn layernorm(&self, x: &Mat, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Mat> {
        layernorm::layernorm(x, gamma, beta, eps)
    }

    fn attention(&self, qkv: &Mat, lens: &[usize], seq: usize, heads: usize) -> Result<Mat> {
        attention::attention(qkv, lens, seq, heads)
    }

    fn gather_rows(&self, x: &Mat, rows: &[usize]) -> Result<Mat> {
        let mut out = Mat::zeros(rows.len(), x.cols);
        for (i, &r) in rows.iter().enumerate() {
            ensure!(r < x.rows, "gather_rows: row {r} out of {}", x.rows);
            out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(x.row(r));
        }
        Ok(out)
    }

    fn mean_pool_l2(&self, x: &Mat, lens: &[usize], seq: usize) -> Result<Mat> {
        pooling::mean_pool_l2(x, lens, seq)
    }
}
