//! The SIMT emulator itself: the primitive conformance checks under both schedules, and planted
//! bugs it must catch (a missing barrier, a deadlock, a misaligned cp.async).

use std::sync::Arc;

use admix::backend::cuda::emu::{Emu, Schedule};
use admix::backend::cuda::{conformance, Args, DevBuf, Executor, Launch};

fn emu(schedule: Schedule) -> Arc<dyn Executor> {
    let e = Emu::new().unwrap();
    e.set_schedule(schedule);
    Arc::new(e)
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn primitives_conform_to_the_ptx_layouts_under_both_schedules() {
    for schedule in [Schedule::RoundRobin, Schedule::LowestFirst] {
        let exec = emu(schedule);
        let s = seed();
        for (name, check) in conformance::CHECKS {
            check(&exec, s).unwrap_or_else(|e| panic!("{name} ({schedule:?}, seed {s}): {e:#}"));
        }
    }
}

fn barrier_kernel(exec: &Arc<dyn Executor>, barrier: bool) -> Vec<f32> {
    let out = DevBuf::new(exec, 3 * 4).unwrap();
    out.fill(0xff).unwrap();
    // SAFETY: selftest_barrier(float*, int); 4 warps publish into 4 floats of shared memory.
    unsafe {
        Args::new().buf(&out).i32(barrier as i32).launch(
            &**exec,
            "selftest_barrier",
            Launch::linear(3, 128, 16),
        )
    }
    .unwrap();
    out.to_vec().unwrap()
}

#[test]
fn the_lowest_first_schedule_exposes_a_missing_barrier() {
    for schedule in [Schedule::RoundRobin, Schedule::LowestFirst] {
        assert_eq!(barrier_kernel(&emu(schedule), true), vec![10.0; 3], "{schedule:?} with the barrier");
    }
    // without it, warps in step (round robin) happen to see every value...
    assert_eq!(barrier_kernel(&emu(Schedule::RoundRobin), false), vec![10.0; 3]);
    // ...while letting warp 0 run ahead reads poisoned shared memory
    assert!(barrier_kernel(&emu(Schedule::LowestFirst), false).iter().all(|v| v.is_nan()));
}

#[test]
fn a_collective_that_cannot_complete_is_reported_not_hung() {
    let exec = emu(Schedule::RoundRobin);
    let out = DevBuf::new(&exec, 32 * 4).unwrap();
    // SAFETY: selftest_deadlock(float*).
    let err = unsafe { Args::new().buf(&out).launch(&*exec, "selftest_deadlock", Launch::linear(1, 32, 0)) }
        .unwrap_err()
        .to_string();
    assert!(err.contains("deadlock") && err.contains("mask 0xffffffff"), "{err}");
    assert!(err.contains("selftest_deadlock") && err.contains("block (0,0,0)"), "{err}");
}

#[test]
fn a_misaligned_cp_async_is_reported() {
    let exec = emu(Schedule::RoundRobin);
    let src = DevBuf::from_slice(&exec, &[1.0f32; 4 * 33]).unwrap();
    let out = DevBuf::new(&exec, 32 * 4).unwrap();
    // SAFETY: selftest_misaligned(float*, const float*); src holds 4·32 + 1 floats.
    let err = unsafe {
        Args::new().buf(&out).buf(&src).launch(&*exec, "selftest_misaligned", Launch::linear(1, 32, 512))
    }
    .unwrap_err()
    .to_string();
    assert!(err.contains("cp.async source") && err.contains("not 16-byte aligned"), "{err}");
}

#[test]
fn a_launch_of_an_unknown_kernel_or_a_bad_block_is_an_error() {
    let exec = emu(Schedule::RoundRobin);
    // SAFETY: never runs.
    let err = unsafe { Args::new().launch(&*exec, "no_such_kernel", Launch::linear(1, 32, 0)) }.unwrap_err();
    assert!(err.to_string().contains("no kernel named `no_such_kernel`"));
    let out = DevBuf::new(&exec, 4).unwrap();
    // SAFETY: rejected before running.
    let err =
        unsafe { Args::new().buf(&out).launch(&*exec, "selftest_deadlock", Launch::linear(1, 2048, 0)) }
            .unwrap_err();
    assert!(err.to_string().contains("invalid block size"), "{err}");
}
