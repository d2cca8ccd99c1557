//! The op set: the contract between the model orchestration (`model::bert`) and the backends.
//!
//! Ops are coarse on purpose (fused epilogues, fused attention) because that is what a GPU backend
//! wins by. The CPU backend is the f32 reference; the CUDA backend (kernels/) implements the same
//! trait, once, over two executors (the GPU and the SIMT emulator).

pub mod cpu;

use anyhow::Result;

use crate::model::tokenizer::TokenBatch;
use crate::model::weights::Tensor;

/// Element-wise function applied in a linear layer's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// exact erf GELU, as BERT's `gelu`
    Gelu,
    Relu,
    Tanh,
    /// SiLU / swish
    Silu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "identity" | "linear" | "none" => Activation::Identity,
            "gelu" | "gelu_new" | "gelu_orig" => Activation::Gelu,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// Word, position and token-type embeddings with their LayerNorm.
pub struct EmbeddingWeights<W> {
    pub word: W,
    pub position: W,
    pub token_type: W,
    pub ln_gamma: W,
    pub ln_beta: W,
}

/// A backend: where activations live and how each op runs.
pub trait Backend {
    /// An activation matrix `[rows, cols]`, row-major.
    type Act;
    /// A parameter tensor resident on the backend.
    type Weight;

    fn name(&self) -> &'static str;
    /// Makes a host tensor available to the backend (zero-copy where it can).
    fn weight(&self, t: &Tensor) -> Result<Self::Weight>;
    /// Copies an activation back to the host, with its shape `(rows, cols)`.
    fn download(&self, x: &Self::Act) -> Result<(usize, usize, Vec<f32>)>;

    /// `LN(word[id] + position[s] + token_type[tt])` for every token of the batch: `[B*S, H]`.
    fn embed(&self, batch: &TokenBatch, w: &EmbeddingWeights<Self::Weight>, eps: f32) -> Result<Self::Act>;
    /// `act(x·Wᵀ + b) + residual`, with `W` stored `[out, in]` as in PyTorch.
    fn linear(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        b: &Self::Weight,
        act: Activation,
        residual: Option<&Self::Act>,
    ) -> Result<Self::Act>;
    /// `a + b`
    fn add(&self, a: &Self::Act, b: &Self::Act) -> Result<Self::Act>;
    /// Row-wise LayerNorm.
    fn layernorm(
        &self,
        x: &Self::Act,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        eps: f32,
    ) -> Result<Self::Act>;
    /// Multi-head self-attention on a fused `[B*S, 3H]` QKV projection; keys at positions
    /// `>= lens[b]` are masked. Returns the context `[B*S, H]`.
    fn attention(&self, qkv: &Self::Act, lens: &[usize], seq: usize, heads: usize) -> Result<Self::Act>;
    /// Rows `rows[i]` of `x`, e.g. the [CLS] rows `b*S`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act>;
    /// Mean over the valid tokens of each sequence, then L2 normalisation: `[B, H]`.
    fn mean_pool_l2(&self, x: &Self::Act, lens: &[usize], seq: usize) -> Result<Self::Act>;
}
