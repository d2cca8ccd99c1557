//! Conformance of the primitives in kernels/arch.cuh (and the warp intrinsics) with the scalar
//! layout rules of NVIDIA's PTX ISA: kernels/conformance.cu records what every lane received and
//! these checks compare it with the rule. The same kernels and checks run on the emulator in
//! `cargo test` and on a GPU in the GPU check, the one run that proves the emulator's
//! transcription matches the hardware.

use std::sync::Arc;

use anyhow::{ensure, Result};

use super::executor::{Args, DevBuf, Executor, Launch};
use crate::backend::bf16;

/// A primitive check: runs on an executor with a seed.
pub type PrimitiveCheck = fn(&Arc<dyn Executor>, u64) -> Result<()>;

/// Every check: (name, run).
pub const CHECKS: &[(&str, PrimitiveCheck)] = &[
    ("mma.m16n8k16 bf16", check_mma),
    ("ldmatrix x1/x2/x4 (.trans)", check_ldmatrix),
    ("warp shuffles and votes", check_shuffle),
    ("cp.async zero-fill and groups", check_cp_async),
    ("bf16 round-to-nearest-even", check_bf16_round),
];

fn lcg(seed: &mut u64) -> u32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 33) as u32
}

fn one_warp(smem: u32) -> Launch {
    Launch::linear(1, 32, smem)
}

/// D = A·B + C through the fragments, against an f64 product of the same bf16 values.
pub fn check_mma(exec: &Arc<dyn Executor>, mut seed: u64) -> Result<()> {
    let rnd = |s: &mut u64| (lcg(s) % 2001) as f32 / 1000.0 - 1.0;
    let a: Vec<u16> = (0..256).map(|_| bf16::from_f32(rnd(&mut seed))).collect();
    let b: Vec<u16> = (0..128).map(|_| bf16::from_f32(rnd(&mut seed))).collect();
    let c: Vec<f32> = (0..128).map(|_| rnd(&mut seed)).collect();
    let (da, db, dc) =
        (DevBuf::from_slice(exec, &a)?, DevBuf::from_slice(exec, &b)?, DevBuf::from_slice(exec, &c)?);
    let dd = DevBuf::new(exec, 128 * 4)?;
    dd.fill(0xff)?;
    // SAFETY: matches conf_mma(float*, const bf16*, const bf16*, const float*) and the sizes above.
    unsafe { Args::new().buf(&dd).buf(&da).buf(&db).buf(&dc).launch(&**exec, "conf_mma", one_warp(0))? };
    let d: Vec<f32> = dd.to_vec()?;
    for i in 0..16 {
        for j in 0..8 {
            let mut r = c[i * 8 + j] as f64;
            for k in 0..16 {
                r += bf16::to_f32(a[i * 16 + k]) as f64 * bf16::to_f32(b[k * 8 + j]) as f64;
            }
            let got = d[i * 8 + j] as f64;
            ensure!((got - r).abs() <= 1e-5 * (1.0 + r.abs()), "mma D[{i}][{j}] = {got}, expected {r}");
        }
    }
    Ok(())
}

/// Every form of ldmatrix against the rule: register j of lane t holds matrix j's row t/4,
/// columns 2(t%4), 2(t%4)+1 (transposed: rows 2(t%4), 2(t%4)+1 of column t/4), where row r of
/// matrix j is the row lane 8j+r points at.
pub fn check_ldmatrix(exec: &Arc<dyn Executor>, mut seed: u64) -> Result<()> {
    let src: Vec<u16> = (0..256u16).map(|i| i * 3 + 1).collect();
    let mut perm: Vec<i32> = (0..32).collect();
    for i in (1..32).rev() {
        perm.swap(i, lcg(&mut seed) as usize % (i + 1));
    }
    let (dsrc, dperm) = (DevBuf::from_slice(exec, &src)?, DevBuf::from_slice(exec, &perm)?);
    let dout = DevBuf::new(exec, 6 * 32 * 4 * 4)?;
    dout.fill(0xff)?;
    // SAFETY: matches conf_ldmatrix(uint32_t*, const bf16*, const int*); 512 B of shared memory.
    unsafe { Args::new().buf(&dout).buf(&dsrc).buf(&dperm).launch(&**exec, "conf_ldmatrix", one_warp(512))? };
    let out: Vec<u32> = dout.to_vec()?;
    let elem = |j: usize, row: usize, col: usize| src[perm[8 * j + row] as usize * 8 + col] as u32;
    for (form, (num, trans)) in
        [(1, false), (2, false), (4, false), (1, true), (2, true), (4, true)].into_iter().enumerate()
    {
        for t in 0..32 {
            for j in 0..num {
                let (lo, hi) = if trans {
                    (elem(j, 2 * (t % 4), t / 4), elem(j, 2 * (t % 4) + 1, t / 4))
                } else {
                    (elem(j, t / 4, 2 * (t % 4)), elem(j, t / 4, 2 * (t % 4) + 1))
                };
                let got = out[(form * 32 + t) * 4 + j];
                ensure!(
                    got == lo | (hi << 16),
                    "ldmatrix x{num}{} lane {t} register {j}: {got:#010x}, expected {:#010x}",
                    if trans { ".trans" } else { "" },
                    lo | (hi << 16)
                );
            }
        }
    }
    Ok(())
}

