//! Finite-difference checks of the CPU backward pass on a tiny random BERT: every trainable tensor
//! of both adapter placements, full fine-tuning (every encoder weight, embeddings included), the
//! head, with sentence pairs and padding masks, with and without dropout (a fixed dropout plan is a
//! deterministic function, so its gradient is checkable too).
//!
//! Each tensor is checked along a random ±1 direction `u`:
//! `(L(θ + εu) − L(θ − εu)) / 2ε ≈ ⟨∇L, u⟩`.

mod common;

use admix::adapter::Init;
use admix::adapter::{Adapter, AdapterKind, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::TokenBatch;
use admix::backend::{Activation, Backend};
use admix::model::bert::DropoutPlan;
use admix::model::classify::Model;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::rng::Rng;
use admix::train::init::{new_adapter, AdapterSpec};
use admix::weights::{Tensor, WeightFile};
use common::tiny::{self, H};
use safetensors::Dtype;

struct Setup {
    _dir: tempfile::TempDir,
    model: ModelDir,
    batch: TokenBatch,
    labels: Vec<u32>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 7, Dtype::F32, "");
    let model = ModelDir::open(dir.path(), 24).unwrap();
    // pairs and singles of different lengths (padding masks), one truncated
    let inputs = vec![
        TextInput::pair("the film is a quiet triumph", "critics agree"),
        TextInput::single("dull."),
        TextInput::single(
            "an overlong, self-indulgent and ultimately hollow exercise in style over substance, sadly",
        ),
        TextInput::pair("funny", "and moving, with a great cast"),
    ];
    let batch = model.tokenizer.encode(&inputs).unwrap();
    assert!(batch.lens.iter().any(|&l| l < batch.seq), "the batch must contain padding");
    Setup { _dir: dir, model, batch, labels: vec![0, 2, 1, 2] }
}

/// Random adapter with non-trivial weights (so every path carries gradient).
fn adapter(kind: AdapterKind, act: Activation, seed: u64) -> Adapter<Tensor> {
    let spec = AdapterSpec { kind, reduction: 8, activation: act, init: Init::Bert };
    let mut rng = Rng::new(seed);
    let mut a = new_adapter("a", &spec, tiny::LAYERS, H, &mut rng).unwrap();
    for (_, t) in a.named_mut() {
        t.data_mut().iter_mut().for_each(|v| *v = (rng.normal() * 0.3) as f32);
    }
    a
}

fn head(s: &Setup) -> ClassificationHead<Tensor> {
    let file = WeightFile::open(&s._dir.path().join("adapter.safetensors")).unwrap();
    ClassificationHead::load(&file, "a", H).unwrap()
}

fn loss(model: &mut Model<Cpu>, s: &Setup, plan: Option<DropoutPlan>) -> f64 {
    model.forward_backward(&Cpu, &s.batch, &s.labels, plan, false).unwrap().loss as f64
}

/// Checks every trainable tensor's gradient along a random direction; returns how many.
fn check_all(mut model: Model<Cpu>, s: &Setup, plan: Option<DropoutPlan>) -> usize {
    model.zero_grads(&Cpu).unwrap();
    model.forward_backward(&Cpu, &s.batch, &s.labels, plan, false).unwrap();
    let grads: Vec<(String, Vec<f32>)> =
        model.params().into_iter().map(|p| (p.name, p.grad.data.clone())).collect();
    let mut rng = Rng::new(99);
    for (i, (name, g)) in grads.iter().enumerate() {
        let u: Vec<f32> = (0..g.len()).map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 }).collect();
        let analytic: f64 = g.iter().zip(&u).map(|(g, u)| (*g as f64) * (*u as f64)).sum();
        let eps = 1e-3f32;
        let shift = |sign: f32, model: &mut Model<Cpu>| {
            let mut ps = model.params();
            ps[i].weight.data_mut().iter_mut().zip(&u).for_each(|(w, u)| *w += sign * eps * u);
        };
        shift(1.0, &mut model);
        let plus = loss(&mut model, s, plan);
        shift(-2.0, &mut model);
        let minus = loss(&mut model, s, plan);
        shift(1.0, &mut model);
        let numeric = (plus - minus) / (2.0 * eps as f64);
        let err = (numeric - analytic).abs();
        let tol = 2e-3 * analytic.abs().max(numeric.abs()) + 2e-3;
        assert!(err <= tol, "{name}: finite difference {numeric:.6}, backward {analytic:.6}");
    }
    grads.len()
}

fn frozen_model(s: &Setup, a: Option<Adapter<Tensor>>, full: bool) -> Model<Cpu> {
    Model::new(&Cpu, s.model.bert().unwrap(), a, head(s), full).unwrap()
}

