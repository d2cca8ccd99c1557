//! RoBERTa on the CPU against the reference: HF transformers + AdapterHub outputs for the tiny
//! RoBERTa of tests/fixtures/roberta-tiny (its own byte-level BPE tokenizer, random weights) on
//! six sentences and three sentence pairs, and both adapter placements as AdapterHub saved them.

mod common;

use admix::backend::cpu::Cpu;
use admix::backend::{Backend, TokenBatch};
use admix::classifier::checkpoint;
use admix::model::config::Family;
use admix::model::tokenizer::{Template, TextInput};
use admix::model::ModelDir;
use common::*;

const LAYERS: usize = 3;
const H: usize = 32;

fn model() -> ModelDir {
    ModelDir::open(&roberta_dir().join("model"), 40).unwrap()
}

/// The sentences (`"single"`) or the pairs (`"pair"`) as one padded batch.
fn batch(m: &ModelDir, which: &str) -> TokenBatch {
    let (single, pair) = roberta_inputs();
    m.tokenizer.encode(if which == "single" { &single } else { &pair }).unwrap()
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_to_max(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    max_abs(a, b) / scale
}

#[test]
fn the_config_is_a_roberta_and_the_tokenizer_gives_the_references_ids() {
    let m = model();
    assert_eq!(m.config.family(), Family::Roberta { padding_idx: 1 });
    // 42 positions, the first two (up to padding_idx) never a token's
    assert_eq!(m.config.max_tokens(), 40);
    let e = ModelDir::open(&roberta_dir().join("model"), 41).err().unwrap();
    assert!(format!("{e:#}").contains("exceeds the model's 40 positions"), "{e:#}");
    assert_eq!(m.tokenizer.pad_id(), 1);
    // <s> a </s> and <s> a </s></s> b </s>
    let want = Template { first: vec![0], between: vec![2, 2], last: vec![2], typed_pairs: false };
    assert_eq!(m.tokenizer.template(), Some(&want));
    assert_eq!(m.tokenizer.segment_end(), None);
    assert!(m.tokenizer.spaces_are_pieces());
    let oracle = roberta_oracle();
    for which in ["single", "pair"] {
        let b = batch(&m, which);
        let (shape, ids) = oracle.ints(&format!("{which}.input_ids")).unwrap();
        let (_, mask) = oracle.ints(&format!("{which}.attention_mask")).unwrap();
        assert_eq!(shape, [b.batch, b.seq], "{which}");
        assert_eq!(b.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), ids, "{which}");
        let lens: Vec<usize> = mask.chunks(b.seq).map(|r| r.iter().sum::<i64>() as usize).collect();
        assert_eq!(b.lens, lens, "{which}");
        // one token type: pairs are told apart by </s></s> alone
        assert!(b.type_ids.iter().all(|&t| t == 0), "{which}");
    }
    // sentence 5 and pair 2 are cut at 40 tokens
    assert_eq!(batch(&m, "single").truncated, [false, false, false, false, true, false]);
    assert_eq!(batch(&m, "pair").truncated, [false, true, false]);
}

#[test]
fn hidden_states_of_every_layer_and_sentence_embeddings_match() {
    let m = model();
    let bert = m.bert().unwrap();
    let oracle = roberta_oracle();
    for which in ["single", "pair"] {
        let b = batch(&m, which);
        let (shape, reference) = oracle.f64s(&format!("{which}.hidden_states_valid_f64")).unwrap();
        let valid: usize = b.lens.iter().sum();
        assert_eq!(shape, [LAYERS + 1, valid, H]);
        let mut seen = 0;
        let last = bert
            .encode(&Cpu, &b, None, |layer, x| {
                let want = &reference[layer * valid * H..(layer + 1) * valid * H];
                let worst = max_abs(&valid_rows(&x.data, &b.lens, b.seq, H), want);
                assert!(worst < 1e-5, "{which}, hidden state {layer}: max abs error {worst:.2e}");
                seen += 1;
            })
            .unwrap();
        assert_eq!(seen, LAYERS + 1);
        let emb = Cpu.mean_pool_l2(&last, &b.lens, b.seq).unwrap();
        let (_, want) = oracle.f64s(&format!("{which}.sentence_embedding_f64")).unwrap();
        let err = max_abs(&emb.data, &want);
        assert!(err < 1e-5, "{which}: sentence embeddings, max abs error {err:.2e}");
    }
}

