// Pooling: L2-normalised mean sentence embeddings.
#include "arch.cuh"

using namespace admix;

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