#[test]
fn seq_bn_adapter_and_head_gradients() {
    let s = setup();
    for act in [Activation::Relu, Activation::Gelu] {
        let n = check_all(frozen_model(&s, Some(adapter(AdapterKind::SeqBn, act, 1)), false), &s, None);
        assert_eq!(n, 4 * tiny::LAYERS + 4);
    }
}

#[test]
fn double_seq_bn_adapter_gradients() {
    let s = setup();
    let n = check_all(
        frozen_model(&s, Some(adapter(AdapterKind::DoubleSeqBn, Activation::Silu, 2)), false),
        &s,
        None,
    );
    assert_eq!(n, 8 * tiny::LAYERS + 4);
}

#[test]
fn full_fine_tuning_gradients_of_every_weight() {
    let s = setup();
    // plain encoder, and encoder + Houlsby adapter (LayerNorm weights used on every path)
    let n = check_all(frozen_model(&s, None, true), &s, None);
    assert_eq!(n, 5 + 12 * tiny::LAYERS + 4);
    check_all(frozen_model(&s, Some(adapter(AdapterKind::SeqBn, Activation::Relu, 3)), true), &s, None);
}

#[test]
fn gradients_with_dropout_follow_the_masks() {
    let s = setup();
    let plan = DropoutPlan { hidden: 0.2, attention: 0.2, seed: 5, step: 3 };
    check_all(frozen_model(&s, Some(adapter(AdapterKind::SeqBn, Activation::Gelu, 4)), true), &s, Some(plan));
    // and dropout does change the function
    let mut m = frozen_model(&s, None, false);
    assert_ne!(loss(&mut m, &s, Some(plan)), loss(&mut m, &s, None));
}

#[test]
fn input_embedding_gradient_matches_the_word_table_gradient() {
    // d(word table) is the input gradient scattered by token id: check it for the used rows
    let s = setup();
    let mut m = frozen_model(&s, None, true);
    m.zero_grads(&Cpu).unwrap();
    let out = m.forward_backward(&Cpu, &s.batch, &s.labels, None, true).unwrap();
    let dx = out.input_grad.unwrap();
    let mut expect = vec![0.0f64; tiny::VOCAB * H];
    for (t, &id) in s.batch.ids.iter().enumerate() {
        for j in 0..H {
            expect[id as usize * H + j] += dx.data[t * H + j] as f64;
        }
    }
    let ps = m.params();
    assert_eq!(ps[0].name, "bert.embeddings.word_embeddings.weight");
    assert!(common::max_abs(&ps[0].grad.data, &expect) < 1e-6);
}

#[test]
fn a_zero_houlsby_adapter_is_the_identity() {
    let s = setup();
    let mut a = adapter(AdapterKind::DoubleSeqBn, Activation::Silu, 6);
    for (name, t) in a.named_mut() {
        if name.contains("adapter_up") {
            t.data_mut().fill(0.0);
        }
    }
    let bert = s.model.bert().unwrap();
    let with = bert.encode(&Cpu, &s.batch, Some(&a), |_, _| {}).unwrap();
    let without = bert.encode(&Cpu, &s.batch, None, |_, _| {}).unwrap();
    assert_eq!(Cpu.download(&with).unwrap().2, Cpu.download(&without).unwrap().2);
}

#[test]
fn bf16_gemms_give_the_f32_gradients_within_bf16s_precision() {
    // the bf16 backend rounds the inputs of every linear layer's forward and input-gradient GEMMs;
    // weight gradients, master weights and the rest stay f32
    let Ok(bf16) = Cpu::bf16() else {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    };
    let s = setup();
    for full in [false, true] {
        let grads = |be: &Cpu| -> Vec<(String, Vec<f32>)> {
            let mut m = frozen_model(&s, Some(adapter(AdapterKind::SeqBn, Activation::Gelu, 7)), full);
            m.zero_grads(be).unwrap();
            m.forward_backward(be, &s.batch, &s.labels, None, false).unwrap();
            m.params().into_iter().map(|p| (p.name, p.grad.data.clone())).collect()
        };
        let (want, got) = (grads(&Cpu), grads(&bf16));
        assert_eq!(want.len(), got.len());
        let mut worst: f64 = 0.0;
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            let d: f64 = w.iter().zip(g).map(|(w, g)| ((w - g) as f64).powi(2)).sum();
            let n: f64 = w.iter().map(|w| (*w as f64).powi(2)).sum();
            let rel = (d / n.max(1e-30)).sqrt();
            assert!(rel < 5e-2, "{name}: bf16 gradient off by {rel:.2e} (relative)");
            assert!(d > 0.0 || n == 0.0, "{name}: bf16 gradient equals f32's exactly: bf16 not in use?");
            worst = worst.max(rel);
        }
        eprintln!("full = {full}: worst relative gradient difference bf16 vs f32 {worst:.2e}");
    }
}