/// Shuffles (xor/up/down/idx, sub-warp widths, two half-warps under different masks) and votes.
pub fn check_shuffle(exec: &Arc<dyn Executor>, mut seed: u64) -> Result<()> {
    let v: Vec<i32> = (0..32).map(|_| (lcg(&mut seed) % 1000) as i32 - 500).collect();
    let din = DevBuf::from_slice(exec, &v)?;
    let dout = DevBuf::new(exec, 9 * 32 * 4)?;
    dout.fill(0xff)?;
    // SAFETY: matches conf_shuffle(int*, const int*).
    unsafe { Args::new().buf(&dout).buf(&din).launch(&**exec, "conf_shuffle", one_warp(0))? };
    let out: Vec<i32> = dout.to_vec()?;
    let ballot: u32 = (0..32).filter(|&l| v[l] % 3 == 0).map(|l| 1u32 << l).sum();
    for l in 0..32usize {
        let seg8 = l / 8 * 8;
        let expected = [
            v[l ^ 5],
            if l >= 3 { v[l - 3] } else { v[l] },
            if l + 7 < 32 { v[l + 7] } else { v[l] },
            v[(l * 7) % 32],
            if l + 2 < seg8 + 8 { v[l + 2] } else { v[l] },
            v[l / 16 * 16 + 3],
            if l < 16 { v[l ^ 1] } else { v[l ^ 2] },
            ballot as i32,
            v.iter().any(|&x| x == v[31]) as i32 + 2,
        ];
        for (test, e) in expected.iter().enumerate() {
            ensure!(
                out[test * 32 + l] == *e,
                "shuffle test {test} lane {l}: {}, expected {e}",
                out[test * 32 + l]
            );
        }
    }
    Ok(())
}

/// cp.async: bytes past src-size are zero; a group is complete after the matching wait_group.
pub fn check_cp_async(exec: &Arc<dyn Executor>, mut seed: u64) -> Result<()> {
    let src: Vec<u8> = (0..1024).map(|_| (lcg(&mut seed) % 255 + 1) as u8).collect();
    let dsrc = DevBuf::from_slice(exec, &src)?;
    let dout = DevBuf::new(exec, 1024)?;
    dout.fill(0xee)?;
    // SAFETY: matches conf_cp_async(unsigned char*, const unsigned char*); 1 KiB of shared memory.
    unsafe { Args::new().buf(&dout).buf(&dsrc).launch(&**exec, "conf_cp_async", one_warp(1024))? };
    let out: Vec<u8> = dout.to_vec()?;
    for lane in 0..32 {
        let bytes = lane.min(16);
        let second = 16 - if bytes == 16 { 0 } else { bytes };
        for i in 0..16 {
            let e1 = if i < bytes { src[lane * 16 + i] } else { 0 };
            let e2 = if i < second { src[512 + lane * 16 + i] } else { 0 };
            ensure!(
                out[lane * 16 + i] == e1,
                "cp.async group 1 lane {lane} byte {i}: {}, expected {e1}",
                out[lane * 16 + i]
            );
            ensure!(
                out[512 + lane * 16 + i] == e2,
                "cp.async group 2 lane {lane} byte {i}: {}, expected {e2}",
                out[512 + lane * 16 + i]
            );
        }
    }
    Ok(())
}

/// The device's f32 → bf16 rounding against the host's, bit for bit, on edge cases (ties,
/// denormals, infinities, NaN, the largest finite values) and random bit patterns.
pub fn check_bf16_round(exec: &Arc<dyn Executor>, mut seed: u64) -> Result<()> {
    let mut bits: Vec<u32> = vec![
        0,
        0x8000_0000,
        0x3f80_8000,
        0x3f81_8000,
        0x3f80_7fff,
        0x3f80_8001,
        0x0000_8000,
        0x0001_8000,
        0x007f_ffff,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0001,
        0x7f80_0001,
        0x3380_0000,
    ];
    bits.extend((0..4096).map(|_| lcg(&mut seed) ^ (lcg(&mut seed) << 16)));
    let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    let din = DevBuf::from_slice(exec, &x)?;
    let dout = DevBuf::new(exec, x.len() * 2)?;
    dout.fill(0xff)?;
    let n = x.len() as u32;
    // SAFETY: matches conf_bf16_round(uint16_t*, const float*, int).
    unsafe {
        Args::new().buf(&dout).buf(&din).i32(n as i32).launch(
            &**exec,
            "conf_bf16_round",
            Launch::linear(n.div_ceil(256), 256, 0),
        )?
    };
    let out: Vec<u16> = dout.to_vec()?;
    for (i, &b) in bits.iter().enumerate() {
        let e = bf16::from_f32(f32::from_bits(b));
        let nan = |h: u16| h & 0x7fff > 0x7f80;
        ensure!(
            out[i] == e || (nan(out[i]) && nan(e)),
            "bf16({b:#010x}) = {:#06x}, expected {e:#06x}",
            out[i]
        );
    }
    Ok(())
}
