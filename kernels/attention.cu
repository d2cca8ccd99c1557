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
#include "dropout.cuh"

using namespace admix;

namespace {

constexpr int QT = 16, KT = 32, THREADS = 128, QPW = QT / (THREADS / 32);
#define NEG_INF __int_as_float(0xff800000)

template <int DPL>
__device__ void attention(bf16* __restrict__ ctx, const bf16* __restrict__ qkv, const int* __restrict__ lens,
                          int seq, int heads, int d, float scale, unsigned long long key,
                          unsigned long long threshold, float dscale) {
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
            // dropout drops probabilities after normalisation: the sum l keeps every term
            const float p_drop =
                lane < valid
                    ? p * dropout_factor(key, threshold, dscale,
                                    (((unsigned long long)(b * heads + h) * seq) + q0 + warp * QPW + i) * seq + k0 + lane)
                    : 0.f;
#pragma unroll
            for (int j = 0; j < DPL; j++) acc[i][j] *= corr;
            for (int kk = 0; kk < valid; kk++) {
                const float pk = __shfl_sync(0xffffffffu, p_drop, kk);
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

// Forward entries: grid (ceil(seq/16), heads, batch), 128 threads, 4·(16d + 32(d+1) + 32d) bytes of
// dynamic shared memory; the kernel for head dimension d is attention_bf16_dpl{ceil(d/32)} (d ≤ 128).
// Dropout on the probabilities: threshold = ceil(p·2³²) (0: none), dscale = 1/(1−p), key as DropKey.
extern "C" __global__ void __launch_bounds__(128)
    attention_bf16_dpl1(bf16* ctx, const bf16* qkv, const int* lens, int seq, int heads, int d, float scale,
                        unsigned long long key, unsigned long long threshold, float dscale) {
    attention<1>(ctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_bf16_dpl2(bf16* ctx, const bf16* qkv, const int* lens, int seq, int heads, int d, float scale,
                        unsigned long long key, unsigned long long threshold, float dscale) {
    attention<2>(ctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_bf16_dpl3(bf16* ctx, const bf16* qkv, const int* lens, int seq, int heads, int d, float scale,
                        unsigned long long key, unsigned long long threshold, float dscale) {
    attention<3>(ctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_bf16_dpl4(bf16* ctx, const bf16* qkv, const int* lens, int seq, int heads, int d, float scale,
                        unsigned long long key, unsigned long long threshold, float dscale) {
    attention<4>(ctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}

// ---------------------------------------------------------------------------------------------
// Backward (recomputing the probabilities; no S×S matrix is stored). With P the probabilities,
// P̃ = P ⊙ mask/(1−p) the dropped ones (mask index ((b·heads + h)·seq + i)·seq + j, the forward's),
// O = P̃·V and dO the incoming gradient:
//   D_i = dO_i·O_i,  dS_ij = P_ij·(dP̃_ij·mask_ij/(1−p) − D_i) with dP̃_ij = dO_i·V_j,
//   dQ_i = scale·Σ_j dS_ij K_j,  dK_j = scale·Σ_i dS_ij Q_i,  dV_j = Σ_i P̃_ij dO_i.
// Two kernels, each the forward's shape with its roles swapped so that nothing needs atomics:
//   attention_backward_dq: per block of 16 queries, two passes over the keys (1: running max, sum
//     and O, hence D; 2: dQ), writes dQ and each query's (max, sum, D);
//   attention_backward_dkv: per block of 16 keys, one pass over the valid queries, recomputes
//     P from those statistics, writes dK and dV.
// Pad query rows get dQ = 0 and contribute nothing; keys past lens[b] get dK = dV = 0.

namespace {

template <int DPL>
__device__ void attention_dq(bf16* __restrict__ dqkv, float* __restrict__ stats, const bf16* __restrict__ dctx,
                             const bf16* __restrict__ qkv, const int* __restrict__ lens, int seq, int heads, int d,
                             float scale, unsigned long long key, unsigned long long threshold, float dscale) {
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * QT;
    const int hidden = heads * d, ld = 3 * hidden;
    const int len = lens[b];
    const int warp = threadIdx.x / 32, lane = lane_id();
    float* qs = dynamic_smem<float>();
    float* dos = qs + QT * d;
    float* ks = dos + QT * d;
    float* vs = ks + KT * (d + 1);
    float* dd = vs + KT * (d + 1);  // D of each of the block's queries (shared memory keeps it out of
                                    // registers, which ptxas otherwise spilled for some DPL)
    const bf16* base = qkv + (size_t)b * seq * ld + h * d;
    const bf16* dbase = dctx + (size_t)b * seq * hidden + h * d;

    for (int e = threadIdx.x; e < QT * d; e += THREADS) {
        const int q = e / d, c = e % d;
        const bool in = q0 + q < len;
        qs[e] = in ? to_f32(base[(size_t)(q0 + q) * ld + c]) : 0.f;
        dos[e] = in ? to_f32(dbase[(size_t)(q0 + q) * hidden + c]) : 0.f;
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
    const unsigned long long row0 = ((unsigned long long)(b * heads + h) * seq) * seq;

    // Streams the key tile at k0 into shared memory; returns the number of valid keys in it.
    auto load_keys = [&](int k0) {
        __syncthreads();  // the previous tile is consumed (and Q, dO are staged, the first time)
        for (int e = threadIdx.x; e < KT * d; e += THREADS) {
            const int j = e / d, c = e % d;
            const bool in = k0 + j < len;
            const bf16* row = base + (size_t)(k0 + j) * ld;
            ks[j * (d + 1) + c] = in ? to_f32(row[hidden + c]) : 0.f;
            vs[j * (d + 1) + c] = in ? to_f32(row[2 * hidden + c]) : 0.f;
        }
        __syncthreads();
        return len - k0 < KT ? len - k0 : KT;
    };
    // The scaled score of query qi against this lane's key of the tile (−inf past `valid`).
    auto score = [&](int qi, int valid) {
        if (lane >= valid) return NEG_INF;
        const float* q = qs + qi * d;
        const float* k = ks + lane * (d + 1);
        float dot = 0.f;
        for (int c = 0; c < d; c++) dot += q[c] * k[c];
        return dot * scale;
    };

    // pass 1: running max and sum, and O (dropped probabilities), as the forward
    for (int k0 = 0; any_query && k0 < len; k0 += KT) {
        const int valid = load_keys(k0);
#pragma unroll
        for (int i = 0; i < QPW; i++) {
            const int qi = warp * QPW + i;
            const float s = score(qi, valid);
            const float m_new = fmaxf(m[i], warp_max(s));
            const float p = lane < valid ? expf(s - m_new) : 0.f;
            const float corr = expf(m[i] - m_new);
            l[i] = l[i] * corr + warp_sum(p);
            m[i] = m_new;
            const float p_drop =
                lane < valid
                    ? p * dropout_factor(key, threshold, dscale, row0 + (unsigned long long)(q0 + qi) * seq + k0 + lane)
                    : 0.f;
#pragma unroll
            for (int j = 0; j < DPL; j++) acc[i][j] *= corr;
            for (int kk = 0; kk < valid; kk++) {
                const float pk = __shfl_sync(0xffffffffu, p_drop, kk);
#pragma unroll
                for (int j = 0; j < DPL; j++) {
                    const int c = lane + 32 * j;
                    if (c < d) acc[i][j] += pk * vs[kk * (d + 1) + c];
                }
            }
        }
    }
    // D_i = dO_i · O_i (O = acc / l); the accumulators start over for dQ
#pragma unroll
    for (int i = 0; i < QPW; i++) {
        const float* dout = dos + (warp * QPW + i) * d;
        float part = 0.f;
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            const int c = lane + 32 * j;
            if (c < d) part += dout[c] * acc[i][j];
            acc[i][j] = 0.f;
        }
        const float total = warp_sum(part);
        if (lane == 0) dd[warp * QPW + i] = l[i] > 0.f ? total / l[i] : 0.f;
    }
    __syncwarp();

    // pass 2: dS and dQ
    for (int k0 = 0; any_query && k0 < len; k0 += KT) {
        const int valid = load_keys(k0);
#pragma unroll
        for (int i = 0; i < QPW; i++) {
            const int qi = warp * QPW + i;
            const float s = score(qi, valid);
            float ds = 0.f;
            if (lane < valid) {
                const float keep = dropout_factor(key, threshold, dscale, row0 + (unsigned long long)(q0 + qi) * seq + k0 + lane);
                const float p = expf(s - m[i]) / l[i];
                const float* v = vs + lane * (d + 1);
                const float* dout = dos + qi * d;
                float dp = 0.f;
                for (int c = 0; c < d; c++) dp += dout[c] * v[c];
                ds = p * (dp * keep - dd[qi]);
            }
            for (int kk = 0; kk < valid; kk++) {
                const float g = __shfl_sync(0xffffffffu, ds, kk);
#pragma unroll
                for (int j = 0; j < DPL; j++) {
                    const int c = lane + 32 * j;
                    if (c < d) acc[i][j] += g * ks[kk * (d + 1) + c];
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < QPW; i++) {
        const int q = q0 + warp * QPW + i;
        if (q >= seq) continue;
        const bool in = q < len;
        bf16* out = dqkv + ((size_t)b * seq + q) * ld + h * d;
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            const int c = lane + 32 * j;
            if (c < d) out[c] = to_bf16(in ? acc[i][j] * scale : 0.f);
        }
        if (lane == 0) {
            float* st = stats + (((size_t)b * heads + h) * seq + q) * 3;
            st[0] = in ? m[i] : 0.f;
            st[1] = in ? l[i] : 1.f;
            st[2] = in ? dd[warp * QPW + i] : 0.f;
        }
    }
}

template <int DPL>
__device__ void attention_dkv(bf16* __restrict__ dqkv, const float* __restrict__ stats,
                              const bf16* __restrict__ dctx, const bf16* __restrict__ qkv,
                              const int* __restrict__ lens, int seq, int heads, int d, float scale,
                              unsigned long long key, unsigned long long threshold, float dscale) {
    const int b = blockIdx.z, h = blockIdx.y, j0 = blockIdx.x * QT;  // QT keys per block
    const int hidden = heads * d, ld = 3 * hidden;
    const int len = lens[b];
    const int warp = threadIdx.x / 32, lane = lane_id();
    float* ks = dynamic_smem<float>();
    float* vs = ks + QT * d;
    float* qs = vs + QT * d;
    float* dos = qs + KT * (d + 1);
    float* st = dos + KT * (d + 1);  // [KT][3]
    const bf16* base = qkv + (size_t)b * seq * ld + h * d;
    const bf16* dbase = dctx + (size_t)b * seq * hidden + h * d;
    const float* sbase = stats + ((size_t)b * heads + h) * seq * 3;

    for (int e = threadIdx.x; e < QT * d; e += THREADS) {
        const int j = e / d, c = e % d;
        const bool in = j0 + j < len;
        ks[e] = in ? to_f32(base[(size_t)(j0 + j) * ld + hidden + c]) : 0.f;
        vs[e] = in ? to_f32(base[(size_t)(j0 + j) * ld + 2 * hidden + c]) : 0.f;
    }

    float dk[QPW][DPL], dv[QPW][DPL];
#pragma unroll
    for (int i = 0; i < QPW; i++)
#pragma unroll
        for (int j = 0; j < DPL; j++) dk[i][j] = dv[i][j] = 0.f;
    const bool any_key = j0 < len;
    const unsigned long long row0 = ((unsigned long long)(b * heads + h) * seq) * seq;

    for (int i0 = 0; any_key && i0 < len; i0 += KT) {
        __syncthreads();
        for (int e = threadIdx.x; e < KT * d; e += THREADS) {
            const int i = e / d, c = e % d;
            const bool in = i0 + i < len;
            qs[i * (d + 1) + c] = in ? to_f32(base[(size_t)(i0 + i) * ld + c]) : 0.f;
            dos[i * (d + 1) + c] = in ? to_f32(dbase[(size_t)(i0 + i) * hidden + c]) : 0.f;
        }
        for (int e = threadIdx.x; e < KT * 3; e += THREADS) st[e] = i0 + e / 3 < len ? sbase[(size_t)i0 * 3 + e] : 0.f;
        __syncthreads();
        const int valid = len - i0 < KT ? len - i0 : KT;
#pragma unroll
        for (int kj = 0; kj < QPW; kj++) {
            const int jl = warp * QPW + kj, j = j0 + jl;
            // lane = query i0 + lane
            float ds = 0.f, pd = 0.f;
            if (lane < valid && j < len) {
                const float* q = qs + lane * (d + 1);
                const float* dout = dos + lane * (d + 1);
                const float* k = ks + jl * d;
                const float* v = vs + jl * d;
                float dot = 0.f, dp = 0.f;
                for (int c = 0; c < d; c++) {
                    dot += q[c] * k[c];
                    dp += dout[c] * v[c];
                }
                const float p = expf(dot * scale - st[lane * 3]) / st[lane * 3 + 1];
                const float keep = dropout_factor(key, threshold, dscale, row0 + (unsigned long long)(i0 + lane) * seq + j);
                pd = p * keep;
                ds = p * (dp * keep - st[lane * 3 + 2]);
            }
            for (int ii = 0; ii < valid; ii++) {
                const float g = __shfl_sync(0xffffffffu, ds, ii);
                const float w = __shfl_sync(0xffffffffu, pd, ii);
#pragma unroll
                for (int jj = 0; jj < DPL; jj++) {
                    const int c = lane + 32 * jj;
                    if (c < d) {
                        dk[kj][jj] += g * qs[ii * (d + 1) + c];
                        dv[kj][jj] += w * dos[ii * (d + 1) + c];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int kj = 0; kj < QPW; kj++) {
        const int j = j0 + warp * QPW + kj;
        if (j >= seq) continue;
        const bool in = j < len;
        bf16* out = dqkv + ((size_t)b * seq + j) * ld + h * d;
#pragma unroll
        for (int jj = 0; jj < DPL; jj++) {
            const int c = lane + 32 * jj;
            if (c < d) {
                out[hidden + c] = to_bf16(in ? dk[kj][jj] * scale : 0.f);
                out[2 * hidden + c] = to_bf16(in ? dv[kj][jj] : 0.f);
            }
        }
    }
}

}  // namespace

// Backward entries (see above). dq: grid (ceil(seq/16), heads, batch), 128 threads,
// 4·(32d + 64(d+1) + 96) bytes (the last 16 floats hold D); writes the q third of dqkv [B·S, 3H] and stats [B·heads·S·3] (f32).
// dkv: same grid over keys, same shared memory; writes the k and v thirds. Dropout:
// threshold = ceil(p·2³²) (0: none), dscale = 1/(1−p), key as DropKey. The dq kernels carry
// __launch_bounds__(128, 1): with the plain bound ptxas traded a 4-byte spill for 64 registers, and
// a spill is a build error here.
extern "C" __global__ void __launch_bounds__(128, 1)
    attention_backward_dq_dpl1(bf16* dqkv, float* stats, const bf16* dctx, const bf16* qkv, const int* lens, int seq,
                                 int heads, int d, float scale, unsigned long long key, unsigned long long threshold,
                                 float dscale) {
    attention_dq<1>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dkv_dpl1(bf16* dqkv, const float* stats, const bf16* dctx, const bf16* qkv, const int* lens,
                                  int seq, int heads, int d, float scale, unsigned long long key,
                                  unsigned long long threshold, float dscale) {
    attention_dkv<1>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128, 1)
    attention_backward_dq_dpl2(bf16* dqkv, float* stats, const bf16* dctx, const bf16* qkv, const int* lens, int seq,
                                 int heads, int d, float scale, unsigned long long key, unsigned long long threshold,
                                 float dscale) {
    attention_dq<2>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dkv_dpl2(bf16* dqkv, const float* stats, const bf16* dctx, const bf16* qkv, const int* lens,
                                  int seq, int heads, int d, float scale, unsigned long long key,
                                  unsigned long long threshold, float dscale) {
    attention_dkv<2>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128, 1)
    attention_backward_dq_dpl3(bf16* dqkv, float* stats, const bf16* dctx, const bf16* qkv, const int* lens, int seq,
                                 int heads, int d, float scale, unsigned long long key, unsigned long long threshold,
                                 float dscale) {
    attention_dq<3>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dkv_dpl3(bf16* dqkv, const float* stats, const bf16* dctx, const bf16* qkv, const int* lens,
                                  int seq, int heads, int d, float scale, unsigned long long key,
                                  unsigned long long threshold, float dscale) {
    attention_dkv<3>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128, 1)
    attention_backward_dq_dpl4(bf16* dqkv, float* stats, const bf16* dctx, const bf16* qkv, const int* lens, int seq,
                                 int heads, int d, float scale, unsigned long long key, unsigned long long threshold,
                                 float dscale) {
    attention_dq<4>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dkv_dpl4(bf16* dqkv, const float* stats, const bf16* dctx, const bf16* qkv, const int* lens,
                                  int seq, int heads, int d, float scale, unsigned long long key,
                                  unsigned long long threshold, float dscale) {
    attention_dkv<4>(dqkv, stats, dctx, qkv, lens, seq, heads, d, scale, key, threshold, dscale);
}
