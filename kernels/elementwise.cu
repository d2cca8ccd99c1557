// Element-wise and row kernels (f32 arithmetic): add, the gradient accumulations training needs,
// and row gather/scatter. Grid-stride loops of 256-thread blocks.
#include "arch.cuh"

using namespace admix;

// out = a + b
extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, long long n) {
    GRID_STRIDE(i, n) out[i] = to_bf16(to_f32(a[i]) + to_f32(b[i]));
}

// out[i, :] = x[rows[i], :] for i < n (rows checked on the host). grid n, 128 threads.
extern "C" __global__ void gather_rows_bf16(bf16* out, const bf16* x, const int* rows, int cols) {
    const bf16* src = x + (size_t)rows[blockIdx.x] * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

// acc += x (bf16 activations' gradients)
extern "C" __global__ void add_assign_bf16(bf16* acc, const bf16* x, long long n) {
    GRID_STRIDE(i, n) acc[i] = to_bf16(to_f32(acc[i]) + to_f32(x[i]));
}

// acc += x (f32 gradient buffers)
extern "C" __global__ void add_assign_f32(float* acc, const float* x, long long n) {
    GRID_STRIDE(i, n) acc[i] += x[i];
}

// out[rows[i], :] = dy[i, :] for the n listed rows (out zeroed by the caller). grid n, 128 threads.
extern "C" __global__ void scatter_rows_bf16(bf16* out, const bf16* dy, const int* rows, int cols) {
    const bf16* src = dy + (size_t)blockIdx.x * cols;
    bf16* dst = out + (size_t)rows[blockIdx.x] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}
