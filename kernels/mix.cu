// AdpMixup's fused adapter interpolation (docs/mixup.md).
//
// Per-sample weight-space mixing of m adapters, θ(β) = Σᵢ βᵢ θᵢ, is exact without materialising a
// mixed weight per sample: every projection is linear, so (Σᵢ βᵢ Wᵢ)·z + Σᵢ βᵢ bᵢ = Σᵢ βᵢ (Wᵢ·z + bᵢ).
// One GEMM with the m weight matrices stacked gives y = [W₀z+b₀ | … | W₋₁z+b₋₁] for every row;
// this kernel blends it per row with that row's β, then applies the activation and the residual:
//   out[r, j] = act(Σᵢ beta[r·m + i]·y[r, i·n + j]) + residual[r, j]
// An adapter's forward is two such pairs (down projection + blend + activation, up projection +
// blend + residual); the head's two layers are two more.
//
// grid rows, 128 threads; m·4 bytes of dynamic shared memory. residual may be null.
#include "activation.cuh"
#include "arch.cuh"

using namespace admix;

extern "C" __global__ void adapter_mix_bf16(bf16* out, const bf16* y, const float* beta, const bf16* residual, int n,
                                            int m, int act) {
    float* b = dynamic_smem<float>();
    const long long r = blockIdx.x;
    for (int i = threadIdx.x; i < m; i += blockDim.x) b[i] = beta[r * m + i];
    __syncthreads();
    const bf16* yr = y + r * (long long)m * n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float s = 0.f;
        for (int i = 0; i < m; i++) s += b[i] * to_f32(yr[(long long)i * n + j]);
        s = activate(s, act);
        if (residual) s += to_f32(residual[r * n + j]);
        out[r * n + j] = to_bf16(s);
    }
}
