//! The op set: the contract between the model orchestration (`model::bert`) and the backends.
//!
//! Ops are coarse on purpose (fused epilogues, fused attention) because that is what a GPU backend
//! wins by. The CPU backend is the f32 reference; the CUDA backend (kernels/) implements the same
//! trait, once, over two executors (the GPU and the SIMT emulator).

pub mod bf16;
pub mod cpu;
pub mod cuda;
pub mod shapes;
mod tokens;

use anyhow::Result;

pub use self::tokens::TokenBatch;
use crate::rng::mix64;
use crate::weights::Tensor;

/// Where the model runs: `cpu` (the f32 reference backend), `cuda` (the kernels on a GPU) or `emu`
/// (the same kernels on the SIMT emulator: slow, for testing without a GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Emu,
}

impl Device {
    /// The backend on this device computing its GEMMs at `precision` (`None`: the device's own,
    /// f32 on the CPU and bf16 on CUDA); a clear error where there is no GPU (or no kernels were
    /// built), for bf16 on a CPU without AVX512-BF16, and for f32 on CUDA. The one place a device
    /// becomes a backend: code generic over [`Backend`] runs on the result through
    /// [`with_backend!`](crate::with_backend).
    pub fn open(self, precision: Option<Precision>) -> anyhow::Result<AnyBackend> {
        Ok(match (self, precision) {
            (Device::Cpu, None | Some(Precision::F32)) => AnyBackend::Cpu(cpu::Cpu),
            (Device::Cpu, Some(Precision::Bf16)) => AnyBackend::Cpu(cpu::Cpu::bf16()?),
            (Device::Cuda | Device::Emu, Some(Precision::F32)) => anyhow::bail!(
                "precision f32 is the CPU's: the CUDA kernels compute in bf16 with f32 accumulation \
                 (use --device cpu, or --precision bf16)"
            ),
            (Device::Cuda, _) => AnyBackend::Cuda(cuda::Cuda::gpu(0)?),
            (Device::Emu, _) => AnyBackend::Cuda(cuda::Cuda::emulator()?),
        })
    }
}

/// The arithmetic of the GEMMs: `f32` (the CPU reference, which matches PyTorch to ~1e-7) or `bf16`
/// (inputs rounded to bf16, products accumulated in f32: the CUDA kernels' numerics, and the CPU's
/// on AVX512-BF16, at twice the f32 rate). Everything outside the GEMMs stays f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

impl crate::Choice for Precision {
    const WHAT: &'static str = "precision";
    const ALL: &'static [Self] = &[Precision::F32, Precision::Bf16];
    fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// A backend of either kind, as [`Device::open`] made it.
pub enum AnyBackend {
    Cpu(cpu::Cpu),
    Cuda(cuda::Cuda),
}

/// Runs `$body` with `$be` bound to the backend inside an [`AnyBackend`] (the body is compiled once
/// per backend type): `with_backend!(device.open(precision)?, be => run(&be, ...))`.
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $be:ident => $body:expr) => {
        match $any {
            $crate::backend::AnyBackend::Cpu($be) => $body,
            $crate::backend::AnyBackend::Cuda($be) => $body,
        }
    };
}

impl crate::Choice for Device {
    const WHAT: &'static str = "device";
    const ALL: &'static [Self] = &[Device::Cpu, Device::Cuda, Device::Emu];
    fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Emu => "emu",
        }
    }
}

/// Element-wise function applied in a linear layer's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// How the embedding layer numbers the tokens of a sequence (valid tokens first, then pads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// BERT: token `s` reads position row `s`.
    Absolute,
    /// RoBERTa: a token reads row `padding_idx + 1 + s`, a pad (id `padding_idx`) row
    /// `padding_idx` — Hugging Face's `create_position_ids_from_input_ids` for rows whose
    /// tokens come before their pads.
    AfterPadding { padding_idx: u32 },
}

impl Positions {
    /// The position-table row of token `s` (id `id`) of a sequence.
    pub fn row(self, id: u32, s: usize) -> usize {
        match self {
            Positions::Absolute => s,
            Positions::AfterPadding { padding_idx } if id == padding_idx => padding_idx as usize,
            Positions::AfterPadding { padding_idx } => padding_idx as usize + 1 + s,
        }
    }

    /// How many table rows sequences of `seq` tokens may read.
    pub fn rows_needed(self, seq: usize) -> usize {
        match self {
            Positions::Absolute => seq,
            Positions::AfterPadding { padding_idx } => padding_idx as usize + 1 + seq,
        }
    }

