//! Element-wise activations and their derivatives.

use rayon::prelude::*;

use super::{math, Mat};
use crate::backend::Activation;

/// Elements per rayon task for element-wise loops.
const CHUNK: usize = 1 << 14;

pub fn apply_activation(act: Activation, xs: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Gelu => math::gelu_inplace(xs),
        Activation::Relu => math::relu_inplace(xs),
        Activation::Tanh => math::tanh_inplace(xs),
        Activation::Silu => math::silu_inplace(xs),
    }
}

pub fn activation(x: &Mat, act: Activation) -> Mat {
    let mut out = x.clone();
    out.data.par_chunks_mut(CHUNK).for_each(|c| apply_activation(act, c));
    out
}

/// `act'(x)`.
#[inline(always)]
fn derivative(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Identity => 1.0,
        // d/dx x·Φ(x) = Φ(x) + x·φ(x)
        Activation::Gelu => {
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            0.5 * (1.0 + math::erf(x * std::f32::consts::FRAC_1_SQRT_2))
                + x * INV_SQRT_2PI * math::exp(-0.5 * x * x)
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Tanh => {
            let t = math::tanh(x);
            1.0 - t * t
        }
        // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x)))
        Activation::Silu => {
            let s = 1.0 / (1.0 + math::exp(-x));
            s * (1.0 + x * (1.0 - s))
        }
    }
}

pub fn activation_backward(dy: &Mat, pre: &Mat, act: Activation) -> Mat {
    let mut dx = dy.clone();
    dx.data.par_chunks_mut(CHUNK).zip(pre.data.par_chunks(CHUNK)).for_each(|(d, p)| {
        for (d, &p) in d.iter_mut().zip(p) {
            *d *= derivative(act, p);
        }
    });
    dx
}
