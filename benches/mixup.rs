//! AdpMixup scoring on the real MiniLM (run `admix fetch` first), CPU f32, on
//! `ADMIX_BENCH_THREADS` threads (default 2), batches of 32 sentences of 27 tokens:
//! - one adapter (a static mix costs the same: its weights are materialised once);
//! - the per-sample mixed pass alone over m stacked adapters (the stacked GEMMs and the blends);
//! - entropy β end to end: m member passes for the entropies, then the mixed pass;
//!
//! for m = 2 (clean + one attack) and m = 4 (three attacks).
//!
//!     cargo bench --bench mixup
//!
//! Prints median / min / max over repetitions after warm-up, and one JSON line per case.

use admix::adapter::mix::{BetaRule, RowMix};
use admix::backend::cpu::Cpu;
use admix::model::classify::Model;
use admix::model::mixture::Mixture;

mod common;
use common::{batch, load_model, time};

fn main() {
    let (model, threads) = load_model("mixup");
    let (h, layers) = (model.config.hidden_size, model.config.num_hidden_layers);
    let bert = model.bert().unwrap();
    println!("MiniLM-L6 + seq_bn adapters + heads, CPU f32, {threads} threads, batch 32 x 27 tokens");
    let tb = batch(32, 27, 7);
    let (adapter, head) = common::random_adapter_head(h, layers);
    let single = Model::new(&Cpu, bert.to_backend(&Cpu).unwrap(), Some(adapter), head, false).unwrap();
    time("one adapter", 20, || {
        single.logits(&Cpu, &tb).unwrap();
    });
    for m in [2usize, 4] {
        let members: Vec<_> = (0..m).map(|_| common::random_adapter_head(h, layers)).collect();
        let refs: Vec<_> = members.iter().map(|(a, h)| (a, h)).collect();
        let mixture = Mixture::new(&Cpu, &bert, &refs, BetaRule::Entropy { tau: 0.1 }).unwrap();
        let beta: Vec<f32> = (0..32 * m).map(|i| ((i % m) + 1) as f32 / (m * (m + 1) / 2) as f32).collect();
        let mix = RowMix::new(m, beta).unwrap();
        time(&format!("mixed pass, m = {m}"), 20, || {
            mixture.logits_mixed(&Cpu, &tb, &mix).unwrap();
        });
        time(&format!("entropy beta end to end, m = {m}"), 10, || {
            mixture.run(&Cpu, &tb).unwrap();
        });
    }
}
