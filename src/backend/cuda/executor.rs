//! The seam between the CUDA backend and where its kernels run.
//!
//! The backend owns layouts, launch shapes and orchestration once; every launch (kernel name, grid,
//! block, dynamic shared memory and the `void**` argument array of `cuLaunchKernel`) goes to an
//! [`Executor`]: the GPU through the driver ([`super::gpu::Gpu`]) or the SIMT emulator
//! ([`super::emu::Emu`]), which runs the very same kernel source compiled as C++.

use std::ffi::c_void;
use std::sync::Arc;

use anyhow::Result;

use crate::backend::Work;

/// A device address (a host address on the emulator).
pub type DevPtr = u64;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

impl Launch {
    /// A 1-D grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32, smem: u32) -> Self {
        Launch { grid: [blocks.max(1), 1, 1], block: [threads, 1, 1], smem }
    }
}

/// Where kernels run and device memory lives.
pub trait Executor: Send + Sync {
    /// e.g. "NVIDIA H100 80GB HBM3" or "SIMT emulator (2 workers, round-robin schedule)".
    fn describe(&self) -> String;
    /// `bytes` of device memory, 256-byte aligned. Contents are unspecified (the emulator fills
    /// them with 0xff, a NaN pattern, so unwritten outputs show).
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// # Safety
    /// `p` came from this executor's `alloc` and is not used afterwards.
    unsafe fn free(&self, p: DevPtr);
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<()>;
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()>;
    /// Queues kernel `name` (the emulator runs it at once; the GPU returns before it finishes,
    /// unless launches are synchronised for debugging): an error at launch is an `Err` naming the
    /// kernel, one while running surfaces at the next synchronising call.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list (each element points at a value of the
    /// parameter's type) and every pointer argument must address enough device memory.
    unsafe fn launch(&self, name: &str, dims: Launch, args: &mut [*mut c_void]) -> Result<()>;
    /// Waits for every queued launch and copy.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// See [`crate::backend::Backend::time_runs`]; the GPU overrides this with events.
    fn time_runs(&self, warmup: usize, reps: usize, before: Work, f: Work) -> Result<Vec<f64>> {
        crate::backend::host_time_runs(warmup, reps, before, f, &|| self.synchronize())
    }
}

/// Device memory owned by one executor, freed on drop.
pub struct DevBuf {
    exec: Arc<dyn Executor>,
    ptr: DevPtr,
    bytes: usize,
}

impl DevBuf {
    pub fn new(exec: &Arc<dyn Executor>, bytes: usize) -> Result<Self> {
        let ptr = exec.alloc(bytes.max(1))?;
        Ok(DevBuf { exec: exec.clone(), ptr, bytes })
    }

    /// A buffer holding `data`.
    pub fn from_slice<T: bytemuck::Pod>(exec: &Arc<dyn Executor>, data: &[T]) -> Result<Self> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let b = DevBuf::new(exec, bytes.len())?;
        exec.htod(b.ptr, bytes)?;
        Ok(b)
    }

    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The whole buffer, as `T`s.
    pub fn to_vec<T: bytemuck::Pod + Default>(&self) -> Result<Vec<T>> {
        let mut v = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        self.exec.dtoh(bytemuck::cast_slice_mut(&mut v), self.ptr)?;
        Ok(v)
    }

    /// Fills every byte with `byte` (0xff poisons: NaN in f32 and bf16).
    pub fn fill(&self, byte: u8) -> Result<()> {
        self.exec.memset(self.ptr, byte, self.bytes)
    }

    /// A copy of this buffer on the same executor.
    pub fn duplicate(&self) -> Result<Self> {
        let b = DevBuf::new(&self.exec, self.bytes)?;
        self.exec.dtod(b.ptr, self.ptr, self.bytes)?;
        Ok(b)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from this executor's alloc and the buffer is being dropped.
        unsafe { self.exec.free(self.ptr) }
    }
}

/// The argument array of one launch: each value in its own 8-byte slot, and the `void**` that
/// points at the slots (what `cuLaunchKernel` and the emulator both take).
#[derive(Default)]
pub struct Args {
    slots: Vec<u64>,
}

impl Args {
    pub fn new() -> Self {
        Args::default()
    }
    pub fn buf(mut self, b: &DevBuf) -> Self {
        self.slots.push(b.ptr());
        self
    }
    pub fn ptr(mut self, p: DevPtr) -> Self {
        self.slots.push(p);
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.slots.push(v as u32 as u64);
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.slots.push(v.to_bits() as u64);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.slots.push(v);
        self
    }

    /// Launches `name` with these arguments.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameter list in order and type, and every buffer
    /// must be large enough for what the kernel addresses under `dims`.
    pub unsafe fn launch(mut self, exec: &dyn Executor, name: &str, dims: Launch) -> Result<()> {
        let mut ptrs: Vec<*mut c_void> =
            self.slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        unsafe { exec.launch(name, dims, &mut ptrs) }
    }
}
