//! Compiles `kernels/*.cu` twice:
//! - with nvcc into fatbins (sm_80, sm_90, sm_90a SASS + compute_80 PTX) that are embedded in the
//!   binary, one module per kernel family (the GPU executor);
//! - with the C++ compiler, as plain C++ against the SIMT emulator (kernels/emu), into a static
//!   library with one `admix_emu__NAME(void** args)` entry per `extern "C" __global__` kernel (the
//!   emulator executor). This half always builds: it is how the kernels are tested without a GPU.
//!
//! nvcc is looked up in `$NVCC`, `$CUDA_HOME/bin`, `PATH`, then the PyPI wheels
//! (`site-packages/nvidia/cu13/bin/nvcc`). Without nvcc the crate still builds and the CUDA device
//! reports "built without kernels"; `ADMIX_REQUIRE_NVCC=1` turns a missing nvcc (or a failed
//! compile) into a build error, which is what CI uses. Warnings are errors.

use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: &[&str] = &[
    "-gencode=arch=compute_80,code=[sm_80,compute_80]",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90a,code=sm_90a",
];

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "ADMIX_REQUIRE_NVCC", "ADMIX_PYTHON"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let required = std::env::var("ADMIX_REQUIRE_NVCC").map(|v| v == "1").unwrap_or(false);
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let mut modules = Vec::new();
    let mut version = String::new();
    match find_nvcc() {
        None => {
            if required {
                panic!("ADMIX_REQUIRE_NVCC=1 but nvcc was not found (set NVCC or CUDA_HOME, or install the pinned nvidia-cuda-nvcc wheels)");
            }
            println!("cargo:warning=nvcc not found: building without CUDA kernels (the cuda device will report it)");
        }
        Some(nvcc) => {
            version = nvcc_version(&nvcc);
            for src in &sources {
                let stem = src.file_stem().unwrap().to_string_lossy().to_string();
                let fatbin = out_dir.join(format!("{stem}.fatbin"));
                match compile(&nvcc, src, &fatbin) {
                    Ok(()) => modules.push((stem, fatbin)),
                    Err(e) if required => panic!("{e}"),
                    Err(e) => {
                        println!("cargo:warning={e}; building without CUDA kernels");
                        modules.clear();
                        break;
                    }
                }
            }
        }
    }

    let kernels = kernel_names(&sources);
    build_emulator(&sources, &kernels, &out_dir);

    let mut rs = String::from("/// Kernel modules compiled by build.rs: (family, fatbin bytes).\n");
    rs.push_str("pub const MODULES: &[(&str, &[u8])] = &[\n");
    for (name, path) in &modules {
        rs.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    rs.push_str(
        "];\n/// `nvcc --version` release line of the compiler that built them (empty without nvcc).\n",
    );
    rs.push_str(&format!("pub const NVCC_VERSION: &str = {version:?};\n"));
    rs.push_str("/// Every kernel entry point: (family, name).\npub const KERNELS: &[(&str, &str)] = &[\n");
    for (family, name) in &kernels {
        rs.push_str(&format!("    ({family:?}, {name:?}),\n"));
    }
    rs.push_str("];\n");
    std::fs::write(out_dir.join("kernels.rs"), rs).unwrap();
}

/// `(family, name)` of every `extern "C" __global__` kernel, in file order.
fn kernel_names(sources: &[PathBuf]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for src in sources {
        let family = src.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(src).unwrap();
        let marker = "extern \"C\" __global__";
        let mut rest = text.as_str();
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let mut head = rest;
            // skip `void` and `__launch_bounds__(...)` up to the name's opening parenthesis
            let mut decl = String::new();
            while let Some(open) = head.find('(') {
                let before = &head[..open];
                if before.trim_end().ends_with("__launch_bounds__") {
                    decl.push_str(&before[..before.rfind("__launch_bounds__").unwrap()]);
                    head = &head[head[open..].find(')').unwrap() + open + 1..];
                    continue;
                }
                decl.push_str(before);
                break;
            }
            let name = decl.split_whitespace().last().expect("kernel name").to_string();
            out.push((family.clone(), name));
        }
    }
    out
}

/// The emulator library: kernels/emu/emu.cpp and, per family, a translation unit that includes the
/// .cu file as C++ and exports one `void**` entry per kernel. Always -O2 (an -O0 emulator is 5x
/// slower), whatever cargo's profile.
fn build_emulator(sources: &[PathBuf], kernels: &[(String, String)], out_dir: &Path) {
    let emu_dir = out_dir.join("emu");
    std::fs::create_dir_all(&emu_dir).unwrap();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .flag("-Wall")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-unused-function")
        .flag("-ftls-model=initial-exec")
        .include("kernels")
        .file("kernels/emu/emu.cpp");
    println!("cargo:rerun-if-changed=kernels/emu");
    let mut rs = String::from("unsafe extern \"C\" {\n");
    for src in sources {
        let family = src.file_stem().unwrap().to_string_lossy().to_string();
        let mut cpp = format!("#include \"{}\"\n", std::fs::canonicalize(src).unwrap().display());
        for (_, name) in kernels.iter().filter(|(f, _)| *f == family) {
            cpp.push_str(&format!(
                "extern \"C\" void admix_emu__{name}(void** args) {{ admix_emu::invoke({name}, args); }}\n"
            ));
            rs.push_str(&format!("    fn admix_emu__{name}(args: *mut *mut core::ffi::c_void);\n"));
        }
        let unit = emu_dir.join(format!("{family}.cpp"));
        std::fs::write(&unit, cpp).unwrap();
        build.file(unit);
    }
    rs.push_str("}\n/// Emulator entry of every kernel: (name, entry).\n");
    rs.push_str(
        "pub const EMU_KERNELS: &[(&str, unsafe extern \"C\" fn(*mut *mut core::ffi::c_void))] = &[\n",
    );
    for (_, name) in kernels {
        rs.push_str(&format!("    ({name:?}, admix_emu__{name}),\n"));
    }
    rs.push_str("];\n");
    std::fs::write(out_dir.join("emu_kernels.rs"), rs).unwrap();
    build.compile("admix_emu");
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC").map(PathBuf::from) {
        return p.exists().then_some(p);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    // the PyPI wheels (nvidia-cuda-nvcc & co.) install under site-packages/nvidia/cu13
    let python = std::env::var("ADMIX_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output()
        .ok()?;
    let purelib = String::from_utf8(out.stdout).ok()?;
    let p = Path::new(purelib.trim()).join("nvidia/cu13/bin/nvcc");
    p.exists().then_some(p)
}

fn nvcc_version(nvcc: &Path) -> String {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().find(|l| l.contains("release")).map(|l| l.trim().to_string()))
        .unwrap_or_default()
}

fn compile(nvcc: &Path, src: &Path, out: &Path) -> Result<(), String> {
    // the wheel layout: nvidia/cu13/{bin,include,nvvm}; nvcc finds its siblings relative to itself
    let cuda_home = nvcc.parent().and_then(|b| b.parent()).unwrap();
    let output = Command::new(nvcc)
        .arg("-fatbin")
        .args(ARCHS)
        .args(["-O3", "-std=c++17", "-lineinfo", "-Werror", "all-warnings", "-Xptxas", "-warn-spills"])
        .arg(format!("-I{}", cuda_home.join("include").display()))
        .arg("-Ikernels")
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