#[test]
fn the_check_can_tell_bert_positions_from_robertas() {
    // the same weights numbered as BERT numbers positions are far from the reference
    let m = model();
    let mut cfg = m.config.clone();
    cfg.model_type = "bert".into();
    let bert = admix::model::bert::load_host(&m.weights, &cfg).unwrap();
    let b = batch(&m, "single");
    let out = bert.encode(&Cpu, &b, None, |_, _| {}).unwrap();
    let (_, want) = roberta_oracle().f64s("single.hidden_states_valid_f64").unwrap();
    let valid: usize = b.lens.iter().sum();
    let err = max_abs(&valid_rows(&out.data, &b.lens, b.seq, H), &want[LAYERS * valid * H..]);
    assert!(err > 0.1, "BERT's positions give {err:.2e}");
}

#[test]
fn weights_under_a_roberta_prefix_load_and_a_bert_prefix_is_refused() {
    let m = model();
    let tensors = read_tensors(&roberta_dir().join("model/model.safetensors"));
    for (prefix, ok) in [("roberta.", true), ("bert.", false)] {
        let dir = tempfile::tempdir().unwrap();
        copy_files(&roberta_dir().join("model"), dir.path(), Some(&["config.json", "tokenizer.json"]));
        let renamed: Vec<_> =
            tensors.iter().map(|(n, s, d)| (format!("{prefix}{n}"), s.clone(), d.clone())).collect();
        admix::io::write_safetensors(&dir.path().join("model.safetensors"), &renamed).unwrap();
        match ModelDir::open(dir.path(), 40) {
            Ok(prefixed) => {
                assert!(ok, "{prefix}");
                let b = batch(&m, "pair");
                let want = m.bert().unwrap().encode(&Cpu, &b, None, |_, _| {}).unwrap();
                let got = prefixed.bert().unwrap().encode(&Cpu, &b, None, |_, _| {}).unwrap();
                assert_eq!(got.data, want.data);
            }
            Err(e) => {
                assert!(!ok, "{prefix}: {e:#}");
                assert!(format!("{e:#}").contains("model_type `roberta`"), "{e:#}");
            }
        }
    }
}

#[test]
fn adapterhub_checkpoints_of_both_placements_give_adapterhubs_logits() {
    let m = model();
    let bert = m.bert().unwrap();
    let oracle = roberta_oracle();
    for (name, kind, labels) in [
        ("pfeiffer", admix::adapter::AdapterKind::SeqBn, 2),
        ("houlsby", admix::adapter::AdapterKind::DoubleSeqBn, 3),
    ] {
        let ck = checkpoint::load(&roberta_dir().join(name), LAYERS, H).unwrap();
        let ad = ck.adapter.expect("an adapter");
        assert_eq!((ad.kind, ck.head.num_labels), (kind, labels), "{name}");
        for (which, key) in [("single", "logits_f64"), ("pair", "pair_logits_f64")] {
            let b = batch(&m, which);
            let hidden = bert.encode(&Cpu, &b, Some(&ad), |_, _| {}).unwrap();
            let got = ck.head.forward(&Cpu, &hidden, b.batch, b.seq).unwrap().data;
            let (shape, want) = oracle.f64s(&format!("{name}.{key}")).unwrap();
            assert_eq!(shape, [b.batch, labels]);
            let err = max_abs(&got, &want);
            assert!(err < 1e-5, "{name}, {which}: max abs error {err:.2e}");
        }
    }
}

