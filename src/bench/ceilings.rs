//! The two ceilings a roofline is built from, measured on the device (never datasheet numbers):
//! memory bandwidth by a large copy (bytes read + written), and arithmetic rate by a large GEMM
//! through the best library there is (cuBLAS on a GPU; the CPU backend's own GEMM on the CPU: the
//! `gemm` crate in f32, admix's AVX512-BF16 kernel in bf16). Each is the fastest of its runs: the
//! best the device reached.

use anyhow::Result;
use serde::Serialize;

use super::stats;
use crate::backend::cuda::{cublas::Cublas, Cuda, DevBuf};
use crate::backend::{Activation, Backend, Precision};
use crate::weights::Tensor;
use crate::Choice;

#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    pub copy_bytes_per_s: f64,
    pub copy: String,
    pub gemm_flops_per_s: f64,
    pub gemm: String,
}

impl Ceilings {
    /// The better of two measurements of each ceiling (before and after the suites: a ceiling is
    /// the best the device reached, and a shared machine has slow moments).
    pub fn best_of(self, other: Ceilings) -> Ceilings {
        let (copy_bytes_per_s, copy) = if other.copy_bytes_per_s > self.copy_bytes_per_s {
            (other.copy_bytes_per_s, other.copy)
        } else {
            (self.copy_bytes_per_s, self.copy)
        };
        let (gemm_flops_per_s, gemm) = if other.gemm_flops_per_s > self.gemm_flops_per_s {
            (other.gemm_flops_per_s, other.gemm)
        } else {
            (self.gemm_flops_per_s, self.gemm)
        };
        Ceilings { copy_bytes_per_s, copy, gemm_flops_per_s, gemm }
    }
}

/// Deterministic values in [-1, 1) (never zeros: they time differently).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect()
}

/// The best rate of `x[m,k]·W[n,k]ᵀ` through `be.linear` over `reps` runs.
pub fn backend_gemm<B: Backend>(be: &B, (m, n, k): (usize, usize, usize), reps: usize) -> Result<f64> {
    let x = be.upload(m, k, &values(m * k, 1))?;
    let w = be.weight(&Tensor::from_vec(vec![n, k], values(n * k, 2)))?;
    let b = be.weight(&Tensor::from_vec(vec![n], vec![0.0; n]))?;
    let times = be.time_runs(1, reps, &mut || Ok(()), &mut || {
        be.linear(&x, &w, &b, Activation::Identity, None).map(drop)
    })?;
    Ok(2.0 * (m * n * k) as f64 / (best(times)? * 1e-3))
}

/// The fastest run: a ceiling is the best the device reached, not its typical time.
fn best(times: Vec<f64>) -> Result<f64> {
    Ok(stats(times)?.2)
}

