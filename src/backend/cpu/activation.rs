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
    let mut out = Mat::zeros(x.rows, x.cols);
    out.data.par_chunks_mut(CHUNK).zip(x.data.par_chunks(CHUNK)).for_each(|(o, x)| match act {
        Activation::Identity => o.copy_from_slice(x),
        Activation::Gelu => math::gelu_to(o, x),
        Activation::Relu => math::relu_to(o, x),
        Activation::Tanh => math::tanh_to(o, x),
        Activation::Silu => math::silu_to(o, x),
    });
    out
}

pub fn activation_backward(dy: Mat, pre: &Mat, act: Activation) -> Mat {
    let mut dx = dy;
    dx.data.par_chunks_mut(CHUNK).zip(pre.data.par_chunks(CHUNK)).for_each(|(d, p)| match act {
        Activation::Identity => {}
        Activation::Gelu => math::gelu_backward(d, p),
        Activation::Relu => math::relu_backward(d, p),
        Activation::Tanh => math::tanh_backward(d, p),
        Activation::Silu => math::silu_backward(d, p),
    });
    dx
}
