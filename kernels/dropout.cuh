// The counter-based dropout mask of `DropKey` (src/backend/mod.rs), shared by the kernels that drop:
// element `idx` is kept iff (mix64(key ^ idx·φ) >> 32) >= threshold (= ceil(p·2³²); 0 = no dropout),
// kept elements scaled by 1/(1−p). The CPU backend draws the same mask for the same key.
#pragma once
#include "arch.cuh"

namespace admix {

// splitmix64's finaliser (`mix64` on the host).
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The factor element `idx` is multiplied by: `dscale` if kept, 0 if dropped (1 without dropout).
__device__ __forceinline__ float dropout_factor(unsigned long long key, unsigned long long threshold, float dscale,
                                                unsigned long long idx) {
    if (threshold == 0) return 1.f;
    const unsigned long long h = mix64(key ^ (idx * 0x9E3779B97F4A7C15ull)) >> 32;
    return h >= threshold ? dscale : 0.f;
}

}  // namespace admix