    /// The kernels' encoding: `-1` for absolute positions, else `padding_idx`.
    pub fn kernel_arg(self) -> i32 {
        match self {
            Positions::Absolute => -1,
            Positions::AfterPadding { padding_idx } => padding_idx as i32,
        }
    }
}

/// What the embedding layer computes besides its tables: the positions' numbering and the
/// LayerNorm's eps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbedSpec {
    pub positions: Positions,
    pub eps: f32,
}

impl EmbedSpec {
    /// BERT's numbering with LayerNorm eps `eps`.
    pub fn absolute(eps: f32) -> Self {
        EmbedSpec { positions: Positions::Absolute, eps }
    }
}

/// Dropout at one site of one step: element `i` of the site is kept iff `hash(key, i) >= p·2³²`,
/// and kept elements are scaled by `1/(1-p)`. The mask is a pure function of `(key, i)`
/// (counter-based), so a backward pass regenerates it instead of storing it, and every backend
/// draws the same mask for the same key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropKey {
    pub p: f32,
    pub key: u64,
}

impl DropKey {
    /// The key of dropout site `site` at optimizer step `step` of a run seeded with `seed`.
    pub fn new(p: f32, seed: u64, step: u64, site: u64) -> Self {
        DropKey { p, key: mix64(mix64(seed ^ 0x5EED) ^ mix64(step).rotate_left(17) ^ site) }
    }

    /// Whether element `i` survives.
    #[inline(always)]
    pub fn keep(&self, i: u64) -> bool {
        let h = mix64(self.key ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32;
        h >= self.threshold()
    }

    /// The least 32-bit hash that survives, `⌈p·2³²⌉` (a hash is an integer: `h ≥ p·2³²` iff
    /// `h ≥ ⌈p·2³²⌉`), so that the test is an integer compare.
    #[inline(always)]
    pub fn threshold(&self) -> u64 {
        (self.p as f64 * 4_294_967_296.0).ceil() as u64
    }

    /// The factor applied to kept elements.
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }
}

/// One AdamW update with torch semantics (decoupled weight decay, bias-corrected moments).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step number (for the bias corrections)
    pub step: u64,
    /// factor the gradient is multiplied by first (gradient-norm clipping)
    pub grad_scale: f32,
}

/// The scalars of one AdamW step, formed once for every backend (the CPU loop and the CUDA kernel
/// take the same values, so their updates agree to the last bit of the factors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWFactors {
    /// `lr / (1 − β₁ᵗ)`
    pub step_size: f32,
    /// `√(1 − β₂ᵗ)`
    pub bc2_sqrt: f32,
    /// `1 − lr·wd` (decoupled weight decay)
    pub decay: f32,
}

impl AdamWStep {
    /// The bias corrections in f64, rounded once to f32, in torch's order of operations.
    pub fn factors(&self) -> AdamWFactors {
        let t = self.step as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        AdamWFactors {
            step_size: (self.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: 1.0 - self.lr * self.weight_decay,
        }
    }
}

/// The ball of an embedding-space attack's perturbation, per sequence over its valid rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    /// `‖δ‖₂ = sqrt(Σ δ²)`
    L2,
    /// `‖δ‖∞ = max |δ|`
    Linf,
}

impl crate::Choice for Norm {
    const WHAT: &'static str = "norm";
    const ALL: &'static [Self] = &[Norm::L2, Norm::Linf];
    fn name(self) -> &'static str {
        match self {
            Norm::L2 => "l2",
            Norm::Linf => "linf",
        }
    }
}

/// One projected ascent step on the word-row perturbation δ (docs/attacks.md): L∞:
/// `δ ← clip(δ + α·sign(g), −ε, ε)`; L2: `δ ← δ + α·g/‖g‖₂`, then rescaled to `‖δ‖₂ ≤ ε`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgdStep {
    pub norm: Norm,
    /// step size α
    pub alpha: f32,
    /// ball radius ε
    pub eps: f32,
}

/// HotFlip's masked top-k over the scoring GEMM's output (see [`Backend::topk_flips`]).
#[derive(Clone, Copy, Debug)]
pub struct TopkFlips<'a> {
    pub sites: usize,
    /// `g_i·e_i` of each site (the gain is `(G·Eᵀ)[i][v] − base[i]`)
    pub base: &'a [f32],
    /// the token at each site (never its own replacement)
    pub old: &'a [u32],
    /// `‖e_i‖` of each site's token
    pub old_norm: &'a [f32],
    /// `‖E[v]‖` of every vocabulary entry
    pub norms: &'a [f32],
    /// entries that may be flipped in
    pub allowed: &'a [bool],
    /// least cosine between the new and the old token's embedding
    pub min_cos: f32,
    /// flips per site, at most [`TOPK_MAX`]
    pub k: usize,
}

