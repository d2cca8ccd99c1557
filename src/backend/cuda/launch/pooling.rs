//! Mean pooling + L2 normalisation (kernels/pooling.cu).

use anyhow::Result;

use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};

/// Mean over the valid rows of each of `batch` sequences, then L2 normalisation.
pub fn mean_pool_l2(
    exec: &dyn Executor,
    out: &DevBuf,
    x: &DevBuf,
    lens: &DevBuf,
    batch: usize,
    seq: usize,
    cols: usize,
) -> Result<()> {
    // SAFETY: mean_pool_l2_bf16(out, x, lens, seq, cols); 256 threads → 8 partial sums.
    unsafe {
        Args::new().buf(out).buf(x).buf(lens).i32(seq as i32).i32(cols as i32).launch(
            exec,
            "mean_pool_l2_bf16",
            Launch::linear(batch as u32, 256, (4 * cols + 32) as u32),
        )
    }
}
