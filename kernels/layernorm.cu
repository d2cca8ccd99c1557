// LayerNorm, alone and fused with the embedding gather. One warp per row; the row is staged in
// dynamic shared memory as f32 (4 rows per 128-thread block: 16·cols bytes), the statistics are
// two-pass f32 (mean, then the mean of squared deviations), as the CPU reference computes them.
//   out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta
#include "arch.cuh"

using namespace admix;

namespace {

// Normalises the f32 row `v` (cols values, in shared memory) into out (bf16).
__device__ __forceinline__ void normalize_row(bf16* __restrict__ out, const float* v, const bf16* __restrict__ gamma,
                                              const bf16* __restrict__ beta, int cols, float eps) {
    const int lane = lane_id();
    float sum = 0.f;
    for (int c = lane; c < cols; c += 32) sum += v[c];
    const float mean = warp_sum(sum) / cols;
    float sq = 0.f;
    for (int c = lane; c < cols; c += 32) {
        const float d = v[c] - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(warp_sum(sq) / cols + eps);
    for (int c = lane; c < cols; c += 32) out[c] = to_bf16((v[c] - mean) * rstd * to_f32(gamma[c]) + to_f32(beta[c]));
}

}  // namespace

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

// LN(word[ids[r]] + position[r % seq] + token_type[type_ids[r]]) for every token row r.
// grid ceil(rows/4), 128 threads, 16·cols bytes of dynamic shared memory. Ids are checked on the host.
extern "C" __global__ void embed_layernorm_bf16(bf16* out, const int* ids, const int* type_ids, const bf16* word,
                                                const bf16* position, const bf16* token_type, const bf16* gamma,
                                                const bf16* beta, int rows, int seq, int cols, float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * cols;
    const bf16* wr = word + (size_t)ids[row] * cols;
    const bf16* pr = position + (size_t)(row % seq) * cols;
    const bf16* tr = token_type + (size_t)type_ids[row] * cols;
    for (int c = lane_id(); c < cols; c += 32) v[c] = to_f32(wr[c]) + to_f32(pr[c]) + to_f32(tr[c]);
    __syncwarp();
    normalize_row(out + (size_t)row * cols, v, gamma, beta, cols, eps);
}
