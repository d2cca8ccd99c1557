//! The CUDA backend: admix's transformer in hand-written kernels (kernels/*.cu), bf16 storage with
//! f32 accumulation and statistics.
//!
//! Device memory, layouts, launch shapes and the op set are written once here; every launch goes
//! to an [`Executor`]: the GPU ([`gpu::Gpu`], the fatbins nvcc built) or the SIMT emulator
//! ([`emu::Emu`], the same kernel source compiled as C++ and run on the CPU), so the whole CUDA
//! path runs in `cargo test` on machines without a GPU.

pub mod checks;
pub mod conformance;
pub mod cublas;
pub mod emu;
pub mod executor;
pub mod gpu;
pub mod launch;
pub mod ops;
pub mod tensor;

use std::sync::Arc;

use anyhow::Result;

pub use executor::{Args, DevBuf, DevPtr, Executor, Launch};

/// The CUDA backend over one executor.
pub struct Cuda {
    exec: Arc<dyn Executor>,
    label: &'static str,
    /// fill every new activation with 0xff (NaN) so that unwritten outputs show (the emulator
    /// poisons every allocation anyway)
    poison: bool,
}

impl Cuda {
    /// The backend on GPU `ordinal`; a clear error where there is none (or no kernels were built).
    pub fn gpu(ordinal: usize) -> Result<Self> {
        Ok(Cuda { exec: Arc::new(gpu::Gpu::open(ordinal)?), label: "cuda", poison: false })
    }

    /// The backend on the SIMT emulator (the CPU runs the kernels).
    pub fn emulator() -> Result<Self> {
        Ok(Cuda { exec: Arc::new(emu::Emu::new()?), label: "emu", poison: false })
    }

    /// The backend on any executor (tests pick the emulator's schedule this way).
    pub fn with_executor(exec: Arc<dyn Executor>, label: &'static str) -> Self {
        Cuda { exec, label, poison: false }
    }

    /// The same backend, poisoning every new activation before a kernel writes it (checks).
    pub fn poisoned(self) -> Self {
        Cuda { poison: true, ..self }
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.exec
    }
}
