// The linear layer and its backward, one tensor-core GEMM in four forms:
//   forward   out[M,N] = act(x[M,K] · w[N,K]ᵀ + bias) + residual        (bf16 out)
//   dX        dx[M,K]  = dy[M,N] · w[N,K]                                (bf16 out; w read transposed)
//   dW        dw[N,K] += dy[M,N]ᵀ · x[M,K]                               (f32 accumulate; both transposed)
// In general C[m,n] = Σ_k A(m,k)·B(n,k), where A(m,k) is a[m·lda + k], or a[k·lda + m] when A is
// stored transposed (TA), and likewise B (TB). bf16 operands, f32 accumulation (mma.sync m16n8k16).
//
// Tiling: a 128-thread block computes a 64x64 tile of C as 2x2 warps of 32x32, walking K in slices
// of 32 through a 3-stage cp.async pipeline in dynamic shared memory. A slice of an operand stored
// k-contiguous is kept [64][32+8] and read by ldmatrix; one stored transposed is kept [32][64+8]
// and read by ldmatrix.trans, which hands out the same fragments. Rows are padded so that the 8
// rows an ldmatrix reads fall in distinct banks. Edges in M, N and K are zero-filled (cp.async
// src-size), so any M, N, K work; the cp.async path needs leading dimensions that are multiples of
// 8 (16-byte rows), the `_rowwise` entries load tiles with plain guarded loads for any shape.
#include "activation.cuh"
#include "arch.cuh"

using namespace admix;

namespace {

constexpr int BM = 64, BN = 64, BK = 32, STAGES = 3, THREADS = 128;
constexpr int LDS = BK + 8;       // row stride of a k-contiguous tile [64][40]
constexpr int LDS_T = BM + 8;     // row stride of a transposed tile [32][72]
constexpr int TILE_ELEMS = 2560;  // max(64·40, 32·72)
constexpr int STAGE_ELEMS = 2 * TILE_ELEMS;

enum Out { STORE_BF16 = 0, ACCUMULATE_F32 = 1 };

// Loads the K-slice [k0, k0+BK) of the 64 rows r0.. of operand `src` (nrows x K logically) into dst.
template <bool TRANS, bool ASYNC>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int ld, int r0, int nrows, int k0, int K) {
    if (!TRANS) {
        if (ASYNC) {
            for (int c = threadIdx.x; c < 64 * (BK / 8); c += THREADS) {
                const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
                const int gr = r0 + r, gk = k0 + kc;
                const int bytes = (gr < nrows && gk < K) ? 2 * min(8, K - gk) : 0;
                cp_async_16(dst + r * LDS + kc, bytes ? src + (size_t)gr * ld + gk : src, bytes);
            }
        } else {
            for (int e = threadIdx.x; e < 64 * BK; e += THREADS) {
                const int r = e / BK, k = e % BK, gr = r0 + r, gk = k0 + k;
                dst[r * LDS + k] = (gr < nrows && gk < K) ? src[(size_t)gr * ld + gk] : to_bf16(0.f);
            }
        }
    } else {
        // stored [K][ld]: slice rows are k, columns the 64 rows of the tile
        if (ASYNC) {
            for (int c = threadIdx.x; c < BK * 8; c += THREADS) {
                const int k = c / 8, rc = (c % 8) * 8;
                const int gk = k0 + k, gr = r0 + rc;
                const int bytes = (gk < K && gr < nrows) ? 2 * min(8, nrows - gr) : 0;
                cp_async_16(dst + k * LDS_T + rc, bytes ? src + (size_t)gk * ld + gr : src, bytes);
            }
        } else {
            for (int e = threadIdx.x; e < BK * 64; e += THREADS) {
                const int k = e / 64, r = e % 64, gk = k0 + k, gr = r0 + r;
                dst[k * LDS_T + r] = (gk < K && gr < nrows) ? src[(size_t)gk * ld + gr] : to_bf16(0.f);
            }
        }
    }
}

// A fragments (16 rows x 16 k) for rows `row0`.. at k offset kk of a tile.
template <bool TRANS>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* tile, int row0, int kk, int lane) {
    if (!TRANS) {
        const int row = row0 + (lane & 7) + ((lane >> 3) & 1) * 8, col = kk + (lane >> 4) * 8;
        ldmatrix_x4(a, tile + row * LDS + col);
    } else {
        const int k = kk + (lane >> 4) * 8 + (lane & 7), m = row0 + ((lane >> 3) & 1) * 8;
        ldmatrix_x4_trans(a, tile + k * LDS_T + m);
    }
}

// B fragments for two n8 tiles (16 columns n0.. x 16 k): b[0..1] for n0..n0+7, b[2..3] for the next 8.
template <bool TRANS>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const bf16* tile, int n0, int kk, int lane) {
    if (!TRANS) {
        const int n = n0 + (lane & 7) + (lane >> 4) * 8, k = kk + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(b, tile + n * LDS + k);
    } else {
        const int k = kk + ((lane >> 3) & 1) * 8 + (lane & 7), n = n0 + (lane >> 4) * 8;
        ldmatrix_x4_trans(b, tile + k * LDS_T + n);
    }
}