/// The most flips per site [`Backend::topk_flips`] returns (kernels/attack.cu's TOPK_MAX).
pub const TOPK_MAX: usize = 32;

/// Work to time (it queues ops), or to run untimed ahead of each timed run: see
/// [`Backend::time_runs`].
pub type Work<'a> = &'a mut dyn FnMut() -> Result<()>;

/// [`Backend::time_runs`] by the host clock, `sync` after each run.
pub fn host_time_runs(
    warmup: usize,
    reps: usize,
    before: Work,
    f: Work,
    sync: &dyn Fn() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    sync()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        before()?;
        sync()?;
        let t = std::time::Instant::now();
        f()?;
        sync()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ms)
}

/// A backend: where activations live and how each op runs.
pub trait Backend {
    /// An activation matrix `[rows, cols]`, row-major.
    type Act: Clone;
    /// A parameter tensor resident on the backend.
    type Weight;

    fn name(&self) -> &'static str;
    /// Waits for every queued op (a no-op where ops run synchronously); a fault in an earlier op
    /// is reported here.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Milliseconds of each of `reps` runs of `f` (which queues work) after `warmup` untimed runs;
    /// `before` runs ahead of each run, untimed (e.g. a cache flush). Host clock around `f` and a
    /// [`Backend::synchronize`]; the GPU times with events instead.
    fn time_runs(&self, warmup: usize, reps: usize, before: Work, f: Work) -> Result<Vec<f64>> {
        host_time_runs(warmup, reps, before, f, &|| self.synchronize())
    }
    /// Makes a host tensor available to the backend (zero-copy where it can).
    fn weight(&self, t: &Tensor) -> Result<Self::Weight>;
    /// An activation matrix from host data.
    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Act>;
    /// A gradient or optimizer-state matrix from host data (e.g. AdamW moments on resume): the
    /// precision of [`Backend::zeros`], which backends with narrow activations keep wider.
    fn upload_state(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Act> {
        self.upload(rows, cols, data)
    }
    /// Copies an activation back to the host, with its shape `(rows, cols)`.
    fn download(&self, x: &Self::Act) -> Result<(usize, usize, Vec<f32>)>;

    /// `LN(word[id] + δ + position[p] + token_type[tt])` for every token of the batch, `p` as
    /// `spec.positions` numbers it: `[B*S, H]`. `delta` (`[B*S, H]`, in [`Backend::zeros`]'
    /// precision) is an attack's perturbation of the word rows; `None` is δ = 0.
    fn embed(
        &self,
        batch: &TokenBatch,
        w: &EmbeddingWeights<Self::Weight>,
        spec: EmbedSpec,
        delta: Option<&Self::Act>,
    ) -> Result<Self::Act>;
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
    /// With `dropout`, attention probabilities are dropped (element index `((b·heads + h)·seq + i)·seq + j`).
    fn attention(
        &self,
        qkv: &Self::Act,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<Self::Act>;
    /// The per-row blend of a stacked projection, the step that makes per-sample adapter mixing
    /// exact (docs/mixup.md): `y` is `[rows, m·n]`, the outputs of `m` projections side by side
    /// (one GEMM with the `m` weight matrices stacked); `beta` is `[rows, m]`, row-major. Returns
    /// `act(Σᵢ beta[r,i]·y[r, i·n + j]) + residual[r, j]`, `[rows, n]`.
    fn mix_rows(
        &self,
        y: &Self::Act,
        m: usize,
        beta: &[f32],
        act: Activation,
        residual: Option<&Self::Act>,
    ) -> Result<Self::Act>;
    /// Rows `rows[i]` of `x`, e.g. the [CLS] rows `b*S`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act>;
    /// Mean over the valid tokens of each sequence, then L2 normalisation: `[B, H]`.
    fn mean_pool_l2(&self, x: &Self::Act, lens: &[usize], seq: usize) -> Result<Self::Act>;

    /// `dropout(x)` (element index `row·cols + col`), in `x`'s buffer. Dropout is linear, so the
    /// same call with the same key is also its backward.
    fn dropout(&self, x: Self::Act, drop: DropKey) -> Result<Self::Act>;
    /// `act(x)`, element-wise (training keeps the pre-activation for the backward pass).
    fn activation(&self, x: &Self::Act, act: Activation) -> Result<Self::Act>;

    // ---- backward ops, each the adjoint of the forward op above of the same name ----
    // Parameter gradients are *accumulated* into `[out, in]` / `[1, n]` matrices.

    /// `dx = dy ⊙ act'(pre)`, computed in `dy`'s buffer.
    fn activation_backward(&self, dy: Self::Act, pre: &Self::Act, act: Activation) -> Result<Self::Act>;
    /// Backward of `x·Wᵀ + b` (activation and residual are handled by the caller):
    /// `dW += dyᵀ·x`, `db += Σ_rows dy` when `grads` is given; returns `dx = dy·W` when `need_dx`.
    fn linear_backward(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        w: &Self::Weight,
        grads: Option<(&mut Self::Act, &mut Self::Act)>,
        need_dx: bool,
    ) -> Result<Option<Self::Act>>;
    /// Backward of LayerNorm given its input `x`: returns `dx`, accumulates `dγ, dβ` when asked.
    fn layernorm_backward(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        gamma: &Self::Weight,
        eps: f32,
        grads: Option<(&mut Self::Act, &mut Self::Act)>,
    ) -> Result<Self::Act>;
    /// Backward of [`Backend::embed`] (with the forward's `delta`): returns the gradient w.r.t. the
    /// word-embedding rows looked up, which is also the gradient w.r.t. δ (`[B*S, H]`, before
    /// position/type embeddings and the LayerNorm); with `grads`, accumulates into the word,
    /// position and token-type tables and the LayerNorm parameters.
    #[allow(clippy::too_many_arguments)]
    fn embed_backward(
        &self,
        dy: &Self::Act,
        batch: &TokenBatch,
        w: &EmbeddingWeights<Self::Weight>,
        spec: EmbedSpec,
        delta: Option<&Self::Act>,
        grads: Option<&mut EmbeddingWeights<Self::Act>>,
    ) -> Result<Self::Act>;
    /// Backward of [`Backend::attention`] (recomputes the probabilities): `dqkv` `[B*S, 3H]`.
    fn attention_backward(
        &self,
        dctx: &Self::Act,
        qkv: &Self::Act,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<Self::Act>;
    /// Backward of [`Backend::gather_rows`]: a `[total, cols]` matrix with `dy`'s rows at `rows`.
    fn scatter_rows(&self, dy: &Self::Act, rows: &[usize], total: usize) -> Result<Self::Act>;
    /// Mean cross-entropy of `logits` `[B, C]` against `labels`, and its gradient w.r.t. the logits.
    fn cross_entropy(&self, logits: &Self::Act, labels: &[u32]) -> Result<(f32, Self::Act)>;

    // ---- buffers and the optimizer ----

    /// A zero matrix (e.g. a gradient buffer).
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Act>;
    /// A zero gradient buffer for `w`: `[shape[0], rest]`, or `[1, n]` for a vector.
    fn zeros_like(&self, w: &Self::Weight) -> Result<Self::Act>;
    /// Sets every element to zero (gradient buffers are reused across steps).
    fn fill_zero(&self, x: &mut Self::Act) -> Result<()>;
    /// `acc += x`
    fn add_assign(&self, acc: &mut Self::Act, x: &Self::Act) -> Result<()>;
    /// `Σ x²` in f64 (gradient norms).
    fn sum_squares(&self, x: &Self::Act) -> Result<f64>;
    /// One AdamW update of `param` from `grad`, with moment buffers `m`, `v`.
    fn adamw(
        &self,
        param: &mut Self::Weight,
        grad: &Self::Act,
        m: &mut Self::Act,
        v: &mut Self::Act,
        h: &AdamWStep,
    ) -> Result<()>;
    /// Copies a backend weight to a host tensor (checkpoints).
    fn weight_to_host(&self, w: &Self::Weight) -> Result<Tensor>;

    // ---- attack steps ----

    /// One PGD step on `delta` (`[B*S, H]`, [`Backend::zeros`]' precision) from `grad`, the
    /// gradient w.r.t. the word rows ([`Backend::embed_backward`]'s result), per sequence over its
    /// `lens[b]` valid rows; pad rows of `delta` are set to zero.
    fn pgd_step(
        &self,
        delta: &mut Self::Act,
        grad: &Self::Act,
        lens: &[usize],
        seq: usize,
        step: &PgdStep,
    ) -> Result<()>;
    /// HotFlip's masked top-k: `prod` is `[2·sites, V]`, the gradient rows' products with the
    /// word table (`G·Eᵀ`) over the looked-up rows' (`e·Eᵀ`). For each site, the `k` entries `v`
    /// with the largest gain `prod[i][v] − base[i]` among the allowed ones, `v ≠ old[i]`, with
    /// `prod[sites+i][v] / (old_norm[i]·norms[v]) ≥ min_cos`: `(v, gain)`, best first, ties to the
    /// smaller `v`.
    fn topk_flips(&self, prod: &Self::Act, q: &TopkFlips) -> Result<Vec<Vec<(u32, f32)>>>;
}
