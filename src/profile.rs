//! Profiling hooks: NVTX ranges around phases and layers, and the profiler capture window.
//!
//! Ranges are pushed through NVTX (libnvToolsExt, loaded at run time: PyTorch's wheels ship it as
//! `nvidia/nvtx/lib/libnvToolsExt.so.1`) when the library can be loaded and `ADMIX_NVTX` is not
//! `0`; otherwise a range costs one branch. Under `nsys profile --trace=cuda,nvtx` they show as
//! named spans over the kernels they launch (docs/profiling.md).
//!
//! [`capture_start`] / [`capture_stop`] are `cuProfilerStart` / `cuProfilerStop`: with
//! `nsys profile --capture-range=cudaProfilerApi` (or `ncu --profile-from-start off`) only the
//! work between them is recorded (`admix bench --profile-steps N`).

use std::ffi::CString;
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// Whether NVTX ranges are emitted (the library loads and `ADMIX_NVTX` is not `0`).
pub fn nvtx_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("ADMIX_NVTX").map_or(true, |v| v != "0")
            // SAFETY: only tries to dlopen libnvToolsExt.
            && unsafe { cudarc::nvtx::sys::is_culib_present() }
    })
}

/// A named NVTX range, popped when dropped.
#[must_use = "the range ends when this value is dropped"]
pub struct Range {
    pushed: bool,
}

/// Opens a range named `name` (nested ranges nest in the profile).
pub fn range(name: &str) -> Range {
    if !nvtx_enabled() {
        return Range { pushed: false };
    }
    let Ok(c) = CString::new(name) else { return Range { pushed: false } };
    // SAFETY: the library is present (checked above); the message is NUL-terminated.
    unsafe { cudarc::nvtx::sys::nvtxRangePushA(c.as_ptr()) };
    Range { pushed: true }
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.pushed {
            // SAFETY: pops the range this value pushed.
            unsafe { cudarc::nvtx::sys::nvtxRangePop() };
        }
    }
}

/// A range named by `f()`, which is only called when ranges are on (layer names).
pub fn range_with(f: impl FnOnce() -> String) -> Range {
    if nvtx_enabled() {
        range(&f())
    } else {
        Range { pushed: false }
    }
}

/// Starts the profiler's capture (`cuProfilerStart`); needs a CUDA context (a GPU backend open).
pub fn capture_start() -> Result<()> {
    // SAFETY: a plain driver call; the caller has made a context current.
    unsafe { cudarc::driver::sys::cuProfilerStart() }.result().context("cuProfilerStart")
}

/// Ends the profiler's capture (`cuProfilerStop`).
pub fn capture_stop() -> Result<()> {
    // SAFETY: a plain driver call.
    unsafe { cudarc::driver::sys::cuProfilerStop() }.result().context("cuProfilerStop")
}
