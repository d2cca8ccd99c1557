//! The two ceilings a roofline is built from, measured on the device (never datasheet numbers):
//! memory bandwidth by a large copy (bytes read + written), and arithmetic rate by a large GEMM
//! through the best library there is (cuBLAS on a GPU; the CPU backend's own GEMM, the `gemm`
//! crate, on the CPU).

use anyhow::Result;
use serde::Serialize;

use super::stats;
use crate::backend::cuda::{cublas::Cublas, Cuda, DevBuf};
use crate::backend::{Activation, Backend};
use crate::model::weights::Tensor;

#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    pub copy_bytes_per_s: f64,
    pub copy: String,
    pub gemm_flops_per_s: f64,
    pub gemm: String,
}

/// Deterministic values in [-1, 1) (never zeros: they time differently).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::train::rng::Rng::new(seed);
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect()
}

/// Median rate of a square GEMM of side `n` through `be.linear`.
pub fn backend_gemm<B: Backend>(be: &B, n: usize, reps: usize) -> Result<f64> {
    let x = be.upload(n, n, &values(n * n, 1))?;
    let w = be.weight(&Tensor::from_vec(vec![n, n], values(n * n, 2)))?;
    let b = be.weight(&Tensor::from_vec(vec![n], vec![0.0; n]))?;
    let times = be.time_runs(1, reps, &mut || Ok(()), &mut || {
        be.linear(&x, &w, &b, Activation::Identity, None).map(drop)
    })?;
    Ok(2.0 * (n as f64).powi(3) / (stats(times)?.0 * 1e-3))
}

/// The CPU: a host memcpy of `copy_mib` MiB, and the f32 GEMM of side `gemm_n`.
pub fn cpu(copy_mib: usize, gemm_n: usize) -> Result<Ceilings> {
    let bytes = copy_mib << 20;
    let src = vec![0x3cu8; bytes];
    let mut dst = vec![0u8; bytes];
    let times = crate::backend::host_time_runs(
        1,
        5,
        &mut || Ok(()),
        &mut || {
            dst.copy_from_slice(std::hint::black_box(&src));
            Ok(())
        },
        &|| Ok(()),
    )?;
    std::hint::black_box(&dst);
    let copy = 2.0 * bytes as f64 / (stats(times)?.0 * 1e-3);
    let gemm = backend_gemm(&crate::backend::cpu::Cpu, gemm_n, 5)?;
    Ok(Ceilings {
        copy_bytes_per_s: copy,
        copy: format!("memcpy {copy_mib} MiB"),
        gemm_flops_per_s: gemm,
        gemm: format!("f32 GEMM {gemm_n}³ (gemm crate)"),
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
    let copy = 2.0 * bytes as f64 / (stats(times)?.0 * 1e-3);
    drop((a, b));
    let on_gpu = be.name() == "cuda";
    let (gemm, what) = match on_gpu.then(Cublas::open) {
        Some(Ok(cublas)) => {
            let n = gemm_n;
            let bits: Vec<u16> =
                values(n * n, 3).iter().map(|&v| crate::backend::cuda::bf16::from_f32(v)).collect();
            let (x, w) = (DevBuf::from_slice(exec, &bits)?, DevBuf::from_slice(exec, &bits)?);
            let y = DevBuf::new(exec, n * n * 2)?;
            let times = exec.time_runs(2, 10, &mut || Ok(()), &mut || cublas.gemm(&y, &x, &w, n, n, n))?;
            (2.0 * (n as f64).powi(3) / (stats(times)?.0 * 1e-3), format!("cuBLAS bf16 GEMM {n}³"))
        }
        other => {
            let why = match other {
                Some(Err(e)) => format!(" (no cuBLAS: {e:#})"),
                _ => String::new(),
            };
            (backend_gemm(be, gemm_n, 5)?, format!("admix bf16 GEMM {gemm_n}³{why}"))
        }
    };
    Ok(Ceilings {
        copy_bytes_per_s: copy,
        copy: format!("device-to-device copy {copy_mib} MiB"),
        gemm_flops_per_s: gemm,
        gemm: what,
    })
}
