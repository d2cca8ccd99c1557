// Element-wise and row kernels (f32 arithmetic): forward ops on bf16 activations, their backward,
// dropout, and the accumulations training needs. Grid-stride loops of 256-thread blocks.
#include "activation.cuh"
#include "arch.cuh"
#include "dropout.cuh"

using namespace admix;

// out = a + b
extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = to_bf16(to_f32(a[i]) + to_f32(b[i]));
}

// out = act(x)
extern "C" __global__ void activation_bf16(bf16* out, const bf16* x, long long n, int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = to_bf16(activate(to_f32(x[i]), act));
}

// out[i, :] = x[rows[i], :] for i < n (rows checked on the host). grid n, 128 threads.
extern "C" __global__ void gather_rows_bf16(bf16* out, const bf16* x, const int* rows, int cols) {
    const bf16* src = x + (size_t)rows[blockIdx.x] * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

// Sentence embeddings: out[b, :] = normalize(mean over the first lens[b] rows of sequence b).
// grid batch, 256 threads; 4·cols + 32 bytes of dynamic shared memory.
extern "C" __global__ void mean_pool_l2_bf16(bf16* out, const bf16* x, const int* lens, int seq, int cols) {
    float* mean = dynamic_smem<float>();
    float* partial = mean + cols;
    const int b = blockIdx.x, len = lens[b];
    float sq = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float s = 0.f;
        for (int t = 0; t < len; t++) s += to_f32(x[((size_t)b * seq + t) * cols + c]);
        s /= len;
        mean[c] = s;
        sq += s * s;
    }
    sq = warp_sum(sq);
    if (lane_id() == 0) partial[threadIdx.x / 32] = sq;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) total += partial[w];
    const float inv = 1.f / fmaxf(sqrtf(total), 1e-12f);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(size_t)b * cols + c] = to_bf16(mean[c] * inv);
}

// ---- backward and training support ----

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// acc += x (bf16 activations' gradients)
extern "C" __global__ void add_assign_bf16(bf16* acc, const bf16* x, long long n) {
    GRID_STRIDE(i, n) acc[i] = to_bf16(to_f32(acc[i]) + to_f32(x[i]));
}

// acc += x (f32 gradient buffers)
extern "C" __global__ void add_assign_f32(float* acc, const float* x, long long n) {
    GRID_STRIDE(i, n) acc[i] += x[i];
}

// dy ← dy · act'(pre), in place.
extern "C" __global__ void activation_backward_bf16(bf16* dy, const bf16* pre, long long n, int act) {
    GRID_STRIDE(i, n) dy[i] = to_bf16(to_f32(dy[i]) * activate_grad(to_f32(pre[i]), act));
}

// Dropout in place with the counter-based mask of `DropKey`: element i is kept iff
// (mix64(key ^ i·φ) >> 32) >= threshold (= ceil(p·2³²)), kept elements scaled by `scale`.
// The same mask as the CPU backend's for the same key; its own backward.
extern "C" __global__ void dropout_bf16(bf16* x, long long n, unsigned long long key, unsigned long long threshold,
                                        float scale) {
    GRID_STRIDE(i, n) x[i] = to_bf16(to_f32(x[i]) * dropout_factor(key, threshold, scale, (unsigned long long)i));
}

// out[rows[i], :] = dy[i, :] for the n listed rows (out zeroed by the caller). grid n, 128 threads.
extern "C" __global__ void scatter_rows_bf16(bf16* out, const bf16* dy, const int* rows, int cols) {
    const bf16* src = dy + (size_t)blockIdx.x * cols;
    bf16* dst = out + (size_t)rows[blockIdx.x] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

// db[n] += Σ_m dy[m, n] (bias gradients): one thread per column, coalesced across the block.
// grid ceil(N/256), 256 threads.
extern "C" __global__ void col_sum_acc_f32(float* db, const bf16* dy, int M, int N) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float s = 0.f;
    for (int m = 0; m < M; m++) s += to_f32(dy[(size_t)m * N + c]);
    db[c] += s;
}
