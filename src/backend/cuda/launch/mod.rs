//! One function per kernel: its launch configuration (grid, block, shared memory) and argument
//! list, on caller-owned buffers, in one file per kernel family: `launch/X.rs` launches the kernels
//! of `kernels/X.cu`, the CPU reference of the same ops is `cpu/X.rs`, and the kernel check of the
//! family is named `X` in checks.rs. The op set (ops.rs) allocates outputs and calls these; the
//! GPU check times them on preallocated buffers. Written once for both executors.

mod activation;
mod attack;
mod attention;
mod dropout;
mod elementwise;
mod embedding;
mod layernorm;
mod linear;
mod mix;
mod optim;
mod pooling;

pub use self::activation::*;
pub use self::attack::*;
pub use self::attention::*;
pub use self::dropout::*;
pub use self::elementwise::*;
pub use self::embedding::*;
pub use self::layernorm::*;
pub use self::linear::*;
pub use self::mix::*;
pub use self::optim::*;
pub use self::pooling::*;

use super::executor::Launch;
use crate::backend::{Activation, DropKey};

/// Row kernels (LayerNorm, embedding) put one warp on a row, 4 rows per block.
const ROWS_PER_BLOCK: usize = 4;

/// `Activation` as the kernels' code (kernels/activation.cuh).
fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Identity => 0,
        Activation::Gelu => 1,
        Activation::Relu => 2,
        Activation::Tanh => 3,
        Activation::Silu => 4,
    }
}

fn elementwise(n: usize) -> Launch {
    Launch::linear(n.div_ceil(256).min(65_535) as u32, 256, 0)
}

/// The dropout arguments of the kernels (attention, dropout): (key, threshold = ceil(p·2³²), 1/(1−p)).
fn dropout_args(drop: Option<DropKey>) -> (u64, u64, f32) {
    match drop {
        Some(k) => (k.key, k.threshold(), k.scale()),
        None => (0, 0, 1.0),
    }
}
