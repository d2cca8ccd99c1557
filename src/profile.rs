//! Profiling hooks: NVTX ranges around phases and layers, and the profiler capture window.
//!
//! Ranges are pushed through NVTX, loaded at run time (`ADMIX_NVTX_LIB`, else `libnvToolsExt.so.1`
//! or `libnvtx3interop.so.1` on the library path: the `nvidia-nvtx` wheels, PyTorch's among them,
//! ship one in `nvidia/nvtx/lib/`) unless `ADMIX_NVTX` is `0`; without it a range costs one
//! branch. Under `nsys profile --trace=cuda,nvtx` they show as
//! named spans over the kernels they launch (docs/profiling.md).
//!
//! [`capture_start`] / [`capture_stop`] are `cuProfilerStart` / `cuProfilerStop`: with
//! `nsys profile --capture-range=cudaProfilerApi` (or `ncu --profile-from-start off`) only the
//! work between them is recorded (`admix bench --profile-steps N`).

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// The NVTX entry points, from whichever library loaded.
struct Nvtx {
    push: unsafe extern "C" fn(*const c_char) -> c_int,
    pop: unsafe extern "C" fn() -> c_int,
    library: String,
}

/// Library names tried in order after `ADMIX_NVTX_LIB`: NVTX's v2 library (CUDA ≤ 12.4 wheels and
/// toolkits) and the v3 interop library that replaced it (later wheels, PyTorch's among them).
const LIBRARIES: &[&str] = &["libnvToolsExt.so.1", "libnvtx3interop.so.1", "libnvToolsExt.so"];

fn load() -> Option<Nvtx> {
    if std::env::var("ADMIX_NVTX").is_ok_and(|v| v == "0") {
        return None;
    }
    let explicit = std::env::var("ADMIX_NVTX_LIB").ok();
    for name in explicit.iter().map(String::as_str).chain(LIBRARIES.iter().copied()) {
        let Ok(c) = CString::new(name) else { continue };
        // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is never closed, so the
        // function pointers stay valid for the life of the process.
        unsafe {
            let lib = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if lib.is_null() {
                continue;
            }
            let sym = |s: &CStr| libc::dlsym(lib, s.as_ptr());
            let (push, pop) = (sym(c"nvtxRangePushA"), sym(c"nvtxRangePop"));
            if push.is_null() || pop.is_null() {
                continue;
            }
            return Some(Nvtx {
                push: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(*const c_char) -> c_int>(
                    push,
                ),
                pop: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn() -> c_int>(pop),
                library: name.to_string(),
            });
        }
    }
    None
}

fn nvtx() -> Option<&'static Nvtx> {
    static NVTX: OnceLock<Option<Nvtx>> = OnceLock::new();
    NVTX.get_or_init(load).as_ref()
}

/// The NVTX library ranges go to, if one loaded (and `ADMIX_NVTX` is not `0`).
pub fn nvtx_library() -> Option<&'static str> {
    nvtx().map(|n| n.library.as_str())
}

/// A named NVTX range, popped when dropped.
#[must_use = "the range ends when this value is dropped"]
pub struct Range {
    pushed: bool,
}

/// Opens a range named `name` (nested ranges nest in the profile).
pub fn range(name: &str) -> Range {
    let Some(n) = nvtx() else { return Range { pushed: false } };
    let Ok(c) = CString::new(name) else { return Range { pushed: false } };
    // SAFETY: a loaded nvtxRangePushA; the message is NUL-terminated and copied by NVTX.
    unsafe { (n.push)(c.as_ptr()) };
    Range { pushed: true }
}

impl Drop for Range {
    fn drop(&mut self) {
        if let (true, Some(n)) = (self.pushed, nvtx()) {
            // SAFETY: pops the range this value pushed.
            unsafe { (n.pop)() };
        }
    }
}

/// A range named by `f()`, which is only called when ranges are on (layer names).
pub fn range_with(f: impl FnOnce() -> String) -> Range {
    if nvtx().is_some() {
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
