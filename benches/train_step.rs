//! Training-step benchmark on the real MiniLM (run `admix fetch` first): one adapter-training
//! step (forward with the tape, backward to the adapters and head, AdamW) at batch 32 × 128 (all
//! tokens valid), without and with dropout 0.1, and a full fine-tuning step, on
//! `ADMIX_BENCH_THREADS` threads (default 2).
//!
//!     cargo bench --bench train_step
//!
//! The PyTorch peer is benches/pytorch_train_step.py.

mod common;
use common::{batch, load_model, time};

use admix::adapter::AdapterKind;
use admix::adapter::Init;
use admix::backend::cpu::Cpu;
use admix::backend::Activation;
use admix::model::bert::DropoutPlan;
use admix::model::classify::Model;
use admix::rng::Rng;
use admix::train::init::{new_adapter, new_head, AdapterSpec};
use admix::train::optim::{AdamW, AdamWConfig};

fn main() {
    let (model, threads) = load_model("train_step");
    let (h, layers) = (model.config.hidden_size, model.config.num_hidden_layers);
    let mut rng = Rng::new(1);
    let spec = AdapterSpec {
        kind: AdapterKind::SeqBn,
        reduction: 16,
        activation: Activation::Relu,
        init: Init::Bert,
    };
    let labels: Vec<u32> = (0..32).map(|i| i % 2).collect();
    println!("MiniLM-L6 training step, CPU f32, {threads} threads");
    // 32 x 32 is an MR-sized batch (length-bucketed snippets average ~28 tokens)
    for (full, dropout, seq, reps) in
        [(false, 0.0, 128, 10), (false, 0.1, 128, 10), (true, 0.0, 128, 5), (false, 0.1, 32, 20)]
    {
        let tb = batch(32, seq, 3);
        let adapter = (!full).then(|| new_adapter("b", &spec, layers, h, &mut rng).unwrap());
        let head = new_head("b", h, 2, &mut rng);
        let mut m = Model::new(&Cpu, model.bert().unwrap(), adapter, head, full).unwrap();
        let mut opt = AdamW::new(AdamWConfig { lr: 1e-4, ..AdamWConfig::default() });
        let mut step = 0u64;
        let what = if full { "full fine-tuning" } else { "seq_bn adapter" };
        time(&format!("{what} step 32 x {seq}, dropout {dropout}"), reps, || {
            let plan = DropoutPlan { hidden: dropout, attention: dropout, seed: 1, step };
            m.zero_grads(&Cpu).unwrap();
            let out = m.forward_backward(&Cpu, &tb, &labels, (dropout > 0.0).then_some(plan), false).unwrap();
            assert!(out.loss.is_finite());
            opt.update(&Cpu, m.params(), 1e-4).unwrap();
            step += 1;
        });
    }
}
