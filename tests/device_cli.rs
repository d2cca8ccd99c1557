//! `--device` through the CLI: `emu` agrees with `cpu`; `cuda` without a GPU is one clear error.

mod common;

use common::cli::{admix, assert_error};

fn embeddings(out: &std::process::Output) -> Vec<Vec<f64>> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect()
}

#[test]
fn embed_on_the_emulator_agrees_with_the_cpu() {
    let text = b"a gripping, beautifully acted film.\nthe plot is a mess and the jokes fall flat.\n";
    let cpu = embeddings(&admix(&["embed", "--device", "cpu"], text));
    let emu = embeddings(&admix(&["embed", "--device", "emu"], text));
    assert_eq!((cpu.len(), emu.len()), (2, 2));
    for (c, e) in cpu.iter().zip(&emu) {
        assert_eq!(c.len(), e.len());
        assert!(c.len() > 1);
        let cos: f64 = c.iter().zip(e).map(|(a, b)| a * b).sum();
        assert!(cos > 0.999, "cosine between cpu and emu embeddings {cos}");
    }
}

#[test]
fn cuda_without_a_gpu_is_one_clear_error() {
    if admix::backend::cuda::gpu::Gpu::open(0).is_ok() {
        eprintln!("a GPU is present: nothing to check");
        return;
    }
    let out = admix(&["embed", "--device", "cuda"], b"hello\n");
    assert_error(&out, "the cuda device is unavailable");
    let out = admix(&["train", "--device", "cuda", "--max-steps", "1", "--out", "/nonexistent/x"], b"");
    assert_error(&out, "the cuda device is unavailable");
}
