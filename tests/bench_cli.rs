//! `admix bench` in its CI-sized mode (a smoke test of the suites, not a timing test): every case
//! runs on the CPU and on the emulator, the report's numbers are consistent with its counts, and
//! bad settings are one error line. `--profile-steps` runs its steps with NVTX ranges on when an
//! NVTX library is given (scripts/test installs one and sets ADMIX_REQUIRE_NVTX=1).

mod common;

use common::cli::{admix, assert_error};
use serde_json::Value;

const KERNEL_CASES: &[&str] = &[
    "gemm qkv",
    "gemm attention out +res",
    "gemm ffn up +gelu",
    "gemm ffn down +res",
    "gemm adapter down +relu",
    "gemm adapter up +res",
    "gemm dX ffn up",
    "gemm dW + db ffn up",
    "layernorm",
    "layernorm backward",
    "add",
    "activation gelu",
    "embedding + layernorm",
    "attention",
    "attention backward",
    "mean pool + l2",
    "adapter mix m=3 +res",
    "adamw",
];

const MODEL_CASES: &[&str] = &[
    "forward batch 1",
    "forward batch 4",
    "adapter train step batch 4",
    "pgd step batch 4",
    "hotflip step batch 4",
    "adpmixup scoring m=1 batch 4",
    "adpmixup scoring m=3 batch 4",
    "adpmixup scoring m=3 router batch 4",
];

fn check_report(v: &Value, backend: &str) {
    assert_eq!(v["backend"], backend);
    assert_eq!(v["plan"]["reps"], 3);
    let c = &v["ceilings"];
    assert!(
        c["copy_bytes_per_s"].as_f64().unwrap() > 0.0 && c["gemm_flops_per_s"].as_f64().unwrap() > 0.0,
        "{c}"
    );
    let rows = v["rows"].as_array().unwrap();
    let cases: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["suite"].as_str().unwrap(), r["case"].as_str().unwrap())).collect();
    let want: Vec<(&str, &str)> = KERNEL_CASES
        .iter()
        .map(|c| ("kernels", *c))
        .chain(MODEL_CASES.iter().map(|c| ("model", *c)))
        .collect();
    assert_eq!(cases, want);
    for r in rows {
        let (med, p99, min) =
            (r["median_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap(), r["min_ms"].as_f64().unwrap());
        assert!(min > 0.0 && min <= med && med <= p99 && p99.is_finite(), "{r}");
        assert_eq!(r["model"], "tiny");
        if r["suite"] == "kernels" {
            let (flops, bytes, floor) =
                (r["flops"].as_f64().unwrap(), r["bytes"].as_f64().unwrap(), r["floor_ms"].as_f64().unwrap());
            let want = (flops / c["gemm_flops_per_s"].as_f64().unwrap())
                .max(bytes / c["copy_bytes_per_s"].as_f64().unwrap())
                * 1e3;
            assert!((floor - want).abs() <= 1e-9 * want, "{r}");
        } else {
            let b: f64 = r["shape"].as_str().unwrap().split('×').next().unwrap().parse().unwrap();
            let per_s = r["per_s"].as_f64().unwrap();
            assert!((per_s - b / (med * 1e-3)).abs() < 1e-6 * per_s, "{r}");
        }
    }
}

#[test]
fn quick_bench_runs_every_case_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let r = admix(&["bench", "--quick", "--out", out.to_str().unwrap()], b"");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let table = String::from_utf8(r.stdout).unwrap();
    assert!(table.contains("| kernels | tiny | gemm qkv | 64×192×64 |"), "{table}");
    assert!(table.contains("| model | tiny | adpmixup scoring m=3 batch 4 | 4×16 |"), "{table}");
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    check_report(&v, "cpu");
    assert_eq!(v["precision"], "f32");
    assert!(v["ceilings"]["gemm"].as_str().unwrap().starts_with("f32 GEMM"), "{}", v["ceilings"]);
}

#[test]
fn quick_bench_runs_every_case_in_bf16_on_the_cpu() {
    let r = admix(&["bench", "--quick", "--precision", "bf16", "--json"], b"");
    if !admix::backend::cpu::bf16::available() {
        assert_error(&r, "AVX512-BF16");
        return;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    check_report(&v, "cpu");
    // its ceiling is the bf16 GEMM's, so its roofline is bf16's
    assert_eq!(v["precision"], "bf16");
    assert!(v["ceilings"]["gemm"].as_str().unwrap().starts_with("bf16 GEMM"), "{}", v["ceilings"]);
    // and a CUDA device takes no f32
    assert_error(
        &admix(&["bench", "--device", "emu", "--precision", "f32"], b""),
        "precision f32 is the CPU's",
    );
}

#[test]
fn quick_bench_runs_every_case_on_the_emulator() {
    let r = admix(&["bench", "--device", "emu", "--json"], b"");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    check_report(&v, "emu");
    assert_eq!(v["plan"]["flush"], false, "no cache flush on the emulator");
}

#[test]
fn profile_steps_run_inside_nvtx_ranges() {
    let r = admix(&["bench", "--quick", "--profile-steps", "2"], b"");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8(r.stdout).unwrap();
    assert!(out.starts_with("profiled 2 adapter training step(s) of tiny"), "{out}");
    assert!(String::from_utf8_lossy(&r.stderr).contains("no CUDA profiler capture on --device cpu"));
    if std::env::var("ADMIX_REQUIRE_NVTX").is_ok_and(|v| v == "1") {
        let lib = std::env::var("ADMIX_NVTX_LIB").expect("ADMIX_REQUIRE_NVTX=1 needs ADMIX_NVTX_LIB");
        assert!(out.contains(&format!("NVTX ranges on ({lib})")), "{out}");
    }
    // ADMIX_NVTX=0 turns them off whatever is installed
    let off = std::process::Command::new(env!("CARGO_BIN_EXE_admix"))
        .args(["bench", "--quick", "--profile-steps", "1"])
        .env("ADMIX_NVTX", "0")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&off.stdout).contains("NVTX ranges off"));
}

#[test]
fn bad_bench_settings_are_one_error_line() {
    assert_error(&admix(&["bench", "--quick", "--batches", "0"], b""), "must be positive");
    assert_error(&admix(&["bench", "--quick", "--reps", "0"], b""), "must be positive");
    assert_error(&admix(&["bench", "--quick", "--seq", "1"], b""), "--seq at least 2");
    assert_error(&admix(&["bench", "--quick", "--seq", "4096"], b""), "exceeds");
    assert_error(
        &admix(&["bench", "--quick", "--profile-steps", "0"], b""),
        "--profile-steps must be positive",
    );
    assert_error(
        &admix(&["bench", "--models", "minilm", "--model", "/no/such/model"], b""),
        "does not exist",
    );
    assert_error(&admix(&["bench", "--device", "cuda"], b""), "cuda device is unavailable");
}
