// Attack steps on the word-row perturbation δ (docs/attacks.md).
//
// pgd_step_f32: one projected ascent step of PGD, per sequence over its valid rows (pad rows of δ
// are set to zero):
//   L∞ (norm 0): δ ← clip(δ + α·sign(g), −ε, ε)
//   L2 (norm 1): δ ← δ + α·g/‖g‖₂, then δ ← δ·min(1, ε/‖δ‖₂)
// One block of 256 threads per sequence; the two L2 norms are block reductions in f64, as the CPU
// reference computes them. FGSM and FGM are this step from δ = 0 with α = ε.
#include "arch.cuh"

using namespace admix;

namespace {

// Σ over the block of v (f64), returned to every thread. Uses 32 doubles of static shared memory.
__device__ __forceinline__ double block_sum(double v) {
    __shared__ double partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();  // partial may still be read by a previous call
    if (lane_id() == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < (int)blockDim.x / 32; w++) t += partial[w];
    return t;
}

__device__ __forceinline__ float sign_of(float g) { return g > 0.f ? 1.f : (g < 0.f ? -1.f : 0.f); }

}  // namespace

// delta, grad: [batch·seq][cols] (delta f32, grad bf16: the input gradient of embed_backward).
// grid batch, 256 threads.
extern "C" __global__ void pgd_step_f32(float* delta, const bf16* grad, const int* lens, int seq, int cols, int norm,
                                        float alpha, float eps) {
    const int b = blockIdx.x;
    const long long start = (long long)b * seq * cols;
    const long long valid = (long long)lens[b] * cols, total = (long long)seq * cols;
    float* d = delta + start;
    const bf16* g = grad + start;
    for (long long i = valid + threadIdx.x; i < total; i += blockDim.x) d[i] = 0.f;
    if (norm == 0) {
        for (long long i = threadIdx.x; i < valid; i += blockDim.x)
            d[i] = fminf(fmaxf(d[i] + alpha * sign_of(to_f32(g[i])), -eps), eps);
        return;
    }
    double gg = 0.0;
    for (long long i = threadIdx.x; i < valid; i += blockDim.x) {
        const double v = to_f32(g[i]);
        gg += v * v;
    }
    const double gnorm = sqrt(block_sum(gg));
    const float step = gnorm > 0.0 ? (float)(alpha / gnorm) : 0.f;
    double dd = 0.0;
    for (long long i = threadIdx.x; i < valid; i += blockDim.x) {
        const float v = d[i] + step * to_f32(g[i]);
        d[i] = v;
        dd += (double)v * v;
    }
    const double dnorm = sqrt(block_sum(dd));
    if (dnorm <= eps) return;
    const float scale = (float)(eps / dnorm);
    for (long long i = threadIdx.x; i < valid; i += blockDim.x) d[i] *= scale;
}

// ---------------------------------------------------------------------------------------------
// HotFlip's masked top-k. prod is the scoring GEMM's output [2·sites][vocab] (bf16): rows 0..sites
// are G·Eᵀ (each site's gradient against every vocabulary row), rows sites..2·sites the dot
// products e_old·E[v]. For site s the gain of entry v is prod[s][v] − base[s]; v qualifies when
// allowed[v] != 0, v != old[s] and prod[sites + s][v] / (old_norm[s]·norm[v]) ≥ min_cos. Writes
// the k best (gain, v), best first, to out_gain/out_id [sites][k] (v = −1 past the last
// qualifying entry). One block of 256 threads per site: each thread keeps its own best k of a
// strided slice, then k rounds of a block arg-max merge them. k ≤ TOPK_MAX.

#define TOPK_MAX 32

namespace {

// Largest (gain, id) of the block, ties to the smaller id; returned to every thread.
__device__ __forceinline__ void block_argmax(float& g, int& id) {
    __shared__ float sg[32];
    __shared__ int sid[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float og = __shfl_xor_sync(0xffffffffu, g, o);
        const int oid = __shfl_xor_sync(0xffffffffu, id, o);
        if (og > g || (og == g && oid >= 0 && (id < 0 || oid < id))) {
            g = og;
            id = oid;
        }
    }
    __syncthreads();  // sg/sid may still be read by a previous call
    if (lane_id() == 0) {
        sg[threadIdx.x / 32] = g;
        sid[threadIdx.x / 32] = id;
    }
    __syncthreads();
    g = sg[0];
    id = sid[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) {
        if (sg[w] > g || (sg[w] == g && sid[w] >= 0 && (id < 0 || sid[w] < id))) {
            g = sg[w];
            id = sid[w];
        }
    }
}

}  // namespace

// grid sites, 256 threads.
extern "C" __global__ void hotflip_topk_bf16(float* out_gain, int* out_id, const bf16* prod, const float* base,
                                             const int* old, const float* old_norm, const float* norm,
                                             const unsigned char* allowed, int sites, int vocab, float min_cos,
                                             int k) {
    const int s = blockIdx.x;
    const bf16* gains = prod + (size_t)s * vocab;
    const bf16* dots = prod + (size_t)(sites + s) * vocab;
    float tg[TOPK_MAX];
    int tid[TOPK_MAX];
    int n = 0;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        if (!allowed[v] || v == old[s]) continue;
        if (to_f32(dots[v]) / (old_norm[s] * norm[v]) < min_cos) continue;
        const float g = to_f32(gains[v]) - base[s];
        if (n == k && !(g > tg[k - 1])) continue;
        // insert into this thread's sorted list (v grows, so ties keep the smaller id first)
        int at = n < k ? n++ : k - 1;
        while (at > 0 && tg[at - 1] < g) {
            tg[at] = tg[at - 1];
            tid[at] = tid[at - 1];
            at--;
        }
        tg[at] = g;
        tid[at] = v;
    }
    int head = 0;
    for (int r = 0; r < k; r++) {
        float g = head < n ? tg[head] : -3.402823466e38f;  // -FLT_MAX: nothing left
        int id = head < n ? tid[head] : -1;
        block_argmax(g, id);
        if (head < n && tid[head] == id) head++;
        if (threadIdx.x == 0) {
            out_gain[(size_t)s * k + r] = g;
            out_id[(size_t)s * k + r] = id;
        }
    }
}
