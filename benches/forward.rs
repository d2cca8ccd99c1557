//! Forward-pass benchmark on the real MiniLM (run `admix fetch` first):
//! batch 32 × 128 tokens (all valid) and batch-1 latency (128 tokens), encoder + seq_bn adapter
//! (reduction 16) + classification head, on `ADMIX_BENCH_THREADS` threads (default 2); and the
//! same batch with every row of the last layer computed (the embedding path).
//!
//!     cargo bench --bench forward
//!
//! Prints median / min / max over repetitions after warm-up, and one JSON line per case.

use admix::backend::cpu::Cpu;

mod common;
use common::{batch, load_model, time};

fn main() {
    let (model, threads) = load_model("forward");
    let (h, layers) = (model.config.hidden_size, model.config.num_hidden_layers);
    let bert = model.bert().unwrap();
    let (adapter, head) = common::random_adapter_head(h, layers);
    println!("MiniLM-L6 forward + seq_bn adapter + head, CPU f32, {threads} threads");
    for (b, reps) in [(32usize, 10usize), (1, 50)] {
        let tb = batch(b, 128, b as u64);
        // what `admix score` runs: the last layer computes only the [CLS] rows the head reads
        time(&format!("forward batch {b} x 128"), reps, || {
            let cls = bert.encode_cls(&Cpu, &tb, Some(&adapter), None).unwrap();
            let logits = head.forward(&Cpu, &cls, tb.batch, 1).unwrap();
            assert!(logits.data.iter().all(|v| v.is_finite()));
        });
    }
    let tb = batch(32, 128, 7);
    // every row of every layer (as PyTorch's forward computes): the sentence-embedding path
    time("forward batch 32 x 128, all rows", 10, || {
        let hidden = bert.encode(&Cpu, &tb, Some(&adapter), |_, _| {}).unwrap();
        head.forward(&Cpu, &hidden, tb.batch, tb.seq).unwrap();
    });
}