/// The CPU: a host memcpy of `copy_mib` MiB split over the worker threads (the backend's ops run
/// on all of them), and the GEMM of side `gemm_n` at the backend's precision (f32: the gemm crate;
/// bf16: admix's AVX512-BF16 kernel).
pub fn cpu(cpu: &crate::backend::cpu::Cpu, copy_mib: usize, gemm_n: usize) -> Result<Ceilings> {
    use rayon::prelude::*;
    let bytes = copy_mib << 20;
    let src = vec![0x3cu8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes.div_ceil(rayon::current_num_threads()).next_multiple_of(4096);
    let times = crate::backend::host_time_runs(
        1,
        5,
        &mut || Ok(()),
        &mut || {
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
            Ok(())
        },
        &|| Ok(()),
    )?;
    std::hint::black_box(&dst);
    let copy = 2.0 * bytes as f64 / (best(times)? * 1e-3);
    // a copy's stores first read the lines they overwrite (write-allocate), traffic the count
    // leaves out; an in-place update (`a = a/2 + b`: read a and b, write a) has none, and is what
    // the element-wise kernels and AdamW do
    let n = bytes / 8;
    let mut a = vec![1.0f32; n];
    let b = vec![0.5f32; n];
    let chunk_f = n.div_ceil(rayon::current_num_threads()).next_multiple_of(1024);
    let times = crate::backend::host_time_runs(
        1,
        5,
        &mut || Ok(()),
        &mut || {
            a.par_chunks_mut(chunk_f).zip(b.par_chunks(chunk_f)).for_each(|(a, b)| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x = *x * 0.5 + y);
            });
            Ok(())
        },
        &|| Ok(()),
    )?;
    std::hint::black_box(&a);
    let update = 3.0 * (4 * n) as f64 / (best(times)? * 1e-3);
    // the library's rate depends on the shape's fit to its blocking: the best of a square and
    // a BERT FFN shape
    let shapes = [(gemm_n, gemm_n, gemm_n), (2 * gemm_n, 3 * gemm_n / 4, 3 * gemm_n / 16)];
    let mut gemm: f64 = 0.0;
    for s in shapes {
        gemm = gemm.max(backend_gemm(cpu, s, 5)?);
    }
    Ok(Ceilings {
        copy_bytes_per_s: copy.max(update),
        copy: format!(
            "the larger of a {copy_mib} MiB memcpy ({:.1} GB/s, read + write) and an in-place a = a/2 + b over \
             2 × {} MiB ({:.1} GB/s, 2 reads + 1 write)",
            copy / 1e9,
            copy_mib / 2,
            update / 1e9
        ),
        gemm_flops_per_s: gemm,
        gemm: format!(
            "{} GEMM, the better of {gemm_n}³ and {}×{}×{} ({})",
            cpu.precision().name(),
            2 * gemm_n,
            3 * gemm_n / 4,
            3 * gemm_n / 16,
            match cpu.precision() {
                Precision::F32 => "gemm crate",
                Precision::Bf16 => "admix's vdpbf16ps kernel",
            }
        ),
    })
}

/// A CUDA executor (GPU or emulator): a device-to-device copy of `copy_mib` MiB, and a bf16 GEMM
/// of side `gemm_n`: cuBLAS where it loads, else admix's own kernel.
pub fn cuda(be: &Cuda, copy_mib: usize, gemm_n: usize) -> Result<Ceilings> {
    let exec = be.executor();
    let bytes = copy_mib << 20;
    let (a, b) = (DevBuf::new(exec, bytes)?, DevBuf::new(exec, bytes)?);
    a.fill(0x3c)?;
    let times = exec.time_runs(1, 5, &mut || Ok(()), &mut || exec.dtod(b.ptr(), a.ptr(), bytes))?;
    let copy = 2.0 * bytes as f64 / (best(times)? * 1e-3);
    drop((a, b));
    let on_gpu = be.name() == "cuda";
    let (gemm, what) = match on_gpu.then(Cublas::open) {
        Some(Ok(cublas)) => {
            let n = gemm_n;
            let bits: Vec<u16> =
                values(n * n, 3).iter().map(|&v| crate::backend::bf16::from_f32(v)).collect();
            let (x, w) = (DevBuf::from_slice(exec, &bits)?, DevBuf::from_slice(exec, &bits)?);
            let y = DevBuf::new(exec, n * n * 2)?;
            let times = exec.time_runs(2, 10, &mut || Ok(()), &mut || cublas.gemm(&y, &x, &w, n, n, n))?;
            (2.0 * (n as f64).powi(3) / (best(times)? * 1e-3), format!("cuBLAS bf16 GEMM {n}³"))
        }
        other => {
            let why = match other {
                Some(Err(e)) => format!(" (no cuBLAS: {e:#})"),
                _ => String::new(),
            };
            (backend_gemm(be, (gemm_n, gemm_n, gemm_n), 5)?, format!("admix bf16 GEMM {gemm_n}³{why}"))
        }
    };
    Ok(Ceilings {
        copy_bytes_per_s: copy,
        copy: format!("device-to-device copy {copy_mib} MiB"),
        gemm_flops_per_s: gemm,
        gemm: what,
    })
}
