// Everything a kernel needs from the machine, in one place: bf16 storage, dynamic shared memory and
// the inline-PTX primitives (ldmatrix, mma.sync, cp.async). Each primitive has a device body
// (inline PTX, nvcc) and an emulator body (g++, run by kernels/emu): kernel files never contain
// `asm` themselves, so the emulator runs exactly the kernel code the GPU runs.
//
// Fragment layouts follow NVIDIA's PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating
// point type", "Warp-level matrix load instruction: ldmatrix"); with g = lane / 4, t = lane % 4:
//   A 16x16 bf16, 4 regs of 2: reg r holds row g + 8 (r & 1), columns 2t + 8 (r >> 1) + {0, 1}
//   B 16x8  bf16, 2 regs of 2: reg r holds rows (k) 2t + 8 r + {0, 1}, column (n) g
//   C/D 16x8 f32, 4 regs:      reg r holds row g + 8 (r >> 1), column 2t + (r & 1)
//   ldmatrix .m8n8.b16: lanes 8j..8j+7 give the row addresses of matrix j; register j of lane t
//   holds row t/4, columns 2(t%4) + {0, 1} of matrix j (.trans: rows 2(t%4) + {0, 1}, column t/4).
// The conformance kernels (kernels/conformance.cu) check these rules on the emulator in
// `cargo test`, and on a real GPU in scripts/gpu-check.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <stdint.h>
#else
#include "emu/emu.h"
#endif

typedef __nv_bfloat16 bf16;

namespace admix {

__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 to_bf16(float f) { return __float2bfloat16_rn(f); }

__device__ __forceinline__ uint16_t bf16_bits(bf16 v) {
    uint16_t b;
    memcpy(&b, &v, 2);
    return b;
}
__device__ __forceinline__ bf16 bf16_from_bits(uint16_t b) {
    bf16 v;
    memcpy(&v, &b, 2);
    return v;
}
// Two floats rounded to bf16 and packed, `lo` in the low 16 bits (the element at the lower index).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)bf16_bits(to_bf16(lo)) | ((uint32_t)bf16_bits(to_bf16(hi)) << 16);
}
__device__ __forceinline__ float bf16x2_lo(uint32_t v) { return to_f32(bf16_from_bits((uint16_t)(v & 0xffff))); }
__device__ __forceinline__ float bf16x2_hi(uint32_t v) { return to_f32(bf16_from_bits((uint16_t)(v >> 16))); }

__device__ __forceinline__ unsigned lane_id() { return threadIdx.x % 32; }

// The block's dynamic shared memory (poisoned at block start by the emulator).
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
#ifdef __CUDACC__
    extern __shared__ __align__(128) unsigned char admix_dynamic_smem[];
    return reinterpret_cast<T*>(admix_dynamic_smem);
#else
    return reinterpret_cast<T*>(admix_emu::tls_dynamic_smem);
#endif
}

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// ---------------------------------------------------------------------------------------------
// cp.async.cg.shared.global (16 bytes; bytes past `src_bytes` are zero-filled), commit, wait.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
#ifdef __CUDACC__
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
                 "r"(src_bytes));
#else
    admix_emu::cp_async_issue(smem_dst, gmem_src, src_bytes);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDACC__
    asm volatile("cp.async.commit_group;\n" ::);
#else
    admix_emu::cp_async_commit();
#endif
}

// Waits until at most `N` of this thread's most recent committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDACC__
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#else
    admix_emu::cp_async_wait(N);
#endif
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
#ifndef __CUDACC__
namespace emu_detail {
template <int NUM, bool TRANS>
inline void ldmatrix_fn(admix_emu::LaneSlot* s, unsigned) {
    for (int j = 0; j < NUM; j++) {
        for (int r = 0; r < 8; r++) {
            if (reinterpret_cast<uintptr_t>(s[8 * j + r].ptr) % 16)
                admix_emu::fail("ldmatrix row address %p (lane %d) is not 16-byte aligned", s[8 * j + r].ptr, 8 * j + r);
        }
        for (int t = 0; t < 32; t++) {
            uint16_t e[2];
            for (int h = 0; h < 2; h++) {
                const int row = TRANS ? 2 * (t % 4) + h : t / 4;
                const int col = TRANS ? t / 4 : 2 * (t % 4) + h;
                e[h] = static_cast<const uint16_t*>(s[8 * j + row].ptr)[col];
            }
            s[t].out[j] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
        }
    }
}
template <int NUM, bool TRANS>
inline void ldmatrix(uint32_t* r, const void* row) {
    admix_emu::LaneSlot s;
    s.ptr = row;
    admix_emu::collective(ldmatrix_fn<NUM, TRANS>, 0xffffffffu, s);
    for (int j = 0; j < NUM; j++) r[j] = s.out[j];
}
}  // namespace emu_detail
#endif

__device__ __forceinline__ void ldmatrix_x1(uint32_t& r0, const void* row) {
#ifdef __CUDACC__
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(smem_u32(row)));
#else
    emu_detail::ldmatrix<1, false>(&r0, row);
#endif
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
#ifdef __CUDACC__
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row)));
#else
    emu_detail::ldmatrix<2, false>(r, row);
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef __CUDACC__
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row)));
#else
    emu_detail::ldmatrix<4, false>(r, row);
#endif
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r0, const void* row) {
#ifdef __CUDACC__
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(smem_u32(row)));
#else
    emu_detail::ldmatrix<1, true>(&r0, row);
#endif
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
#ifdef __CUDACC__
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row)));
#else
    emu_detail::ldmatrix<2, true>(r, row);
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#ifdef __CUDACC__
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row)));
#else
    emu_detail::ldmatrix<4, true>(r, row);
#endif
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d = a·b + c for one warp.
#ifndef __CUDACC__
namespace emu_detail {
inline float half_to_f32(uint32_t reg, int h) { return h ? bf16x2_hi(reg) : bf16x2_lo(reg); }
inline void mma_fn(admix_emu::LaneSlot* s, unsigned) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++) A[g + 8 * (r & 1)][2 * t + 8 * (r >> 1) + h] = half_to_f32(s[lane].in[r], h);
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++) B[2 * t + 8 * r + h][g] = half_to_f32(s[lane].in[4 + r], h);
        for (int r = 0; r < 4; r++) memcpy(&C[g + 8 * (r >> 1)][2 * t + (r & 1)], &s[lane].in[6 + r], 4);
    }
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int r = 0; r < 4; r++) {
            const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
            float acc = C[row][col];
            for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
            memcpy(&s[lane].out[r], &acc, 4);
        }
    }
}
}  // namespace emu_detail
#endif

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                               const float (&c)[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    admix_emu::LaneSlot s;
    for (int i = 0; i < 4; i++) s.in[i] = a[i];
    for (int i = 0; i < 2; i++) s.in[4 + i] = b[i];
    for (int i = 0; i < 4; i++) memcpy(&s.in[6 + i], &c[i], 4);
    admix_emu::collective(emu_detail::mma_fn, 0xffffffffu, s);
    for (int i = 0; i < 4; i++) memcpy(&d[i], &s.out[i], 4);
#endif
}

// ---------------------------------------------------------------------------------------------
// Warp reductions (shuffles are CUDA intrinsics, emulated by emu.h).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

}  // namespace admix

// A grid-stride loop over [0, n): `GRID_STRIDE(i, n) body;` runs body for every i.
#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
