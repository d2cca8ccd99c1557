// The embedding layer: the gather of word, position and token-type rows fused with its LayerNorm
// (layernorm.cuh's helpers), its backward to the summed rows, the LayerNorm's parameter gradients,
// and (full fine-tuning) the tables' gradients.
#include "layernorm.cuh"

using namespace admix;
using namespace admix::layernorm;

namespace {

// The position-table row of token row `row` (sequences of `seq`) with id `id`: row % seq for BERT
// (padding_idx < 0); for RoBERTa padding_idx + 1 + row % seq, and padding_idx for a pad token.
__device__ __forceinline__ int position_row(int row, int seq, int id, int padding_idx) {
    const int s = row % seq;
    if (padding_idx < 0) return s;
    return id == padding_idx ? padding_idx : padding_idx + 1 + s;
}

// word[ids[row]] (+ delta[row], the f32 perturbation of the word rows, when given) + position[p]
// (p = position_row) + token_type[type_ids[row]] into the f32 row v (shared memory), for the warp.
__device__ __forceinline__ void embedding_sum(float* v, int row, const int* ids, const int* type_ids,
                                              const bf16* word, const float* delta, const bf16* position,
                                              const bf16* token_type, int seq, int padding_idx, int cols) {
    const bf16* wr = word + (size_t)ids[row] * cols;
    const bf16* pr = position + (size_t)position_row(row, seq, ids[row], padding_idx) * cols;
    const bf16* tr = token_type + (size_t)type_ids[row] * cols;
    const float* dr = delta ? delta + (size_t)row * cols : nullptr;
    for (int c = lane_id(); c < cols; c += 32)
        v[c] = (to_f32(wr[c]) + (dr ? dr[c] : 0.f)) + to_f32(pr[c]) + to_f32(tr[c]);
}

}  // namespace

// LN(word[ids[r]] + delta[r] + position[p] + token_type[type_ids[r]]) for every token row r, p =
// position_row(r, seq, ids[r], padding_idx) (padding_idx -1: BERT's absolute positions); delta (f32
// [rows][cols], an attack's perturbation of the word rows) may be null.
// grid ceil(rows/4), 128 threads, 16·cols bytes of dynamic shared memory. Ids are checked on the host.
extern "C" __global__ void embed_layernorm_bf16(bf16* out, const int* ids, const int* type_ids, const bf16* word,
                                                const float* delta, const bf16* position, const bf16* token_type,
                                                const bf16* gamma, const bf16* beta, int rows, int seq,
                                                int padding_idx, int cols, float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * cols;
    embedding_sum(v, row, ids, type_ids, word, delta, position, token_type, seq, padding_idx, cols);
    __syncwarp();
    normalize_row(out + (size_t)row * cols, v, gamma, beta, cols, eps);
}

// Backward of embed_layernorm_bf16 to the pre-LayerNorm sum (= the gradient w.r.t. the word rows
// looked up, and w.r.t. delta): the sum is regathered in f32. Same launch as layernorm_backward_bf16.
extern "C" __global__ void embed_backward_bf16(bf16* dsum, float* stats, const bf16* dy, const int* ids,
                                               const int* type_ids, const bf16* word, const float* delta,
                                               const bf16* position, const bf16* token_type, const bf16* gamma,
                                               int rows, int seq, int padding_idx, int cols, float eps) {
    const int warp = threadIdx.x / 32, row = blockIdx.x * (blockDim.x / 32) + warp;
    if (row >= rows) return;
    float* v = dynamic_smem<float>() + warp * 2 * cols;
    float* g = v + cols;
    embedding_sum(v, row, ids, type_ids, word, delta, position, token_type, seq, padding_idx, cols);
    for (int c = lane_id(); c < cols; c += 32) g[c] = to_f32(dy[(size_t)row * cols + c]);
    __syncwarp();
    backward_row(dsum + (size_t)row * cols, stats + 2 * row, v, g, gamma, cols, eps);
}

// The embedding LayerNorm's dγ, dβ (the sum regathered per element). grid ceil(cols/128), 128 threads.
extern "C" __global__ void embed_param_grads_f32(float* dgamma, float* dbeta, const float* stats, const bf16* dy,
                                                 const int* ids, const int* type_ids, const bf16* word,
                                                 const float* delta, const bf16* position, const bf16* token_type,
                                                 int rows, int seq, int padding_idx, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float dg = 0.f, db = 0.f;
    for (int r = 0; r < rows; r++) {
        const float x = (to_f32(word[(size_t)ids[r] * cols + c]) + (delta ? delta[(size_t)r * cols + c] : 0.f)) +
                        to_f32(position[(size_t)position_row(r, seq, ids[r], padding_idx) * cols + c]) +
                        to_f32(token_type[(size_t)type_ids[r] * cols + c]);
        const float d = to_f32(dy[(size_t)r * cols + c]);
        dg += d * (x - stats[2 * r]) * stats[2 * r + 1];
        db += d;
    }
    dgamma[c] += dg;
    dbeta[c] += db;
}

// Full fine-tuning: the tables' gradients, dword[ids[r]] += dsum[r], dposition[p] += dsum[r] (p as above),
// dtype[type_ids[r]] += dsum[r] (f32 atomics: rows share table rows). Grid-stride over rows·cols.
extern "C" __global__ void embed_table_grads_f32(float* dword, float* dposition, float* dtype, const bf16* dsum,
                                                 const int* ids, const int* type_ids, int rows, int seq,
                                                 int padding_idx, int cols) {
    const long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / cols), c = (int)(i % cols);
        const float g = to_f32(dsum[i]);
        atomicAdd(&dword[(size_t)ids[r] * cols + c], g);
        atomicAdd(&dposition[(size_t)position_row(r, seq, ids[r], padding_idx) * cols + c], g);
        atomicAdd(&dtype[(size_t)type_ids[r] * cols + c], g);
    }
}
