// LayerNorm, alone and fused with the embedding gather. One warp per row; the row is staged in
// dynamic shared memory as f32 (4 rows per 128-thread block: 16·cols bytes), the statistics are
// two-pass f32 (mean, then the mean of squared deviations), as the CPU reference computes them.
//   out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta
#include "arch.cuh"

using namespace admix;

namespace {

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

namespace {

// word[ids[row]] (+ delta[row], the f32 perturbation of the word rows, when given) + position[row % seq]
// + token_type[type_ids[row]] into the f32 row v (shared memory), for the warp.
__device__ __forceinline__ void embedding_sum(float* v, int row, const int* ids, const int* type_ids,
                                              const bf16* word, const float* delta, const bf16* position,
                                              const bf16* token_type, int seq, int cols) {
    const bf16* wr = word + (size_t)ids[row] * cols;
    const bf16* pr = position + (size_t)(row % seq) * cols;
    const bf16* tr = token_type + (size_t)type_ids[row] * cols;
    const float* dr = delta ? delta + (size_t)row * cols : nullptr;
    for (int c = lane_id(); c < cols; c += 32)
        v[c] = (to_f32(wr[c]) + (dr ? dr[c] : 0.f)) + to_f32(pr[c]) + to_f32(tr[c]);
}

}  // namespace

// LN(word[ids[r]] + delta[r] + position[r % seq] + token_type[type_ids[r]]) for every token row r;
// delta (f32 [rows][cols], an attack's perturbation of the word rows) may be null.
// grid ceil(rows/4), 128 threads, 16·cols bytes of dynamic shared memory. Ids are checked on the host.
extern "C" __global__ void embed_layernorm_bf16(bf16* out, const int* ids, const int* type_ids, const bf16* word,
                                                const float* delta, const bf16* position, const bf16* token_type,
                                                const bf16* gamma, const bf16* beta, int rows, int seq, int cols,
                                                float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * cols;
    embedding_sum(v, row, ids, type_ids, word, delta, position, token_type, seq, cols);
    __syncwarp();
    normalize_row(out + (size_t)row * cols, v, gamma, beta, cols, eps);
}

// ---------------------------------------------------------------------------------------------
// Backward, given the forward's input x (statistics recomputed):
//   x̂ = (x − mean)·rstd, g = γ ⊙ dy,  dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)),
//   dγ += Σ_rows dy ⊙ x̂,  dβ += Σ_rows dy.
// The row kernels write dx and each row's (mean, rstd); a column kernel (one thread per column,
// coalesced across the block, no atomics) accumulates dγ and dβ from them.

namespace {

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

}  // namespace

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

// Backward of embed_layernorm_bf16 to the pre-LayerNorm sum (= the gradient w.r.t. the word rows
// looked up, and w.r.t. delta): the sum is regathered in f32. Same launch as layernorm_backward_bf16.
extern "C" __global__ void embed_backward_bf16(bf16* dsum, float* stats, const bf16* dy, const int* ids,
                                               const int* type_ids, const bf16* word, const float* delta,
                                               const bf16* position, const bf16* token_type, const bf16* gamma,
                                               int rows, int seq, int cols, float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * 2 * cols;
    float* g = v + cols;
    embedding_sum(v, row, ids, type_ids, word, delta, position, token_type, seq, cols);
    for (int c = lane_id(); c < cols; c += 32) g[c] = to_f32(dy[(size_t)row * cols + c]);
    __syncwarp();
    backward_row(dsum + (size_t)row * cols, stats + 2 * row, v, g, gamma, cols, eps);
}

// The embedding LayerNorm's dγ, dβ (the sum regathered per element). grid ceil(cols/128), 128 threads.
extern "C" __global__ void embed_param_grads_f32(float* dgamma, float* dbeta, const float* stats, const bf16* dy,
                                                 const int* ids, const int* type_ids, const bf16* word,
                                                 const float* delta, const bf16* position, const bf16* token_type,
                                                 int rows, int seq, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float dg = 0.f, db = 0.f;
    for (int r = 0; r < rows; r++) {
        const float x = (to_f32(word[(size_t)ids[r] * cols + c]) + (delta ? delta[(size_t)r * cols + c] : 0.f)) +
                        to_f32(position[(size_t)(r % seq) * cols + c]) +
                        to_f32(token_type[(size_t)type_ids[r] * cols + c]);
        const float d = to_f32(dy[(size_t)r * cols + c]);
        dg += d * (x - stats[2 * r]) * stats[2 * r + 1];
        db += d;
    }
    dgamma[c] += dg;
    dbeta[c] += db;
}

// Full fine-tuning: the tables' gradients, dword[ids[r]] += dsum[r], dposition[r % seq] += dsum[r],
// dtype[type_ids[r]] += dsum[r] (f32 atomics: rows share table rows). Grid-stride over rows·cols.
extern "C" __global__ void embed_table_grads_f32(float* dword, float* dposition, float* dtype, const bf16* dsum,
                                                 const int* ids, const int* type_ids, int rows, int seq, int cols) {
    const long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / cols), c = (int)(i % cols);
        const float g = to_f32(dsum[i]);
        atomicAdd(&dword[(size_t)ids[r] * cols + c], g);
        atomicAdd(&dposition[(size_t)(r % seq) * cols + c], g);
        atomicAdd(&dtype[(size_t)type_ids[r] * cols + c], g);
    }
}
