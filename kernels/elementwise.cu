// Element-wise and row-copy kernels on bf16 activations (f32 arithmetic). A grid-stride loop of
// 256-thread blocks over the elements.
#include "activation.cuh"
#include "arch.cuh"

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
