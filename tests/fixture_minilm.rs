//! The CPU engine against the real reference: HF transformers + AdapterHub outputs for
//! all-MiniLM-L6-v2 on 8 sentences (tests/fixtures/minilm-oracle).

mod common;

use admix::adapter::{self, Adapter, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::TokenBatch;
use admix::backend::{Activation, Backend};
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::weights::WeightFile;
use common::*;

fn model() -> ModelDir {
    ModelDir::open(&minilm_dir(), 128).unwrap()
}

fn fixture_batch(m: &ModelDir) -> TokenBatch {
    let (s, _) = sentences();
    let inputs: Vec<TextInput> = s.iter().map(TextInput::single).collect();
    m.tokenizer.encode(&inputs).unwrap()
}

#[test]
fn model_files_are_the_fixtures_model() {
    let dir = minilm_dir();
    assert_eq!(
        admix::assets::sha256_file(&dir.join("model.safetensors")).unwrap(),
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    );
    assert_eq!(
        admix::assets::sha256_file(&dir.join("tokenizer.json")).unwrap(),
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
    );
}

#[test]
fn token_ids_match_exactly() {
    let m = model();
    let batch = fixture_batch(&m);
    let base = fixture("base_minilm.safetensors");
    let (shape, ids) = base.ints("input_ids").unwrap();
    let (_, mask) = base.ints("attention_mask").unwrap();
    let (_, types) = base.ints("token_type_ids").unwrap();
    assert_eq!(shape, vec![8, 128]);
    assert_eq!((batch.batch, batch.seq), (8, 128));
    assert_eq!(batch.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), ids);
    assert_eq!(batch.type_ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), types);
    let lens: Vec<usize> = mask.chunks(128).map(|r| r.iter().sum::<i64>() as usize).collect();
    assert_eq!(batch.lens, lens);
    assert_eq!(batch.lens, sentences().1);
    // [CLS] a [SEP] b [SEP], the second text of type 1
    let want = admix::model::tokenizer::Template {
        first: vec![101],
        between: vec![102],
        last: vec![102],
        typed_pairs: true,
    };
    assert_eq!(m.tokenizer.template(), Some(&want));
    assert_eq!(m.tokenizer.segment_end(), Some(102));
    assert!(!m.tokenizer.spaces_are_pieces());
    // only sentence 4 (163 tokens) is truncated
    assert_eq!(batch.truncated, vec![false, false, false, true, false, false, false, false]);
}

#[test]
fn hidden_states_of_every_layer_match_on_valid_tokens() {
    let m = model();
    let batch = fixture_batch(&m);
    let bert = m.bert().unwrap();
    let base = fixture("base_minilm.safetensors");
    // the reference holds the valid tokens' rows only
    let (shape, reference) = base.f64s("hidden_states_valid").unwrap();
    let valid: usize = batch.lens.iter().sum();
    assert_eq!(shape, vec![7, valid, 384]);
    let mut seen = 0;
    let last = bert
        .encode(&Cpu, &batch, None, |layer, x| {
            let want = &reference[layer * valid * 384..(layer + 1) * valid * 384];
            let worst = max_abs(&valid_rows(&x.data, &batch.lens, batch.seq, 384), want);
            assert!(worst < 1e-4, "hidden state {layer}: max abs error {worst:.2e} on valid tokens");
            seen += 1;
        })
        .unwrap();
    assert_eq!(seen, 7);
    let (_, last_ref) = base.f64s("last_hidden_state_valid_f64").unwrap();
    let worst = max_abs(&valid_rows(&last.data, &batch.lens, batch.seq, 384), &last_ref);
    assert!(worst < 1e-4, "last hidden state vs f64: {worst:.2e}");
}

#[test]
fn sentence_embeddings_match_f64_reference() {
    let m = model();
    let batch = fixture_batch(&m);
    let bert = m.bert().unwrap();
    let hidden = bert.encode(&Cpu, &batch, None, |_, _| {}).unwrap();
    let emb = Cpu.mean_pool_l2(&hidden, &batch.lens, batch.seq).unwrap();
    let (_, want) = fixture("base_minilm.safetensors").f64s("sentence_embedding_f64").unwrap();
    let err = max_abs(&emb.data, &want);
    assert!(err < 1e-5, "sentence embeddings: max abs error {err:.2e}");
}

