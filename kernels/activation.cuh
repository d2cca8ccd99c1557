// Element-wise activations shared by the GEMM epilogue and the element-wise kernels. The codes
// match `Activation` in src/backend/mod.rs (and `act_code` in src/backend/cuda/ops.rs).
#pragma once
#include "arch.cuh"

namespace admix {

enum Act : int { ACT_IDENTITY = 0, ACT_GELU = 1, ACT_RELU = 2, ACT_TANH = 3, ACT_SILU = 4 };

__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
        case ACT_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));  // exact (erf) GELU
        case ACT_RELU: return fmaxf(x, 0.f);
        case ACT_TANH: return tanhf(x);
        case ACT_SILU: return x / (1.f + expf(-x));
        default: return x;
    }
}

// d act(x) / dx, as the CPU backend's math::*_backward.
__device__ __forceinline__ float activate_grad(float x, int act) {
    switch (act) {
        case ACT_GELU: {
            const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
            return cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
        }
        case ACT_RELU: return x > 0.f ? 1.f : 0.f;
        case ACT_TANH: {
            const float t = tanhf(x);
            return 1.f - t * t;
        }
        case ACT_SILU: {
            const float s = 1.f / (1.f + expf(-x));
            return s * (1.f + x * (1.f - s));
        }
        default: return 1.f;
    }
}

}  // namespace admix
