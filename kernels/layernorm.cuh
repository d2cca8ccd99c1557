// LayerNorm's row helpers, shared by the LayerNorm kernels (layernorm.cu) and the embedding
// kernels that fuse it (embedding.cu). One warp per row; the row is staged in dynamic shared memory
// as f32, the statistics are two-pass f32 (mean, then the mean of squared deviations), as the CPU
// reference computes them.
//   out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta
#pragma once
#include "arch.cuh"

namespace admix {
namespace layernorm {

// Two-pass mean and 1/sqrt(var + eps) of the f32 row `v` (cols values, in shared memory), for the warp.
__device__ __forceinline__ void row_stats(const float* v, int cols, float eps, float& mean, float& rstd) {
    const int lane = lane_id();
    float sum = 0.f;
    for (int c = lane; c < cols; c += 32) sum += v[c];
    mean = warp_sum(sum) / cols;
    float sq = 0.f;
    for (int c = lane; c < cols; c += 32) {
        const float d = v[c] - mean;
        sq += d * d;
    }
    rstd = rsqrtf(warp_sum(sq) / cols + eps);
}

// Normalises the f32 row `v` (cols values, in shared memory) into out (bf16).
__device__ __forceinline__ void normalize_row(bf16* __restrict__ out, const float* v, const bf16* __restrict__ gamma,
                                              const bf16* __restrict__ beta, int cols, float eps) {
    const int lane = lane_id();
    float mean, rstd;
    row_stats(v, cols, eps, mean, rstd);
    for (int c = lane; c < cols; c += 32) out[c] = to_bf16((v[c] - mean) * rstd * to_f32(gamma[c]) + to_f32(beta[c]));
}

}  // namespace layernorm
}  // namespace admix

// ---------------------------------------------------------------------------------------------
// Backward, given the forward's input x (statistics recomputed):
//   x̂ = (x − mean)·rstd, g = γ ⊙ dy,  dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)),
//   dγ += Σ_rows dy ⊙ x̂,  dβ += Σ_rows dy.
// The row kernels write dx and each row's (mean, rstd); a column kernel (one thread per column,
// coalesced across the block, no atomics) accumulates dγ and dβ from them.

namespace admix {
namespace layernorm {

// dx of one row from x and dy staged as f32 in shared memory; lane 0 stores (mean, rstd).
__device__ __forceinline__ void backward_row(bf16* __restrict__ dx, float* __restrict__ stats, const float* v,
                                             const float* g, const bf16* __restrict__ gamma, int cols, float eps) {
    const int lane = lane_id();
    float mean, rstd;
    row_stats(v, cols, eps, mean, rstd);
    float sd = 0.f, sdx = 0.f;
    for (int c = lane; c < cols; c += 32) {
        const float d = to_f32(gamma[c]) * g[c];
        sd += d;
        sdx += d * (v[c] - mean) * rstd;
    }
    const float mean_d = warp_sum(sd) / cols, mean_dx = warp_sum(sdx) / cols;
    for (int c = lane; c < cols; c += 32)
        dx[c] = to_bf16(rstd * (to_f32(gamma[c]) * g[c] - mean_d - (v[c] - mean) * rstd * mean_dx));
    if (lane == 0) {
        stats[0] = mean;
        stats[1] = rstd;
    }
}

}  // namespace layernorm
}  // namespace admix