fn adapter_logits(name: &str) -> Vec<f32> {
    let m = model();
    let batch = fixture_batch(&m);
    let bert = m.bert().unwrap();
    let weights = fixture("adapter_weights.safetensors");
    let ad = Adapter::load(&weights, name, 6, 384, Activation::Relu).unwrap();
    assert_eq!(ad.kind, adapter::AdapterKind::SeqBn);
    assert_eq!(ad.layers[0].output.down_w.shape(), &[24, 384]);
    let head = ClassificationHead::load(&weights, name, 384).unwrap();
    assert_eq!(head.num_labels, 2);
    let hidden = bert.encode(&Cpu, &batch, Some(&ad), |_, _| {}).unwrap();
    head.forward(&Cpu, &hidden, batch.batch, batch.seq).unwrap().data
}

#[test]
fn adapter_and_head_logits_match_adapterhub() {
    let oracle = fixture("adapter_oracle.safetensors");
    let (_, want) = oracle.f64s("logits_f64").unwrap();
    let got = adapter_logits("clean");
    let err = max_abs(&got, &want);
    assert!(err < 1e-5, "clean logits: max abs error {err:.2e}");
    let (_, want_adv) = oracle.f64s("adv.logits").unwrap();
    let err = max_abs(&adapter_logits("adv"), &want_adv);
    assert!(err < 1e-5, "adv logits: max abs error {err:.2e}");
}

#[test]
fn materialised_mix_adapter_matches_mix_logits() {
    let (_, want) = fixture("adapter_oracle.safetensors").f64s("mix.logits").unwrap();
    let err = max_abs(&adapter_logits("mix"), &want);
    assert!(err < 1e-5, "mix logits: max abs error {err:.2e}");
}

#[test]
fn adapter_names_are_found_in_adapterhub_files() {
    let weights = fixture("adapter_weights.safetensors");
    let names: Vec<String> = adapter::adapter_names(&weights).into_iter().collect();
    assert_eq!(names, ["adv", "clean", "mix"]);
    let heads: Vec<String> = adapter::head_names(&weights).into_iter().collect();
    assert_eq!(heads, ["adv", "clean", "mix"]);
    let e = adapter::resolve_name(&weights, None, "adapter", adapter::adapter_names(&weights)).unwrap_err();
    assert!(e.to_string().contains("several adapters (adv, clean, mix)"));
}

#[test]
fn an_adapterhub_checkpoint_with_scaling_leave_out_and_a_three_layer_relu_head_matches_adapterhub() {
    // variant/: seq_bn with reduction 32, scaling 2.0, leave_out [1, 4]; a 3-layer ReLU head
    let m = model();
    let batch = fixture_batch(&m);
    let bert = m.bert().unwrap();
    let ck = admix::classifier::checkpoint::load(&fixture_dir().join("variant"), 6, 384).unwrap();
    assert_eq!(ck.labels, ["negative", "neutral", "positive"]);
    assert_eq!((ck.head.layers(), ck.head.activation), (3, Activation::Relu));
    let ad = ck.adapter.expect("the adapter");
    // left-out layers add exactly nothing
    for l in [1, 4] {
        assert!(ad.layers[l].output.up_w.data().iter().all(|&v| v == 0.0));
        assert!(ad.layers[l].output.up_b.data().iter().all(|&v| v == 0.0));
    }
    let hidden = bert.encode(&Cpu, &batch, Some(&ad), |_, _| {}).unwrap();
    let got = ck.head.forward(&Cpu, &hidden, batch.batch, batch.seq).unwrap().data;
    let (shape, want) = fixture("adapter_oracle.safetensors").f64s("variant.logits_f64").unwrap();
    assert_eq!(shape, [8, 3]);
    let err = max_abs(&got, &want);
    assert!(err < 1e-5, "variant logits: max abs error {err:.2e}");
    // the check can tell: the same weights at scaling 1 are far from AdapterHub's logits
    let settings = admix::adapter::config::AdapterSettings {
        leave_out: [1, 4].into_iter().collect(),
        ..Default::default()
    };
    let w = WeightFile::open(&fixture_dir().join("variant/adapter.safetensors")).unwrap();
    let unscaled = Adapter::load_configured(&w, "variant", 6, 384, &settings).unwrap();
    let hidden = bert.encode(&Cpu, &batch, Some(&unscaled), |_, _| {}).unwrap();
    let off = max_abs(&ck.head.forward(&Cpu, &hidden, batch.batch, batch.seq).unwrap().data, &want);
    assert!(off > 1e-2, "scaling 1 gives {off:.2e}");
}
