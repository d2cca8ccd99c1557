// Fused multi-head self-attention forward: ctx = softmax(Q·Kᵀ/√d + key mask)·V per (sequence,
// head), on the fused QKV projection [B·S, 3H] (q | k | v, head h at columns h·d). Keys at
// positions >= lens[b] are masked; query rows >= lens[b] get zeros (pad rows, as the CPU path).
//
// A 128-thread block takes 16 queries of one (sequence, head): 4 per warp. Keys stream through
// shared memory in tiles of 32 (one key per lane for the scores), and each query keeps an online
// softmax (running max, running sum, rescaled accumulator), so the S×S matrix never exists.
// Lane l owns output dimensions l, l+32, ...: DPL = ceil(d/32) per lane, one entry per d ≤ 128.
// Shared memory (f32): Q 16·d, K 32·(d+1) (padded: lanes read different keys' same dimension),
// V 32·d — 41 KB at d = 128.
#include "arch.cuh"

using namespace admix;

namespace {

constexpr int QT = 16, KT = 32, THREADS = 128, QPW = QT / (THREADS / 32);
#define NEG_INF __int_as_float(0xff800000)

template <int DPL>
__device__ void attention(bf16* __restrict__ ctx, const bf16* __restrict__ qkv, const int* __restrict__ lens,
                          int seq, int heads, int d, float scale) {
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * QT;
    const int hidden = heads * d, ld = 3 * hidden;
    const int len = lens[b];
    const int warp = threadIdx.x / 32, lane = lane_id();
    float* qs = dynamic_smem<float>();
    float* ks = qs + QT * d;
    float* vs = ks + KT * (d + 1);
    const bf16* base = qkv + (size_t)b * seq * ld + h * d;

    for (int e = threadIdx.x; e < QT * d; e += THREADS) {
        const int q = e / d, c = e % d;
        qs[e] = q0 + q < len ? to_f32(base[(size_t)(q0 + q) * ld + c]) : 0.f;
    }

    float m[QPW], l[QPW], acc[QPW][DPL];
#pragma unroll
    for (int i = 0; i < QPW; i++) {
        m[i] = NEG_INF;
        l[i] = 0.f;
#pragma unroll
        for (int j = 0; j < DPL; j++) acc[i][j] = 0.f;
    }

    const bool any_query = q0 < len;
    for (int k0 = 0; any_query && k0 < len; k0 += KT) {
        __syncthreads();  // the previous tile is consumed (and Q is staged, the first time)
        for (int e = threadIdx.x; e < KT * d; e += THREADS) {
            const int j = e / d, c = e % d;
            const bool in = k0 + j < len;
            const bf16* row = base + (size_t)(k0 + j) * ld;
            ks[j * (d + 1) + c] = in ? to_f32(row[hidden + c]) : 0.f;
            vs[j * d + c] = in ? to_f32(row[2 * hidden + c]) : 0.f;
        }
        __syncthreads();
        const int valid = len - k0 < KT ? len - k0 : KT;
#pragma unroll
        for (int i = 0; i < QPW; i++) {
            const float* q = qs + (warp * QPW + i) * d;
            float s = NEG_INF;
            if (lane < valid) {
                const float* k = ks + lane * (d + 1);
                float dot = 0.f;
                for (int c = 0; c < d; c++) dot += q[c] * k[c];
                s = dot * scale;
            }
            const float m_new = fmaxf(m[i], warp_max(s));
            const float p = lane < valid ? expf(s - m_new) : 0.f;
            const float corr = expf(m[i] - m_new);
            l[i] = l[i] * corr + warp_sum(p);
            m[i] = m_new;
#pragma unroll
            for (int j = 0; j < DPL; j++) acc[i][j] *= corr;
            for (int kk = 0; kk < valid; kk++) {
                const float pk = __shfl_sync(0xffffffffu, p, kk);
#pragma unroll
                for (int j = 0; j < DPL; j++) {
                    const int c = lane + 32 * j;
                    if (c < d) acc[i][j] += pk * vs[kk * d + c];
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < QPW; i++) {
        const int q = q0 + warp * QPW + i;
        if (q >= seq) continue;
        bf16* out = ctx + ((size_t)b * seq + q) * hidden + h * d;
        const float inv = q < len ? 1.f / l[i] : 0.f;
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            const int c = lane + 32 * j;
            if (c < d) out[c] = to_bf16(q < len ? acc[i][j] * inv : 0.f);
        }
    }
}

}  // namespace

// grid (ceil(seq/16), heads, batch), 128 threads, 4·(16d + 32(d+1) + 32d) bytes of dynamic shared
// memory; the kernel for head dimension d is attention_bf16_dpl{ceil(d/32)} (d ≤ 128).
extern "C" __global__ void __launch_bounds__(128) attention_bf16_dpl1(bf16* ctx, const bf16* qkv, const int* lens,
                                                                      int seq, int heads, int d, float scale) {
    attention<1>(ctx, qkv, lens, seq, heads, d, scale);
}
extern "C" __global__ void __launch_bounds__(128) attention_bf16_dpl2(bf16* ctx, const bf16* qkv, const int* lens,
                                                                      int seq, int heads, int d, float scale) {
    attention<2>(ctx, qkv, lens, seq, heads, d, scale);
}
extern "C" __global__ void __launch_bounds__(128) attention_bf16_dpl3(bf16* ctx, const bf16* qkv, const int* lens,
                                                                      int seq, int heads, int d, float scale) {
    attention<3>(ctx, qkv, lens, seq, heads, d, scale);
}
extern "C" __global__ void __launch_bounds__(128) attention_bf16_dpl4(bf16* ctx, const bf16* qkv, const int* lens,
                                                                      int seq, int heads, int d, float scale) {
    attention<4>(ctx, qkv, lens, seq, heads, d, scale);
}
