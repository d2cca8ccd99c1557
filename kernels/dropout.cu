// Dropout on bf16 activations with the counter-based mask of dropout.cuh (shared with the
// attention kernels). Grid-stride loops of 256-thread blocks.
#include "arch.cuh"
#include "dropout.cuh"

using namespace admix;

// Dropout in place with the counter-based mask of `DropKey`: element i is kept iff
// (mix64(key ^ i·φ) >> 32) >= threshold (= ceil(p·2³²)), kept elements scaled by `scale`.
// The same mask as the CPU backend's for the same key; its own backward.
extern "C" __global__ void dropout_bf16(bf16* x, long long n, unsigned long long key, unsigned long long threshold,
                                        float scale) {
    GRID_STRIDE(i, n) x[i] = to_bf16(to_f32(x[i]) * dropout_factor(key, threshold, scale, (unsigned long long)i));
}
