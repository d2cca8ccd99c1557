//! The SIMT emulator executor: kernels/*.cu compiled as C++ (build.rs) and run on the CPU by
//! kernels/emu/emu.cpp. Device memory is host memory.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

use super::executor::{DevPtr, Executor, Launch};

mod entries {
    include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));
}

unsafe extern "C" {
    fn admix_emu_launch(
        entry: unsafe extern "C" fn(*mut *mut c_void),
        args: *mut *mut c_void,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        schedule: c_int,
        workers: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// The order in which the scheduler runs a block's ready threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Each ready thread in turn: warps stay in step, as on the hardware most of the time.
    RoundRobin = 0,
    /// Always the lowest-numbered ready thread: low warps run ahead, which exposes a missing
    /// `__syncthreads` that round robin hides.
    LowestFirst = 1,
}

/// Runs kernels on the CPU, one worker thread per block in flight.
pub struct Emu {
    schedule: AtomicU8,
    workers: usize,
    allocations: Mutex<HashMap<DevPtr, Layout>>,
    /// with `ADMIX_EMU_PROFILE=1`: launches and seconds per kernel, printed to stderr on drop
    profile: Option<Mutex<HashMap<String, (usize, f64)>>>,
}

const ALIGN: usize = 256;

impl Emu {
    /// An emulator with `ADMIX_EMU_SCHEDULE` (`round-robin` (default) or `lowest-first`) and one
    /// worker per available core.
    pub fn new() -> Result<Self> {
        let schedule = match std::env::var("ADMIX_EMU_SCHEDULE").as_deref() {
            Err(_) | Ok("round-robin") => Schedule::RoundRobin,
            Ok("lowest-first") => Schedule::LowestFirst,
            Ok(other) => bail!("ADMIX_EMU_SCHEDULE={other}: expected round-robin or lowest-first"),
        };
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let profile =
            std::env::var("ADMIX_EMU_PROFILE").is_ok_and(|v| v == "1").then(|| Mutex::new(HashMap::new()));
        Ok(Emu {
            schedule: AtomicU8::new(schedule as u8),
            workers,
            allocations: Mutex::new(HashMap::new()),
            profile,
        })
    }

    pub fn set_schedule(&self, s: Schedule) {
        self.schedule.store(s as u8, Ordering::Relaxed);
    }

    pub fn schedule(&self) -> Schedule {
        if self.schedule.load(Ordering::Relaxed) == 1 {
            Schedule::LowestFirst
        } else {
            Schedule::RoundRobin
        }
    }

    fn check(&self, p: DevPtr, bytes: usize) -> Result<()> {
        let allocs = self.allocations.lock().unwrap();
        let ok = allocs.iter().any(|(&base, l)| p >= base && p + bytes as u64 <= base + l.size() as u64);
        if !ok {
            bail!("emulator: {bytes} bytes at {p:#x} are outside every allocation");
        }
        Ok(())
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let mut rows: Vec<_> = p.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
            rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
            eprintln!("emulator profile: kernel, launches, seconds");
            for (k, (n, t)) in rows {
                eprintln!("  {k:<28} {n:>6} {t:>9.3}");
            }
        }
    }
}

/// Names of every kernel the emulator can run.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    entries::EMU_KERNELS.iter().map(|(n, _)| *n)
}

impl Executor for Emu {
    fn describe(&self) -> String {
        let s = match self.schedule() {
            Schedule::RoundRobin => "round-robin",
            Schedule::LowestFirst => "lowest-first",
        };
        format!("SIMT emulator ({} workers, {s} schedule)", self.workers)
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let layout = Layout::from_size_align(bytes.max(1).div_ceil(ALIGN) * ALIGN, ALIGN)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            bail!("emulator: cannot allocate {bytes} bytes");
        }
        // SAFETY: p points at layout.size() writable bytes.
        unsafe { std::ptr::write_bytes(p, 0xff, layout.size()) };
        self.allocations.lock().unwrap().insert(p as DevPtr, layout);
        Ok(p as DevPtr)
    }

    unsafe fn free(&self, p: DevPtr) {
        if let Some(layout) = self.allocations.lock().unwrap().remove(&p) {
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) }
        }
    }

    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check(dst, src.len())?;
        // SAFETY: checked to lie inside one allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.check(src, dst.len())?;
        // SAFETY: checked to lie inside one allocation.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.check(dst, bytes)?;
        self.check(src, bytes)?;
        // SAFETY: both ranges were checked; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()> {
        self.check(dst, bytes)?;
        // SAFETY: checked to lie inside one allocation.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }

    unsafe fn launch(&self, name: &str, dims: Launch, args: &mut [*mut c_void]) -> Result<()> {
        let entry = entries::EMU_KERNELS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
            .ok_or_else(|| anyhow!("no kernel named `{name}`"))?;
        let mut err = vec![0 as c_char; 1024];
        let start = std::time::Instant::now();
        // SAFETY: the caller guarantees the arguments; the emulator reports kernel errors in `err`.
        let rc = unsafe {
            admix_emu_launch(
                entry,
                args.as_mut_ptr(),
                dims.grid.as_ptr(),
                dims.block.as_ptr(),
                dims.smem as usize,
                self.schedule.load(Ordering::Relaxed) as c_int,
                self.workers as c_int,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if let Some(p) = &self.profile {
            let mut p = p.lock().unwrap();
            let e = p.entry(name.to_string()).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += start.elapsed().as_secs_f64();
        }
        if rc != 0 {
            // SAFETY: the emulator wrote a NUL-terminated message.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            bail!(
                "kernel {name} (grid {:?}, block {:?}) failed in the emulator: {msg}",
                dims.grid,
                dims.block
            );
        }
        Ok(())
    }
}
