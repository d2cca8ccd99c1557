//! Dropout with the counter-based mask (kernels/dropout.cu).

use anyhow::Result;

use super::{dropout_args, elementwise};
use crate::backend::cuda::executor::{Args, DevBuf, Executor};
use crate::backend::DropKey;

/// Dropout in place with the counter-based mask of `drop` (the CPU backend's mask).
pub fn dropout(exec: &dyn Executor, x: &DevBuf, n: usize, drop: DropKey) -> Result<()> {
    let (_, threshold, _) = dropout_args(Some(drop));
    // SAFETY: dropout_bf16(x, n, key, threshold, scale).
    unsafe {
        Args::new().buf(x).u64(n as u64).u64(drop.key).u64(threshold).f32(drop.scale()).launch(
            exec,
            "dropout_bf16",
            elementwise(n),
        )
    }
}
