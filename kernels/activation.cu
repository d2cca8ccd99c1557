// Activations on bf16 (f32 arithmetic) and their backward; the functions themselves are
// activation.cuh's, shared with the GEMM epilogues. Grid-stride loops of 256-thread blocks.
#include "activation.cuh"
#include "arch.cuh"

using namespace admix;

// out = act(x)
extern "C" __global__ void activation_bf16(bf16* out, const bf16* x, long long n, int act) {
    GRID_STRIDE(i, n) out[i] = to_bf16(activate(to_f32(x[i]), act));
}

// dy ← dy · act'(pre), in place.
extern "C" __global__ void activation_backward_bf16(bf16* dy, const bf16* pre, long long n, int act) {
    GRID_STRIDE(i, n) dy[i] = to_bf16(to_f32(dy[i]) * activate_grad(to_f32(pre[i]), act));
}
