//! AdpMixup's fused adapter interpolation (kernels/mix.cu).

use anyhow::Result;

use super::act_code;
use crate::backend::cuda::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::Activation;

/// AdpMixup's per-row blend of a stacked projection (kernels/mix.cu): `out[r, j] =
/// act(Σᵢ beta[r·m + i]·y[r, i·n + j]) + residual[r, j]` for `rows` rows (shapes checked by the
/// caller).
#[allow(clippy::too_many_arguments)]
pub fn adapter_mix(
    exec: &dyn Executor,
    out: &DevBuf,
    y: &DevBuf,
    beta: &DevBuf,
    residual: Option<&DevBuf>,
    (rows, n, m): (usize, usize, usize),
    act: Activation,
) -> Result<()> {
    let args = Args::new().buf(out).buf(y).buf(beta);
    let args = match residual {
        Some(r) => args.buf(r),
        None => args.ptr(0),
    };
    // SAFETY: adapter_mix_bf16(out, y, beta, residual or null, n, m, act); m floats of shared
    // memory.
    unsafe {
        args.i32(n as i32).i32(m as i32).i32(act_code(act)).launch(
            exec,
            "adapter_mix_bf16",
            Launch::linear(rows as u32, 128, (m * 4) as u32),
        )
    }
}
