//! Helpers shared by the benchmarks: deterministic inputs, the fetched model, and timing.
#![allow(dead_code)]

use std::time::Instant;

use admix::backend::TokenBatch;
use admix::model::ModelDir;
use admix::weights::Tensor;

/// Deterministic pseudo-random values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(shape.to_vec(), random(shape.iter().product(), seed, 0.05))
}

pub fn batch(b: usize, s: usize, seed: u64) -> TokenBatch {
    let ids: Vec<u32> =
        random(b * s, seed, 1.0).iter().map(|v| 1000 + ((v.abs() * 28000.0) as u32)).collect();
    let rows: Vec<(Vec<u32>, Vec<u32>)> = ids.chunks(s).map(|r| (r.to_vec(), vec![0; s])).collect();
    TokenBatch::from_rows(&rows, 0)
}

/// Runs `f` `reps` times after 2 warm-up runs and prints the timing, unless `ADMIX_BENCH_ONLY` is
/// set and `name` does not contain it.
pub fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    if std::env::var("ADMIX_BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    for _ in 0..2 {
        f();
    }
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let med = ms[ms.len() / 2];
    println!(
        "{name:<40} median {med:8.2} ms   min {:8.2}   max {:8.2}   ({reps} reps)",
        ms[0],
        ms[ms.len() - 1]
    );
    println!("{{\"bench\":\"{name}\",\"median_ms\":{med:.3},\"min_ms\":{:.3},\"reps\":{reps}}}", ms[0]);
}

/// The fetched MiniLM (max length 128) and the thread count (`ADMIX_BENCH_THREADS`, default 2),
/// with the rayon pool set to it.
pub fn load_model(bench: &str) -> (ModelDir, usize) {
    admix::tune_allocator();
    let threads: usize = std::env::var("ADMIX_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    match ModelDir::open(&admix::assets::default_model_dir(), 128) {
        Ok(m) => (m, threads),
        Err(e) => {
            eprintln!("{bench} bench: {e:#}; run `cargo run --release -- fetch` first");
            std::process::exit(1);
        }
    }
}

/// A random seq_bn adapter (reduction 16, ReLU) and 2-label head for a model of `layers` × `h`.
pub fn random_adapter_head(
    h: usize,
    layers: usize,
) -> (admix::adapter::Adapter<Tensor>, admix::adapter::ClassificationHead<Tensor>) {
    use admix::adapter::{
        Adapter, AdapterKind, AdapterLayer, Bottleneck, BottleneckPart, ClassificationHead,
    };
    use admix::backend::Activation;
    let r = h / 16;
    let adapter = Adapter {
        name: "bench".into(),
        kind: AdapterKind::SeqBn,
        activation: Activation::Relu,
        layers: (0..layers as u64)
            .map(|l| AdapterLayer {
                output: Bottleneck::build(|part| {
                    let seed =
                        10 * l + 1 + BottleneckPart::ALL.iter().position(|&p| p == part).unwrap() as u64;
                    Ok(tensor(&part.shape(r, h), seed))
                })
                .unwrap(),
                attention: None,
            })
            .collect(),
    };
    let mut seed = 90;
    let head = ClassificationHead::build("bench", 2, Activation::Tanh, 2, |part| {
        seed += 1;
        Ok(tensor(&part.shape(2, h, 2), seed))
    })
    .unwrap();
    (adapter, head)
}
