// Conformance kernels: one small kernel per primitive of arch.cuh and per warp intrinsic, each
// writing what every lane received so that the host can check it against the scalar layout rule
// (src/backend/cuda/conformance.rs). The same kernels and checks run on the emulator in
// `cargo test` and on a real GPU in scripts/gpu-check: only the GPU run proves that the
// emulator's transcription of the PTX ISA matches the hardware.
#include "arch.cuh"

using namespace admix;

// d = a·b + c with fragments gathered straight from global memory by the documented layout rule:
// a [16][16] row-major, b [16][8] (k-major), c and d [16][8]. One warp.
extern "C" __global__ void conf_mma(float* d, const bf16* a, const bf16* b, const float* c) {
    const int lane = lane_id(), g = lane / 4, t = lane % 4;
    uint32_t ra[4], rb[2];
    float rc[4], rd[4];
    for (int r = 0; r < 4; r++) {
        const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
        ra[r] = (uint32_t)bf16_bits(a[row * 16 + col]) | ((uint32_t)bf16_bits(a[row * 16 + col + 1]) << 16);
    }
    for (int r = 0; r < 2; r++) {
        const int k = 2 * t + 8 * r;
        rb[r] = (uint32_t)bf16_bits(b[k * 8 + g]) | ((uint32_t)bf16_bits(b[(k + 1) * 8 + g]) << 16);
    }
    for (int r = 0; r < 4; r++) rc[r] = c[(g + 8 * (r >> 1)) * 8 + 2 * t + (r & 1)];
    mma_bf16_16816(rd, ra, rb, rc);
    for (int r = 0; r < 4; r++) d[(g + 8 * (r >> 1)) * 8 + 2 * t + (r & 1)] = rd[r];
}

// ldmatrix in all six forms. `src` is 32 rows of 8 bf16 (16 bytes each); lane l points at row
// perm[l]. out[form][lane][4] holds the registers each lane received (unused ones untouched).
// Forms: 0 x1, 1 x2, 2 x4, 3 x1.trans, 4 x2.trans, 5 x4.trans. One warp.
extern "C" __global__ void conf_ldmatrix(uint32_t* out, const bf16* src, const int* perm) {
    bf16* tile = dynamic_smem<bf16>();
    const int lane = lane_id();
    for (int i = 0; i < 8; i++) tile[lane * 8 + i] = src[lane * 8 + i];
    __syncwarp();
    const bf16* row = tile + perm[lane] * 8;
    uint32_t r1, r2[2], r4[4];
    uint32_t* o = out + lane * 4;
    ldmatrix_x1(r1, row);
    o[0] = r1;
    ldmatrix_x2(r2, row);
    o += 128;
    for (int j = 0; j < 2; j++) o[j] = r2[j];
    ldmatrix_x4(r4, row);
    o += 128;
    for (int j = 0; j < 4; j++) o[j] = r4[j];
    ldmatrix_x1_trans(r1, row);
    o += 128;
    o[0] = r1;
    ldmatrix_x2_trans(r2, row);
    o += 128;
    for (int j = 0; j < 2; j++) o[j] = r2[j];
    ldmatrix_x4_trans(r4, row);
    o += 128;
    for (int j = 0; j < 4; j++) o[j] = r4[j];
}

// Warp shuffles and votes, including two half-warps shuffling concurrently under different masks.
// out[test][lane], 9 tests; in[lane] are the lanes' values. One warp.
extern "C" __global__ void conf_shuffle(int* out, const int* in) {
    const int lane = lane_id();
    const int v = in[lane];
    out[0 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
    out[1 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 3);
    out[2 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 7);
    out[3 * 32 + lane] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32);
    out[4 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 2, 8);
    out[5 * 32 + lane] = __shfl_sync(0xffffffffu, v, 3, 16);
    if (lane < 16)
        out[6 * 32 + lane] = __shfl_xor_sync(0x0000ffffu, v, 1);
    else
        out[6 * 32 + lane] = __shfl_xor_sync(0xffff0000u, v, 2);
    out[7 * 32 + lane] = (int)__ballot_sync(0xffffffffu, v % 3 == 0);
    out[8 * 32 + lane] = __any_sync(0xffffffffu, v == in[31]) + 2 * __all_sync(0xffffffffu, v > -1000000);
}

// cp.async with every src-size 0..16 (lane l copies min(l, 16) bytes of its 16-byte chunk), two
// commit groups, wait_group 1 then wait_group 0. out: [2][32][16] bytes: the first group's chunks
// (read after wait_group<1>) and the second group's (after wait_group<0>). One warp.
extern "C" __global__ void conf_cp_async(unsigned char* out, const unsigned char* src) {
    unsigned char* smem = dynamic_smem<unsigned char>();
    const int lane = lane_id();
    const int bytes = lane < 16 ? lane : 16;
    cp_async_16(smem + lane * 16, src + lane * 16, bytes);
    cp_async_commit();
    cp_async_16(smem + 512 + lane * 16, src + 512 + lane * 16, 16 - (bytes == 16 ? 0 : bytes));
    cp_async_commit();
    cp_async_wait<1>();
    for (int i = 0; i < 16; i++) out[lane * 16 + i] = smem[lane * 16 + i];
    cp_async_wait<0>();
    for (int i = 0; i < 16; i++) out[512 + lane * 16 + i] = smem[512 + lane * 16 + i];
}

// f32 → bf16 rounding of the device (or the emulator), for bit-exact comparison with the host's
// round-to-nearest-even: out[i] = bits(bf16(in[i])).
extern "C" __global__ void conf_bf16_round(uint16_t* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_bits(to_bf16(in[i]));
}
