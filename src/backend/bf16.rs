//! Host-side bf16 bits: round-to-nearest-even like `__float2bfloat16_rn` (NaN → 0x7fff). The one
//! rounding rule of the host: the CUDA backend's uploads and the CPU backend's bf16 GEMM use it,
//! and the kernels' emulator and the GPU check compare the device's rounding with it.

pub fn from_f32(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return 0x7fff;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

pub fn to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

pub fn from_slice(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| from_f32(v)).collect()
}

pub fn to_vec(h: &[u16]) -> Vec<f32> {
    h.iter().map(|&v| to_f32(v)).collect()
}

#[cfg(test)]
mod tests {
    /// Against the `half` crate's independent round-to-nearest-even (NaN payloads aside): the
    /// kernels' emulator uses the same rule as `from_f32`, and the GPU check compares the device's
    /// rounding with it bit for bit.
    #[test]
    fn rounding_matches_the_half_crate() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let edges =
            [0u32, 0x8000_0000, 0x3f80_8000, 0x3f81_8000, 0x0000_8000, 0x7f7f_ffff, 0x7f80_0000, 0xff80_0000];
        let randoms = (0..1_000_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        });
        for bits in edges.into_iter().chain(randoms) {
            let f = f32::from_bits(bits);
            let want = half::bf16::from_f32(f);
            let got = super::from_f32(f);
            if f.is_nan() {
                assert!(super::to_f32(got).is_nan() && want.is_nan());
            } else {
                assert_eq!(got, want.to_bits(), "bf16({bits:#010x})");
            }
        }
    }
}
