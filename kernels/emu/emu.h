// The SIMT emulator's view of CUDA: what a kernel file sees when it is compiled as C++ by g++
// (`__CUDACC__` undefined). The block's threads run as fibers on one OS thread (emu.cpp), so
// `threadIdx` is a thread-local that the scheduler sets at every switch, `__shared__` is
// thread-local storage shared by the block's fibers, and every barrier or warp collective is a
// call into the scheduler. No CUDA header is included here: bf16 is provided bit-exactly below.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

namespace admix_emu {

extern thread_local uint3 tls_thread_idx;
extern thread_local uint3 tls_block_idx;
extern thread_local dim3 tls_block_dim;
extern thread_local dim3 tls_grid_dim;
extern thread_local unsigned char* tls_dynamic_smem;

// ---- scheduler entry points (emu.cpp) ----
void syncthreads();
// Reports a kernel error (launch fails with this message; the calling fiber never resumes).
[[noreturn]] void fail(const char* fmt, ...);

// One lane's slot in a warp collective: what it brings and what it gets back.
struct LaneSlot {
    uint32_t in[10];
    uint32_t out[4];
    const void* ptr;
    int arg;
};
// Computes every participating lane's `out` from the slots of the lanes in `mask`
// (called once, by the last lane to arrive).
using CollectiveFn = void (*)(LaneSlot* lanes, unsigned mask);
// Rendezvous of the lanes named by `mask` (CUDA's rule: the mask names the participants).
void collective(CollectiveFn fn, unsigned mask, LaneSlot& mine);
unsigned lane_id();

// cp.async: issued now (destination poisoned), performed at wait time.
void cp_async_issue(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);

// Calls a kernel with the argument array of cuLaunchKernel (pointers to each argument).
template <class... A, std::size_t... I>
void invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <class... A>
void invoke(void (*f)(A...), void** args) {
    invoke_impl(f, args, std::index_sequence_for<A...>{});
}

// ---- warp shuffles and votes ----
enum ShflKind { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
uint32_t shfl(unsigned mask, uint32_t v, int arg, int width, ShflKind kind);
unsigned ballot(unsigned mask, bool pred);
void syncwarp(unsigned mask);

}  // namespace admix_emu

#define threadIdx (admix_emu::tls_thread_idx)
#define blockIdx (admix_emu::tls_block_idx)
#define blockDim (admix_emu::tls_block_dim)
#define gridDim (admix_emu::tls_grid_dim)
#define warpSize 32

inline void __syncthreads() { admix_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { admix_emu::syncwarp(mask); }

template <class T>
inline T admix_emu_shfl(unsigned mask, T v, int arg, int width, admix_emu::ShflKind kind) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "the emulator shuffles 32- and 64-bit values");
    uint32_t u[sizeof(T) / 4];
    std::memcpy(u, &v, sizeof(T));
    for (auto& w : u) w = admix_emu::shfl(mask, w, arg, width, kind);  // as CUDA: one 32-bit shuffle per half
    std::memcpy(&v, u, sizeof(T));
    return v;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return admix_emu_shfl(mask, v, src, width, admix_emu::SHFL_IDX);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return admix_emu_shfl(mask, v, (int)delta, width, admix_emu::SHFL_UP);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return admix_emu_shfl(mask, v, (int)delta, width, admix_emu::SHFL_DOWN);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return admix_emu_shfl(mask, v, lane_mask, width, admix_emu::SHFL_XOR);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return admix_emu::ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return admix_emu::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) { return admix_emu::ballot(mask, pred != 0) == mask; }

// ---- math the kernels use ----
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float atomicAdd(float* p, float v) {
    float old, upd;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        upd = old + v;
    } while (!__atomic_compare_exchange(p, &old, &upd, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}

// ---- bf16, bit-exact round-to-nearest-even (CUDA's __float2bfloat16_rn; NaN → 0x7fff) ----
struct __nv_bfloat16 {
    uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
    return __nv_bfloat16{(uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
