//! The CPU backend: f32, multi-threaded with rayon, GEMMs by the `gemm` crate. It is the reference
//! every other backend is tested against, and a real product path for machines without a GPU.

mod activation;
pub mod attack;
mod attention;
pub mod bf16;
mod dropout;
mod elementwise;
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

use super::{Activation, AdamWStep, Backend, DropKey, EmbedSpec, EmbeddingWeights, PgdStep, TopkFlips};
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

/// The CPU backend: the f32 reference (the constant [`const@Cpu`]), or with bf16 GEMMs in its linear
/// layers and attention ([`Cpu::bf16`], `--precision bf16`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    bf16: bool,
}

/// The f32 reference backend.
#[allow(non_upper_case_globals)]
pub const Cpu: Cpu = Cpu { bf16: false };

impl Cpu {
    /// A CPU backend whose linear layers (forward `x·Wᵀ` and input gradient `dy·W`) and attention
    /// products (forward and backward) take bf16 inputs with f32 accumulation, the CUDA path's
    /// numerics; weight gradients, master weights and everything else stay f32. An error where the
    /// CPU lacks AVX512-BF16.
    pub fn bf16() -> Result<Cpu> {
        bf16::require()?;
        Ok(Cpu { bf16: true })
    }

    /// The precision of this backend's GEMMs.
    pub fn precision(&self) -> crate::backend::Precision {
        if self.bf16 {
            crate::backend::Precision::Bf16
        } else {
            crate::backend::Precision::F32
        }
    }
}

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
        spec: EmbedSpec,
        delta: Option<&Mat>,
    ) -> Result<Mat> {
        embedding::embed(batch, w, spec, delta)
    }

    fn linear(
        &self,
        x: &Mat,
        w: &Tensor,
        b: &Tensor,
        act: Activation,
        residual: Option<&Mat>,
    ) -> Result<Mat> {
        linear::linear(x, w, b, act, residual, self.bf16)
    }

    fn add(&self, a: &Mat, b: &Mat) -> Result<Mat> {
        elementwise::add(a, b)
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
        attention::attention(qkv, lens, seq, heads, dropout, self.bf16)
    }

    fn gather_rows(&self, x: &Mat, rows: &[usize]) -> Result<Mat> {
        elementwise::gather_rows(x, rows)
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
        linear::linear_backward(dy, x, w, grads, need_dx, self.bf16)
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
        spec: EmbedSpec,
        delta: Option<&Mat>,
        grads: Option<&mut EmbeddingWeights<Mat>>,
    ) -> Result<Mat> {
        embedding::embed_backward(dy, batch, w, spec, delta, grads)
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
        attention::attention_backward(dctx, qkv, lens, seq, heads, dropout, self.bf16)
    }

    fn scatter_rows(&self, dy: &Mat, rows: &[usize], total: usize) -> Result<Mat> {
        elementwise::scatter_rows(dy, rows, total)
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
        elementwise::add_assign(acc, x)
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
