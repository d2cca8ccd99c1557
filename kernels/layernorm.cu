// LayerNorm and its backward (the helpers are layernorm.cuh's; the embedding's fused LayerNorm is
// embedding.cu). 4 rows per 128-thread block, 16·cols bytes of dynamic shared memory forward.
#include "layernorm.cuh"

using namespace admix;
using namespace admix::layernorm;

// grid ceil(rows/4), 128 threads, 16·cols bytes of dynamic shared memory.
extern "C" __global__ void layernorm_bf16(bf16* out, const bf16* x, const bf16* gamma, const bf16* beta, int rows,
                                          int cols, float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * cols;
    const bf16* xr = x + (size_t)row * cols;
    for (int c = lane_id(); c < cols; c += 32) v[c] = to_f32(xr[c]);
    __syncwarp();
    normalize_row(out + (size_t)row * cols, v, gamma, beta, cols, eps);
}

// grid ceil(rows/4), 128 threads, 32·cols bytes of dynamic shared memory; stats [rows][2] f32.
extern "C" __global__ void layernorm_backward_bf16(bf16* dx, float* stats, const bf16* dy, const bf16* x,
                                                   const bf16* gamma, int rows, int cols, float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * 2 * cols;
    float* g = v + cols;
    for (int c = lane_id(); c < cols; c += 32) {
        v[c] = to_f32(x[(size_t)row * cols + c]);
        g[c] = to_f32(dy[(size_t)row * cols + c]);
    }
    __syncwarp();
    backward_row(dx + (size_t)row * cols, stats + 2 * row, v, g, gamma, cols, eps);
}

// dγ[c] += Σ_r dy[r,c]·(x[r,c] − mean_r)·rstd_r, dβ[c] += Σ_r dy[r,c]. grid ceil(cols/128), 128 threads.
extern "C" __global__ void layernorm_param_grads_f32(float* dgamma, float* dbeta, const float* stats, const bf16* dy,
                                                     const bf16* x, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float dg = 0.f, db = 0.f;
    for (int r = 0; r < rows; r++) {
        const float d = to_f32(dy[(size_t)r * cols + c]);
        dg += d * (to_f32(x[(size_t)r * cols + c]) - stats[2 * r]) * stats[2 * r + 1];
        db += d;
    }
    dgamma[c] += dg;
    dbeta[c] += db;
}
