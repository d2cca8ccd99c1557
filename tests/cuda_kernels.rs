//! Every forward kernel of the CUDA backend against the CPU reference, run by the SIMT emulator
//! under both schedules (round robin, and lowest-first which exposes missing barriers). Fresh
//! random inputs each run (the seed is printed on failure).

use std::sync::Arc;

use admix::backend::cuda::emu::{Emu, Schedule};
use admix::backend::cuda::{checks, Cuda};

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn run(schedule: Schedule) {
    let emu = Emu::new().unwrap();
    emu.set_schedule(schedule);
    let cuda = Cuda::with_executor(Arc::new(emu), "emu");
    for (name, check) in checks::CHECKS {
        let s = seed();
        match check(&cuda, s) {
            Ok(err) => eprintln!("{schedule:?} {name}: relative error {err:.2e}"),
            Err(e) => panic!("{name} ({schedule:?}, seed {s}): {e:#}"),
        }
    }
}

#[test]
fn kernels_match_the_cpu_reference_round_robin() {
    run(Schedule::RoundRobin);
}

#[test]
fn kernels_match_the_cpu_reference_lowest_first() {
    run(Schedule::LowestFirst);
}
