//! The whole model on the CUDA path, run by the SIMT emulator: the real MiniLM against the
//! fixture's reference outputs, and a tiny random BERT (sentence pairs, padding, both adapter
//! placements, a bottleneck that is not a multiple of 8) against the CPU backend.
//!
//! Each kernel is within 1e-2 of the CPU (tests/cuda_kernels.rs, ~2e-3 measured); a whole model
//! compounds the bf16 rounding of weights and of the activations between ~40 launches, and
//! measured 0.6–1.4e-2 end to end, so model outputs are held to ‖emu − ref‖/‖ref‖ ≤ 3e-2 and to
//! the same predicted class wherever the reference is not a near tie.

mod common;

use admix::adapter::Init;
use admix::adapter::{Adapter, AdapterKind, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::cuda::checks::rel_err;
use admix::backend::cuda::Cuda;
use admix::backend::TokenBatch;
use admix::backend::{Activation, Backend};
use admix::model::bert::Bert;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::rng::Rng;
use admix::train::init::{self, AdapterSpec};
use admix::weights::{Tensor, WeightFile};
use common::tiny;

/// Sentence embeddings and head logits of `batch` on `be`.
fn outputs<B: Backend>(
    be: &B,
    bert: &Bert<Tensor>,
    adapter: Option<&Adapter<Tensor>>,
    head: &ClassificationHead<Tensor>,
    batch: &TokenBatch,
) -> (Vec<f32>, Vec<f32>) {
    let bert = bert.to_backend(be).unwrap();
    let adapter = adapter.map(|a| a.to_backend(be).unwrap());
    let head = head.to_backend(be).unwrap();
    let hidden = bert.encode(be, batch, adapter.as_ref(), |_, _| {}).unwrap();
    let emb = be.mean_pool_l2(&hidden, &batch.lens, batch.seq).unwrap();
    let cls = bert.encode_cls(be, batch, adapter.as_ref(), None).unwrap();
    let logits = head.forward(be, &cls, batch.batch, 1).unwrap();
    (be.download(&emb).unwrap().2, be.download(&logits).unwrap().2)
}

const MODEL_TOL: f64 = 3e-2;

fn close(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= MODEL_TOL, "{what}: relative error {e:.2e} > {MODEL_TOL:.0e}");
}

/// Same argmax per row of `[rows, labels]` logits, except where the reference's top two are
/// within 0.05.
fn same_predictions(what: &str, got: &[f32], want: &[f32], labels: usize) {
    for (r, (g, w)) in got.chunks(labels).zip(want.chunks(labels)).enumerate() {
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        let mut sorted = w.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 0.05 {
            assert_eq!(argmax(g), argmax(w), "{what}: row {r} predicts differently ({g:?} vs {w:?})");
        }
    }
}

#[test]
fn minilm_with_an_adapterhub_adapter_matches_the_reference_on_the_emulator() {
    // two of the fixture's sentences (15 and 18 tokens): each sentence's outputs do not depend on
    // the rest of its batch, and the emulator runs a 128-token batch of 8 in ~20 s
    let pick = [0usize, 1];
    let m = ModelDir::open(&common::minilm_dir(), 128).unwrap();
    let (sentences, _) = common::sentences();
    let inputs: Vec<TextInput> = pick.iter().map(|&i| TextInput::single(&sentences[i])).collect();
    let batch = m.tokenizer.encode(&inputs).unwrap();
    let bert = m.bert().unwrap();
    let weights = common::fixture("adapter_weights.safetensors");
    let ad = Adapter::load(&weights, "clean", 6, 384, Activation::Relu).unwrap();
    let head = ClassificationHead::load(&weights, "clean", 384).unwrap();
    let rows = |v: Vec<f64>, width: usize| -> Vec<f32> {
        pick.iter().flat_map(|&i| v[i * width..(i + 1) * width].iter().map(|&x| x as f32)).collect()
    };

    let cuda = Cuda::emulator().unwrap();
    let (emb, _) = outputs(&cuda, &bert, None, &head, &batch);
    let (_, want_emb) = common::fixture("base_minilm.safetensors").f64s("sentence_embedding_f64").unwrap();
    close("MiniLM sentence embeddings vs the f64 reference", &emb, &rows(want_emb, 384));
    let (_, logits) = outputs(&cuda, &bert, Some(&ad), &head, &batch);
    let (_, want_logits) = common::fixture("adapter_oracle.safetensors").f64s("logits_f64").unwrap();
    let want_logits = rows(want_logits, 2);
    close("MiniLM + seq_bn adapter + head logits vs AdapterHub", &logits, &want_logits);
    same_predictions("MiniLM + adapter", &logits, &want_logits, 2);
}

