//! Activations and their backward (kernels/activation.cu).

use anyhow::Result;

use super::{act_code, elementwise};
use crate::backend::cuda::executor::{Args, DevBuf, Executor};
use crate::backend::Activation;

/// `out = act(x)` over `n` elements.
pub fn activation(exec: &dyn Executor, out: &DevBuf, x: &DevBuf, n: usize, act: Activation) -> Result<()> {
    // SAFETY: activation_bf16(out, x, n, act).
    unsafe {
        Args::new().buf(out).buf(x).u64(n as u64).i32(act_code(act)).launch(
            exec,
            "activation_bf16",
            elementwise(n),
        )
    }
}

/// `dy ← dy·act'(pre)` in place over `n` elements.
pub fn activation_backward(
    exec: &dyn Executor,
    dy: &DevBuf,
    pre: &DevBuf,
    n: usize,
    act: Activation,
) -> Result<()> {
    // SAFETY: activation_backward_bf16(dy, pre, n, act).
    unsafe {
        Args::new().buf(dy).buf(pre).u64(n as u64).i32(act_code(act)).launch(
            exec,
            "activation_backward_bf16",
            elementwise(n),
        )
    }
}
