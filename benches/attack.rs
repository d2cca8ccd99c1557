//! Attack building blocks on the real MiniLM (run `admix fetch` first), CPU f32, on
//! `ADMIX_BENCH_THREADS` threads (default 2):
//! - candidate scoring: the classifier forward at the shapes a black-box attack sends (MR
//!   sentences are ~27 tokens; 4 to 256 candidates per batch), reported per query;
//! - one PGD step on a batch of 32 (forward + backward to the embeddings + projection);
//! - HotFlip's vocabulary scoring: one GEMM of 2·n rows against the 30,522 × 384 word table.
//!
//!     cargo bench --bench attack
//!
//! Prints median / min / max over repetitions after warm-up, and one JSON line per case.

use admix::backend::cpu::Cpu;
use admix::backend::{Activation, Backend, Norm, PgdStep};
use admix::model::classify::Model;

mod common;
use common::{batch, load_model, random, time};

fn main() {
    let (model, threads) = load_model("attack");
    let (h, layers) = (model.config.hidden_size, model.config.num_hidden_layers);
    let bert = model.bert().unwrap();
    let word = bert.emb.word.clone();
    let (adapter, head) = common::random_adapter_head(h, layers);
    let m = Model::new(&Cpu, bert, Some(adapter), head, false).unwrap();
    println!("MiniLM-L6 + seq_bn adapter + head, CPU f32, {threads} threads");
    for rows in [4usize, 16, 64, 128, 256] {
        let tb = batch(rows, 27, rows as u64);
        time(&format!("score {rows} candidates x 27 tokens"), (512 / rows).clamp(5, 50), || {
            let l = m.logits(&Cpu, &tb).unwrap();
            assert!(l.data.iter().all(|v| v.is_finite()));
        });
    }
    let tb = batch(32, 27, 5);
    let labels = vec![1u32; 32];
    let step = PgdStep { norm: Norm::L2, alpha: 0.25, eps: 1.0 };
    let mut delta = Cpu.zeros(tb.tokens(), h).unwrap();
    time("pgd step batch 32 x 27", 10, || {
        let out = m.input_gradient(&Cpu, &tb, &labels, Some(&delta)).unwrap();
        Cpu.pgd_step(&mut delta, &out.input_grad.unwrap(), &tb.lens, tb.seq, &step).unwrap();
    });
    let n = 20;
    let x = Cpu.upload(2 * n, h, &random(2 * n * h, 3, 0.05)).unwrap();
    let zero = admix::weights::Tensor::from_vec(vec![word.shape()[0]], vec![0.0; word.shape()[0]]);
    time("hotflip scores 2x20 rows x 30522 vocab", 20, || {
        Cpu.linear(&x, &word, &zero, Activation::Identity, None).unwrap();
    });
}
