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

/// Host-side bf16 bits: round-to-nearest-even like `__float2bfloat16_rn` (NaN → 0x7fff).
pub mod bf16 {
    pub fn from_f32(f: f32) -> u16 {
        let u = f.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return 0x7fff;
        }
        ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
    }

    pub fn to_f32(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    pub fn from_slice(x: &[f32]) -> Vec<u16> {
        x.iter().map(|&v| from_f32(v)).collect()
    }

    pub fn to_vec(h: &[u16]) -> Vec<f32> {
        h.iter().map(|&v| to_f32(v)).collect()
    }

    #[cfg(test)]
    mod tests {
        /// Against the `half` crate's independent round-to-nearest-even (NaN payloads aside): the
        /// kernels' emulator uses the same rule as `from_f32`, and the GPU check compares the device's
        /// rounding with it bit for bit.
        #[test]
        fn rounding_matches_the_half_crate() {
            let mut x = 0x1234_5678_9abc_def0u64;
            let edges = [
                0u32,
                0x8000_0000,
                0x3f80_8000,
                0x3f81_8000,
                0x0000_8000,
                0x7f7f_ffff,
                0x7f80_0000,
                0xff80_0000,
            ];
            let randoms = (0..1_000_000).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u32
            });
            for bits in edges.into_iter().chain(randoms) {
                let f = f32::from_bits(bits);
                let want = half::bf16::from_f32(f);
                let got = super::from_f32(f);
                if f.is_nan() {
                    assert!(super::to_f32(got).is_nan() && want.is_nan());
                } else {
                    assert_eq!(got, want.to_bits(), "bf16({bits:#010x})");
                }
            }
        }
    }
}
