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
