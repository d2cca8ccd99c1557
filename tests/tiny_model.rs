//! The engine on a tiny random BERT against an independent f64 reference, for shapes the MiniLM
//! fixture does not cover: sentence pairs, batch 1, 512-token inputs, F16/BF16 storage, the
//! `bert.` prefix, and the seq_bn adapter + head path.

mod common;

use admix::adapter::{Adapter, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::Activation;
use admix::backend::TokenBatch;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use common::tiny::{self, H};
use safetensors::Dtype;

fn check(
    dir: &std::path::Path,
    weights: &std::collections::HashMap<String, Vec<f32>>,
    inputs: &[TextInput],
    max_len: usize,
) -> TokenBatch {
    let m = ModelDir::open(dir, max_len).unwrap();
    let batch = m.tokenizer.encode(inputs).unwrap();
    let bert = m.bert().unwrap();
    let file = admix::weights::WeightFile::open(&dir.join("adapter.safetensors")).unwrap();
    let ad = Adapter::load(&file, "a", tiny::LAYERS, H, Activation::Relu).unwrap();
    let head = ClassificationHead::load(&file, "a", H).unwrap();
    for with_adapter in [false, true] {
        let hidden = bert.encode(&Cpu, &batch, with_adapter.then_some(&ad), |_, _| {}).unwrap();
        let (want, want_logits) = tiny::reference_forward(
            weights,
            &batch.ids,
            &batch.type_ids,
            &batch.lens,
            batch.seq,
            with_adapter,
        );
        let mut worst = 0.0f64;
        for (b, &len) in batch.lens.iter().enumerate() {
            let rows = b * batch.seq * H..(b * batch.seq + len) * H;
            worst = worst.max(common::max_abs(&hidden.data[rows.clone()], &want[rows]));
        }
        assert!(worst < 1e-4, "hidden states (adapter: {with_adapter}): max abs error {worst:.2e}");
        if with_adapter {
            let logits = head.forward(&Cpu, &hidden, batch.batch, batch.seq).unwrap();
            assert_eq!((logits.rows, logits.cols), (batch.batch, 3));
            let err = common::max_abs(&logits.data, &want_logits);
            assert!(err < 1e-5, "logits: max abs error {err:.2e}");
        }
    }
    batch
}

#[test]
fn sentence_pairs_with_token_types() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny::write_model(dir.path(), 1, Dtype::F32, "");
    let inputs = [
        TextInput::pair("A man is playing a guitar.", "Someone plays music."),
        TextInput::pair("Short.", "A much longer second segment of the pair, with several more words in it."),
        TextInput::single("no pair here"),
    ];
    let batch = check(dir.path(), &w, &inputs, 128);
    // [CLS] a [SEP] b [SEP]: type 0 up to the first [SEP], then 1
    let sep = batch.ids[..batch.seq].iter().position(|&t| t == 102).unwrap();
    assert!(batch.type_ids[..=sep].iter().all(|&t| t == 0));
    assert!(batch.type_ids[sep + 1..batch.lens[0]].iter().all(|&t| t == 1));
    assert!(batch.type_ids[2 * batch.seq..3 * batch.seq].iter().all(|&t| t == 0));
}

#[test]
fn batch_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny::write_model(dir.path(), 2, Dtype::F32, "");
    let batch = check(dir.path(), &w, &[TextInput::single("just one sentence")], 128);
    assert_eq!((batch.batch, batch.lens[0]), (1, batch.seq));
}

#[test]
fn max_length_512_truncates_long_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny::write_model(dir.path(), 3, Dtype::F32, "");
    let long = "the quick brown fox jumps over the lazy dog ".repeat(80); // ~720 tokens
    let batch = check(dir.path(), &w, &[TextInput::single(long), TextInput::single("short one")], 512);
    assert_eq!(batch.seq, 512);
    assert_eq!(batch.lens[0], 512);
    assert_eq!(batch.truncated, vec![true, false]);
    assert_eq!(batch.ids[511], 102, "a truncated sequence still ends with [SEP]");
}

#[test]
fn half_precision_storage_and_bert_prefix() {
    for (dtype, prefix) in [(Dtype::F16, "bert."), (Dtype::BF16, "")] {
        let dir = tempfile::tempdir().unwrap();
        let w = tiny::write_model(dir.path(), 4, dtype, prefix);
        check(dir.path(), &w, &[TextInput::single("half precision weights"), TextInput::single("ok")], 128);
    }
}

#[test]
fn f32_weights_are_memory_mapped_without_copy() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 5, Dtype::F32, "");
    let m = ModelDir::open(dir.path(), 128).unwrap();
    let t = m.weights.tensor("embeddings.word_embeddings.weight", &[tiny::VOCAB, H]).unwrap();
    assert!(t.is_mapped());
}

#[test]
fn cls_only_encoding_equals_the_cls_rows_of_the_full_encoding() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 5, Dtype::F32, "");
    let m = ModelDir::open(dir.path(), 64).unwrap();
    let inputs = [TextInput::single("a short one"), TextInput::pair("and a pair", "of two texts, longer")];
    let batch = m.tokenizer.encode(&inputs).unwrap();
    let bert = m.bert().unwrap();
    let file = admix::weights::WeightFile::open(&dir.path().join("adapter.safetensors")).unwrap();
    let ad = Adapter::load(&file, "a", tiny::LAYERS, H, Activation::Relu).unwrap();
    let full = bert.encode(&Cpu, &batch, Some(&ad), |_, _| {}).unwrap();
    let cls = bert.encode_cls(&Cpu, &batch, Some(&ad), None).unwrap();
    assert_eq!(cls.rows, 2);
    // equal up to the GEMMs' blocking (different row counts sum in a different order)
    for b in 0..2 {
        let want: Vec<f64> = full.row(b * batch.seq).iter().map(|&v| v as f64).collect();
        assert!(common::max_abs(cls.row(b), &want) < 1e-5);
    }
}
