// The optimizer: the gradient norm (for clipping) and one AdamW step on f32 master weights.
// Grid-stride loops of 256-thread blocks.
#include "arch.cuh"

using namespace admix;

// Per-block partial sums of squares (f64) of n values, f32 (is_f32) or bf16; the host adds the
// partials. grid ≤ 1024 blocks of 256 threads; partial[blockIdx.x].
extern "C" __global__ void sum_squares_partial(double* partial, const void* x, long long n, int is_f32) {
    double s = 0.0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float v = is_f32 ? static_cast<const float*>(x)[i] : to_f32(static_cast<const bf16*>(x)[i]);
        s += (double)v * v;
    }
    __shared__ double warp_sums[8];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane_id() == 0) warp_sums[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++) t += warp_sums[w];
        partial[blockIdx.x] = t;
    }
}

// One AdamW step (torch's order of operations, as the CPU backend) on f32 master weights, refreshing
// their bf16 copy: g ← grad·grad_scale; p ← p·decay; m ← m + (g − m)(1 − β1); v ← β2 v + (1 − β2) g²;
// p ← p − step_size · m / (√v / bc2_sqrt + eps).
extern "C" __global__ void adamw_f32(float* master, bf16* param, const float* grad, float* m, float* v, long long n,
                                     float grad_scale, float decay, float beta1, float beta2, float step_size,
                                     float bc2_sqrt, float eps) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i] * grad_scale;
        float p = master[i] * decay;
        const float mi = m[i] + (g - m[i]) * (1.f - beta1);
        const float vi = v[i] * beta2 + (1.f - beta2) * g * g;
        p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        master[i] = p;
        param[i] = to_bf16(p);
    }
}
