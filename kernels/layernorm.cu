// LayerNorm forward, f32: one warp per row, two-pass statistics held in registers' partial sums.
//   out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta
// The first kernel of the build plumbing; the bf16 model kernels (issue 4) join it here.
#include "arch.cuh"

extern "C" __global__ void layernorm_forward_f32(float* __restrict__ out, const float* __restrict__ x,
                                                 const float* __restrict__ gamma,
                                                 const float* __restrict__ beta, int rows, int cols,
                                                 float eps) {
    const int warps_per_block = blockDim.x / 32;
    const int row = blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * cols;
    float sum = 0.f;
    for (int c = lane; c < cols; c += 32) sum += xr[c];
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float mean = sum / cols;
    float sq = 0.f;
    for (int c = lane; c < cols; c += 32) {
        const float d = xr[c] - mean;
        sq += d * d;
    }
    for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    const float rstd = rsqrtf(sq / cols + eps);
    float* yr = out + (size_t)row * cols;
    for (int c = lane; c < cols; c += 32) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
}
