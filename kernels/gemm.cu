// The linear layer: out[M,N] = act(x[M,K] · w[N,K]ᵀ + bias) + residual, bf16 in and out, f32
// accumulation on the tensor cores (mma.sync m16n8k16), w stored [out, in] as in PyTorch.
//
// Tiling: a 128-thread block computes a 64x64 tile of out as 2x2 warps of 32x32, walking K in
// slices of 32 through a 3-stage cp.async pipeline in dynamic shared memory (rows padded to 40
// elements: 16-byte aligned, and the 8 rows an ldmatrix reads fall in distinct banks). Fragments
// come from ldmatrix x4. Edges in M, N and K are zero-filled (cp.async src-size 0), so any M, N
// work; the cp.async path needs K % 8 == 0 (16-byte rows), and `gemm_bf16_rowwise_k` loads the
// tiles with plain guarded loads for any K (e.g. an adapter's up-projection with a bottleneck of 4).
#include "activation.cuh"
#include "arch.cuh"

using namespace admix;

namespace {

constexpr int BM = 64, BN = 64, BK = 32, STAGES = 3, THREADS = 128;
constexpr int LDS = BK + 8;  // shared-memory row stride, elements
constexpr int STAGE_ELEMS = (BM + BN) * LDS;

// Loads the BK-slice starting at k0 of `rows` rows of src [nrows, K] starting at row r0 into dst.
template <bool ASYNC, int ROWS>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int r0, int nrows, int k0, int K) {
    if (ASYNC) {
        // ROWS x BK elements = ROWS * 4 chunks of 16 bytes
        for (int c = threadIdx.x; c < ROWS * (BK / 8); c += THREADS) {
            const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
            const int gr = r0 + r, gk = k0 + kc;
            const bool in = gr < nrows && gk < K;
            cp_async_16(dst + r * LDS + kc, in ? src + (size_t)gr * K + gk : src, in ? 16 : 0);
        }
    } else {
        for (int e = threadIdx.x; e < ROWS * BK; e += THREADS) {
            const int r = e / BK, k = e % BK;
            const int gr = r0 + r, gk = k0 + k;
            dst[r * LDS + k] = (gr < nrows && gk < K) ? src[(size_t)gr * K + gk] : to_bf16(0.f);
        }
    }
}

template <bool ASYNC>
__device__ void gemm(bf16* __restrict__ out, const bf16* __restrict__ x, const bf16* __restrict__ w,
                     const bf16* __restrict__ bias, const bf16* __restrict__ residual, int M, int N, int K,
                     int act) {
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

    auto stage_a = [&](int s) { return smem + s * STAGE_ELEMS; };
    auto stage_b = [&](int s) { return smem + s * STAGE_ELEMS + BM * LDS; };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) {
            load_tile<ASYNC, BM>(stage_a(s), x, bm, M, s * BK, K);
            load_tile<ASYNC, BN>(stage_b(s), w, bn, N, s * BK, K);
        }
        cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // slice kt is visible to all; everyone is done with slice kt-1
        const int next = kt + STAGES - 1;
        if (next < ktiles) {
            load_tile<ASYNC, BM>(stage_a(next % STAGES), x, bm, M, next * BK, K);
            load_tile<ASYNC, BN>(stage_b(next % STAGES), w, bn, N, next * BK, K);
        }
        cp_async_commit();

        const bf16* as = stage_a(kt % STAGES);
        const bf16* bs = stage_b(kt % STAGES);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int row = wm + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int col = kk + (lane >> 4) * 8;
                ldmatrix_x4(a[i], as + row * LDS + col);
            }
#pragma unroll
            for (int p = 0; p < 2; p++) {
                const int n = wn + p * 16 + (lane & 7) + (lane >> 4) * 8;
                const int k = kk + ((lane >> 3) & 1) * 8;
                uint32_t r[4];
                ldmatrix_x4(r, bs + n * LDS + k);
                b[2 * p][0] = r[0];
                b[2 * p][1] = r[1];
                b[2 * p + 1][0] = r[2];
                b[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_bf16_16816(acc[i][j], a[i], b[j], acc[i][j]);
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
                    float v = acc[i][j][r];
                    if (bias) v += to_f32(bias[col]);
                    v = activate(v, act);
                    if (residual) v += to_f32(residual[(size_t)row * N + col]);
                    out[(size_t)row * N + col] = to_bf16(v);
                }
            }
}

}  // namespace

// Launch: grid (ceil(N/64), ceil(M/64)), 128 threads, STAGES·(64+64)·40·2 = 30720 bytes of
// dynamic shared memory. bias and residual may be null. Needs K % 8 == 0 and 16-byte aligned x, w.
extern "C" __global__ void __launch_bounds__(128) gemm_bf16(bf16* out, const bf16* x, const bf16* w, const bf16* bias,
                                                            const bf16* residual, int M, int N, int K, int act) {
    gemm<true>(out, x, w, bias, residual, M, N, K, act);
}

// The same for any K (guarded scalar tile loads instead of cp.async).
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_rowwise_k(bf16* out, const bf16* x, const bf16* w, const bf16* bias, const bf16* residual, int M,
                        int N, int K, int act) {
    gemm<false>(out, x, w, bias, residual, M, N, K, act);
}
