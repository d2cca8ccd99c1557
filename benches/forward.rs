//! Forward-pass benchmark on the real MiniLM (run `admix fetch` first):
//! batch 32 × 128 tokens (all valid) and batch-1 latency (128 tokens), encoder + seq_bn adapter
//! (reduction 16) + classification head, on `ADMIX_BENCH_THREADS` threads (default 2).
//!
//!     cargo bench --bench forward
//!
//! Prints median / min / max over repetitions after warm-up, and one JSON line per case.

use std::time::Instant;

use admix::adapter::{Adapter, AdapterKind, AdapterLayer, Bottleneck, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::Activation;
use admix::model::tokenizer::TokenBatch;
use admix::model::weights::Tensor;
use admix::model::ModelDir;

/// Deterministic pseudo-random values in [-scale, scale).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(shape.to_vec(), random(shape.iter().product(), seed, 0.05))
}

fn batch(b: usize, s: usize, seed: u64) -> TokenBatch {
    let ids: Vec<u32> =
        random(b * s, seed, 1.0).iter().map(|v| 1000 + ((v.abs() * 28000.0) as u32)).collect();
    let rows: Vec<(Vec<u32>, Vec<u32>)> = ids.chunks(s).map(|r| (r.to_vec(), vec![0; s])).collect();
    TokenBatch::from_rows(&rows, 0)
}

fn time(name: &str, reps: usize, mut f: impl FnMut()) {
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

fn main() {
    let threads: usize = std::env::var("ADMIX_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let dir = admix::assets::default_model_dir();
    let model = match ModelDir::open(&dir, 128) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("forward bench: {e:#}; run `cargo run --release -- fetch` first");
            std::process::exit(1);
        }
    };
    let (h, layers) = (model.config.hidden_size, model.config.num_hidden_layers);
    let bert = model.bert().unwrap();
    let r = h / 16;
    let adapter = Adapter {
        name: "bench".into(),
        kind: AdapterKind::SeqBn,
        activation: Activation::Relu,
        layers: (0..layers as u64)
            .map(|l| AdapterLayer {
                output: Bottleneck {
                    down_w: tensor(&[r, h], 10 * l + 1),
                    down_b: tensor(&[r], 10 * l + 2),
                    up_w: tensor(&[h, r], 10 * l + 3),
                    up_b: tensor(&[h], 10 * l + 4),
                },
                attention: None,
            })
            .collect(),
    };
    let head = ClassificationHead {
        name: "bench".into(),
        dense_w: tensor(&[h, h], 91),
        dense_b: tensor(&[h], 92),
        out_w: tensor(&[2, h], 93),
        out_b: tensor(&[2], 94),
        num_labels: 2,
    };
    println!("MiniLM-L6 forward + seq_bn adapter + head, CPU f32, {threads} threads");
    for (b, reps) in [(32usize, 10usize), (1, 50)] {
        let tb = batch(b, 128, b as u64);
        time(&format!("forward batch {b} x 128"), reps, || {
            let hidden = bert.encode(&Cpu, &tb, Some(&adapter), |_, _| {}).unwrap();
            let logits = head.forward(&Cpu, &hidden, tb.batch, tb.seq).unwrap();
            assert!(logits.data.iter().all(|v| v.is_finite()));
        });
    }
    let tb = batch(32, 128, 7);
    time("forward batch 32 x 128, no adapter", 10, || {
        bert.encode(&Cpu, &tb, None, |_, _| {}).unwrap();
    });
}