#[test]
fn tiny_bert_with_both_adapter_placements_matches_the_cpu_on_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 7, safetensors::Dtype::F32, "");
    let m = ModelDir::open(dir.path(), 40).unwrap();
    let inputs = vec![
        TextInput::pair("a short premise", "and a somewhat longer hypothesis that goes on"),
        TextInput::single("one"),
        TextInput::single("the quick brown fox jumps over the lazy dog, twice, and then once more for luck"),
    ];
    let batch = m.tokenizer.encode(&inputs).unwrap();
    assert!(batch.lens.iter().any(|&l| l < batch.seq), "the batch must contain padding");
    let bert = m.bert().unwrap();
    let file = WeightFile::open(&dir.path().join("adapter.safetensors")).unwrap();
    let seq_bn = Adapter::load(&file, "a", tiny::LAYERS, tiny::H, Activation::Relu).unwrap();
    let head = ClassificationHead::load(&file, "a", tiny::H).unwrap();
    let spec = AdapterSpec {
        kind: AdapterKind::DoubleSeqBn,
        reduction: 4,
        activation: Activation::Silu,
        init: Init::Bert,
    };
    let double = init::new_adapter("d", &spec, tiny::LAYERS, tiny::H, &mut Rng::new(3)).unwrap();

    let cuda = Cuda::emulator().unwrap();
    for (name, ad) in [("no adapter", None), ("seq_bn", Some(&seq_bn)), ("double_seq_bn", Some(&double))] {
        let (emb, logits) = outputs(&cuda, &bert, ad, &head, &batch);
        let (cpu_emb, cpu_logits) = outputs(&Cpu, &bert, ad, &head, &batch);
        close(&format!("tiny BERT, {name}: sentence embeddings"), &emb, &cpu_emb);
        close(&format!("tiny BERT, {name}: logits"), &logits, &cpu_logits);
        same_predictions(&format!("tiny BERT, {name}"), &logits, &cpu_logits, head.num_labels);
    }
}

#[test]
fn tiny_roberta_with_both_adapterhub_placements_matches_the_reference_on_the_emulator() {
    // tests/fixtures/roberta-tiny: RoBERTa's positions, one token type, <s> … </s></s> … </s> pairs
    let dir = common::roberta_dir();
    let m = ModelDir::open(&dir.join("model"), 40).unwrap();
    let (single, pair) = common::roberta_inputs();
    let oracle = common::roberta_oracle();
    let bert = m.bert().unwrap();
    let cuda = Cuda::emulator().unwrap();
    for (name, labels) in [("pfeiffer", 2), ("houlsby", 3)] {
        let ck = admix::classifier::checkpoint::load(&dir.join(name), 3, 32).unwrap();
        for (which, inputs, key) in [("single", &single, "logits_f64"), ("pair", &pair, "pair_logits_f64")] {
            let batch = m.tokenizer.encode(inputs).unwrap();
            let (emb, logits) = outputs(&cuda, &bert, ck.adapter.as_ref(), &ck.head, &batch);
            let want: Vec<f32> =
                oracle.f64s(&format!("{name}.{key}")).unwrap().1.iter().map(|&v| v as f32).collect();
            close(&format!("tiny RoBERTa + {name}, {which}: logits vs AdapterHub"), &logits, &want);
            same_predictions(&format!("tiny RoBERTa + {name}, {which}"), &logits, &want, labels);
            if name == "pfeiffer" {
                let (plain, _) = outputs(&cuda, &bert, None, &ck.head, &batch);
                let want: Vec<f32> = oracle
                    .f64s(&format!("{which}.sentence_embedding_f64"))
                    .unwrap()
                    .1
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                close(&format!("tiny RoBERTa, {which}: sentence embeddings"), &plain, &want);
                assert_eq!(emb.len(), plain.len());
            }
        }
    }
}