template <bool TA, bool TB, bool ASYNC, int OUT>
__device__ void gemm(void* __restrict__ out, const bf16* __restrict__ a, const bf16* __restrict__ b,
                     const bf16* __restrict__ bias, const bf16* __restrict__ residual, int M, int N, int K,
                     int lda, int ldb, int act) {
    bf16* smem = dynamic_smem<bf16>();
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    const int warp = threadIdx.x / 32, lane = lane_id();
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    const int ktiles = (K + BK - 1) / BK;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

    auto load_stage = [&](int s, int kt) {
        load_tile<TA, ASYNC>(smem + s * STAGE_ELEMS, a, lda, bm, M, kt * BK, K);
        load_tile<TB, ASYNC>(smem + s * STAGE_ELEMS + TILE_ELEMS, b, ldb, bn, N, kt * BK, K);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // slice kt is visible to all; everyone is done with slice kt-1
        if (kt + STAGES - 1 < ktiles) load_stage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
        cp_async_commit();

        const bf16* as = smem + (kt % STAGES) * STAGE_ELEMS;
        const bf16* bs = as + TILE_ELEMS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t fa[2][4], fb[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) load_a<TA>(fa[i], as, wm + i * 16, kk, lane);
#pragma unroll
            for (int p = 0; p < 2; p++) {
                uint32_t r[4];
                load_b<TB>(r, bs, wn + p * 16, kk, lane);
                fb[2 * p][0] = r[0];
                fb[2 * p][1] = r[1];
                fb[2 * p + 1][0] = r[2];
                fb[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_bf16_16816(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    }
    cp_async_wait<0>();

    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int row = bm + wm + i * 16 + g + 8 * (r >> 1);
                const int col = bn + wn + j * 8 + 2 * t + (r & 1);
                if (row < M && col < N) {
                    const size_t o = (size_t)row * N + col;
                    if (OUT == ACCUMULATE_F32) {
                        static_cast<float*>(out)[o] += acc[i][j][r];
                    } else {
                        float v = acc[i][j][r];
                        if (bias) v += to_f32(bias[col]);
                        v = activate(v, act);
                        if (residual) v += to_f32(residual[o]);
                        static_cast<bf16*>(out)[o] = to_bf16(v);
                    }
                }
            }
}

}  // namespace

// Every entry: grid (ceil(N/64), ceil(M/64)), 128 threads, 3·2·2560·2 = 30720 bytes of dynamic
// shared memory. bias and residual may be null (the f32-accumulating forms ignore them and `act`).

// forward: out = act(x·wᵀ + bias) + residual
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16(void* out, const bf16* a, const bf16* b, const bf16* bias, const bf16* residual, int M, int N, int K,
              int lda, int ldb, int act) {
    gemm<false, false, true, STORE_BF16>(out, a, b, bias, residual, M, N, K, lda, ldb, act);
}
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_rowwise(void* out, const bf16* a, const bf16* b, const bf16* bias, const bf16* residual, int M, int N,
                      int K, int lda, int ldb, int act) {
    gemm<false, false, false, STORE_BF16>(out, a, b, bias, residual, M, N, K, lda, ldb, act);
}
// dX = dy·w (w stored [N_red][K_out]: B transposed)
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_tb(void* out, const bf16* a, const bf16* b, const bf16* bias, const bf16* residual, int M, int N, int K,
                 int lda, int ldb, int act) {
    gemm<false, true, true, STORE_BF16>(out, a, b, bias, residual, M, N, K, lda, ldb, act);
}
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_tb_rowwise(void* out, const bf16* a, const bf16* b, const bf16* bias, const bf16* residual, int M,
                         int N, int K, int lda, int ldb, int act) {
    gemm<false, true, false, STORE_BF16>(out, a, b, bias, residual, M, N, K, lda, ldb, act);
}
// dW += dyᵀ·x (both stored [M_red][·]: A and B transposed), f32 accumulation
extern "C" __global__ void __launch_bounds__(128)
    gemm_f32acc_tab(void* out, const bf16* a, const bf16* b, const bf16* bias, const bf16* residual, int M, int N,
                    int K, int lda, int ldb, int act) {
    gemm<true, true, true, ACCUMULATE_F32>(out, a, b, bias, residual, M, N, K, lda, ldb, act);
}
extern "C" __global__ void __launch_bounds__(128)
    gemm_f32acc_tab_rowwise(void* out, const bf16* a, const bf16* b, const bf16* bias, const bf16* residual, int M,
                            int N, int K, int lda, int ldb, int act) {
    gemm<true, true, false, ACCUMULATE_F32>(out, a, b, bias, residual, M, N, K, lda, ldb, act);
}

// ---- the bias gradient ----

// db[n] += Σ_m dy[m, n] (bias gradients): one thread per column, coalesced across the block.
// grid ceil(N/256), 256 threads.
extern "C" __global__ void col_sum_acc_f32(float* db, const bf16* dy, int M, int N) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float s = 0.f;
    for (int m = 0; m < M; m++) s += to_f32(dy[(size_t)m * N + c]);
    db[c] += s;
}