#[test]
fn adapter_gradients_and_the_input_gradient_match_the_reference() {
    let m = model();
    let oracle = roberta_oracle();
    let b = batch(&m, "single");
    for name in ["pfeiffer", "houlsby"] {
        let ck = checkpoint::load(&roberta_dir().join(name), LAYERS, H).unwrap();
        let mut model =
            admix::model::classify::Model::new(&Cpu, m.bert().unwrap(), ck.adapter, ck.head, false).unwrap();
        let labels: Vec<u32> =
            oracle.ints(&format!("{name}.labels")).unwrap().1.iter().map(|&l| l as u32).collect();
        model.zero_grads(&Cpu).unwrap();
        let out = model.forward_backward(&Cpu, &b, &labels, None, true).unwrap();
        let loss_ref = oracle.f64s(&format!("{name}.loss_f64")).unwrap().1[0];
        assert!((out.loss as f64 - loss_ref).abs() < 1e-5, "{name}: loss {} vs {loss_ref}", out.loss);
        let params = model.params();
        // every tensor of the adapter and head, under AdapterHub's RoBERTa names
        let layers_per_module = if name == "houlsby" { 2 } else { 1 };
        assert_eq!(params.len(), LAYERS * layers_per_module * 4 + 4, "{name}");
        for p in params {
            assert!(
                p.name.starts_with("roberta.encoder.layer.") || p.name.starts_with("heads."),
                "{}",
                p.name
            );
            let (shape, reference) = oracle.f64s(&format!("{name}.grad_f64.{}", p.name)).unwrap();
            assert_eq!(shape.iter().product::<usize>(), p.grad.data.len(), "{}", p.name);
            let err = rel_to_max(&p.grad.data, &reference);
            assert!(err < 1e-5, "{name}: gradient of {}: error {err:.2e} of its max", p.name);
        }
        let dx = out.input_grad.expect("input gradient");
        let (_, reference) = oracle.f64s(&format!("{name}.grad.inputs_embeds_valid_f64")).unwrap();
        let err = rel_to_max(&valid_rows(&dx.data, &b.lens, b.seq, H), &reference);
        assert!(err < 1e-5, "{name}: grad.inputs_embeds: error {err:.2e} of its max");
    }
}

#[test]
fn a_checkpoint_admix_writes_for_roberta_is_named_as_adapterhub_names_it() {
    let m = model();
    let ck = checkpoint::load(&roberta_dir().join("houlsby"), LAYERS, H).unwrap();
    let mut model =
        admix::model::classify::Model::new(&Cpu, m.bert().unwrap(), ck.adapter, ck.head, false).unwrap();
    let meta = checkpoint::Meta {
        base_model: roberta_dir().join("model"),
        family: m.config.family(),
        hidden: H,
        labels: ck.labels.clone(),
        reduction: Some(4),
        init: admix::adapter::Init::Bert,
    };
    let dir = tempfile::tempdir().unwrap();
    checkpoint::write(&Cpu, &mut model, &meta, dir.path()).unwrap();
    // the same tensor names as AdapterHub's own file, and the same values
    let ours = read_tensors(&dir.path().join(checkpoint::ADAPTER_WEIGHTS));
    let theirs = read_tensors(&roberta_dir().join("houlsby").join(checkpoint::ADAPTER_WEIGHTS));
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert_eq!(a.2, b.2, "{}", a.0);
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(checkpoint::ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(cfg["model_class"], "RobertaAdapterModel");
    assert_eq!(cfg["model_type"], "roberta");
    // and admix reads it back to the same logits
    let back = checkpoint::load(dir.path(), LAYERS, H).unwrap();
    let b = batch(&m, "pair");
    let bert = m.bert().unwrap();
    let logits = |ad, head: &admix::adapter::ClassificationHead<_>| {
        let hidden = bert.encode(&Cpu, &b, Some(ad), |_, _| {}).unwrap();
        head.forward(&Cpu, &hidden, b.batch, b.seq).unwrap().data
    };
    let (_, want) = roberta_oracle().f64s("houlsby.pair_logits_f64").unwrap();
    assert!(max_abs(&logits(back.adapter.as_ref().unwrap(), &back.head), &want) < 1e-5);
}

#[test]
fn a_text_input_pair_is_encoded_as_roberta_encodes_it() {
    // <s> A </s></s> B </s>, checked on the ids of the pieces themselves
    let m = model();
    let t = &m.tokenizer;
    let (a, b) = (t.pieces("The cat").unwrap(), t.pieces("sat.").unwrap());
    let got = t.encode_rows(&[TextInput::pair("The cat", "sat.")]).unwrap().remove(0).0;
    assert_eq!(got, [&[0][..], &a, &[2, 2], &b, &[2]].concat());
}
