// Planted bugs that the SIMT emulator must catch (tests/emulator.rs). They are compiled for the GPU
// too, but only the emulator runs them.
#include "arch.cuh"

using namespace admix;

// Each warp's lane 0 publishes a value, then thread 0 sums them. With `barrier` = 0 the
// __syncthreads is missing: round robin (warps in step) hides it, lowest-first exposes it.
extern "C" __global__ void selftest_barrier(float* out, int barrier) {
    float* s = dynamic_smem<float>();
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (lane_id() == 0) s[warp] = (float)(warp + 1);
    __syncwarp();
    if (barrier) __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < warps; w++) t += s[w];
        out[blockIdx.x] = t;
    }
}

// Half a warp leaves before a full-warp shuffle: the emulator reports a deadlock.
extern "C" __global__ void selftest_deadlock(float* out) {
    float v = (float)threadIdx.x;
    if (lane_id() >= 16) return;
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// A cp.async whose source is not 16-byte aligned: the emulator reports it.
extern "C" __global__ void selftest_misaligned(float* out, const float* src) {
    float* s = dynamic_smem<float>();
    cp_async_16(s + 4 * threadIdx.x, src + 4 * threadIdx.x + 1, 16);
    cp_async_commit();
    cp_async_wait<0>();
    out[threadIdx.x] = s[4 * threadIdx.x];
}
