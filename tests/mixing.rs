//! AdpMixup's weight-space mixing against independent references: the fixture's `mix` adapter
//! (0.3·clean + 0.7·adv, materialised by PyTorch) and its logits, and explicitly materialised
//! mixed weights for per-sample β, on the CPU and on the CUDA kernels in the SIMT emulator.

mod common;

use admix::adapter::mix::{entropy, mix_adapters, mix_heads, BetaRule, RowMix};
use admix::adapter::router::features::MemberPasses;
use admix::adapter::Init;
use admix::adapter::{Adapter, AdapterKind, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::cuda::checks::rel_err;
use admix::backend::cuda::Cuda;
use admix::backend::TokenBatch;
use admix::backend::{Activation, Backend};
use admix::model::bert::Bert;
use admix::model::mixture::Mixture;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::rng::Rng;
use admix::train::init::{self, AdapterSpec};
use admix::weights::{Tensor, WeightFile};
use common::*;

struct Fixture {
    bert: Bert<Tensor>,
    model: ModelDir,
    weights: WeightFile,
}

fn load() -> Fixture {
    let model = ModelDir::open(&minilm_dir(), 128).unwrap();
    Fixture { bert: model.bert().unwrap(), model, weights: fixture("adapter_weights.safetensors") }
}

impl Fixture {
    fn member(&self, name: &str) -> (Adapter<Tensor>, ClassificationHead<Tensor>) {
        (
            Adapter::load(&self.weights, name, 6, 384, Activation::Relu).unwrap(),
            ClassificationHead::load(&self.weights, name, 384).unwrap(),
        )
    }
    fn batch(&self, pick: &[usize]) -> TokenBatch {
        let (s, _) = sentences();
        let inputs: Vec<TextInput> = pick.iter().map(|&i| TextInput::single(&s[i])).collect();
        self.model.tokenizer.encode(&inputs).unwrap()
    }
}

/// Logits of one (materialised) adapter + head.
fn plain_logits<B: Backend>(
    be: &B,
    bert: &Bert<Tensor>,
    a: &Adapter<Tensor>,
    h: &ClassificationHead<Tensor>,
    batch: &TokenBatch,
) -> Vec<f32> {
    let bert = bert.to_backend(be).unwrap();
    let (a, h) = (a.to_backend(be).unwrap(), h.to_backend(be).unwrap());
    let cls = bert.encode_cls(be, batch, Some(&a), None).unwrap();
    be.download(&h.forward(be, &cls, batch.batch, 1).unwrap()).unwrap().2
}

fn rows_of(v: &[f64], pick: &[usize], width: usize) -> Vec<f64> {
    pick.iter().flat_map(|&i| v[i * width..(i + 1) * width].iter().copied()).collect()
}

#[test]
fn materialised_mix_equals_the_fixtures_mix_tensor_by_tensor() {
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let (adv, adv_h) = f.member("adv");
    let (mut want, mut want_h) = f.member("mix");
    let mut got = mix_adapters(&[&clean, &adv], &[0.3, 0.7]).unwrap();
    let mut got_h = mix_heads(&[&clean_h, &adv_h], &[0.3, 0.7]).unwrap();
    let mut pairs = got.named_mut();
    pairs.extend(got_h.named_mut());
    let mut wants = want.named_mut();
    wants.extend(want_h.named_mut());
    assert_eq!(pairs.len(), 6 * 4 + 4);
    for ((name, g), (_, w)) in pairs.iter().zip(&wants) {
        assert_eq!(g.shape(), w.shape(), "{name}");
        let err = g.data().iter().zip(w.data()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-6, "{name}: max abs error {err:.2e}");
    }
}

#[test]
fn per_sample_mix_on_the_cpu_matches_the_fixtures_mix_logits() {
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let (adv, adv_h) = f.member("adv");
    let all: Vec<usize> = (0..8).collect();
    let batch = f.batch(&all);
    let mixture =
        Mixture::new(&Cpu, &f.bert, &[(&clean, &clean_h), (&adv, &adv_h)], BetaRule::Fixed(vec![0.3, 0.7]))
            .unwrap();
    let out = mixture.run(&Cpu, &batch).unwrap();
    assert!(out.beta.iter().all(|b| b == &[0.3, 0.7]));
    let mix = RowMix::uniform_rows(&[0.3, 0.7], 8).unwrap();
    let logits = Cpu.download(&mixture.logits_mixed(&Cpu, &batch, &mix).unwrap()).unwrap().2;
    let (_, want) = fixture("adapter_oracle.safetensors").f64s("mix.logits").unwrap();
    let err = max_abs(&logits, &want);
    assert!(err < 1e-5, "stacked mix vs mix.logits: max abs error {err:.2e}");
}

/// Every sample with its own β (one-hot, uniform, the fixture's, arbitrary, one outside [0, 1]),
/// in one padded batch, against each β's materialised adapter run alone.
fn per_sample_betas() -> Vec<[f32; 2]> {
    vec![[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.3, 0.7], [0.9, 0.1], [0.62, 0.38], [1.2, -0.2], [0.05, 0.95]]
}

fn per_sample_vs_materialised<B: Backend>(be: &B, pick: &[usize], tol: f64) {
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let (adv, adv_h) = f.member("adv");
    let batch = f.batch(pick);
    assert!(batch.lens.iter().any(|&l| l < batch.seq), "the batch must contain padding");
    let betas: Vec<[f32; 2]> = per_sample_betas().into_iter().take(pick.len()).collect();
    let mixture =
        Mixture::new(be, &f.bert, &[(&clean, &clean_h), (&adv, &adv_h)], BetaRule::Fixed(vec![0.5, 0.5]))
            .unwrap();
    let mix = RowMix::new(2, betas.concat()).unwrap();
    let got = be.download(&mixture.logits_mixed(be, &batch, &mix).unwrap()).unwrap().2;
    let mut want = vec![];
    for (k, &i) in pick.iter().enumerate() {
        let a = mix_adapters(&[&clean, &adv], &betas[k]).unwrap();
        let h = mix_heads(&[&clean_h, &adv_h], &betas[k]).unwrap();
        // each sample alone on the CPU reference
        want.extend(plain_logits(&Cpu, &f.bert, &a, &h, &f.batch(&[i])));
    }
    let e = rel_err(&got, &want).unwrap();
    eprintln!("{}: per-sample mix vs materialised: relative error {e:.2e}", be.name());
    assert!(e <= tol, "{}: relative error {e:.2e} > {tol:.0e} ({got:?} vs {want:?})", be.name());
    if be.name() == "cpu" {
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "max abs error {err:.2e}");
    }
}

#[test]
fn per_sample_mix_on_the_cpu_equals_materialised_weights_per_sample() {
    per_sample_vs_materialised(&Cpu, &(0..8).collect::<Vec<_>>(), 1e-5);
}

#[test]
fn per_sample_mix_in_the_emulator_matches_materialised_weights_and_the_fixture() {
    // two sentences (15 and 18 tokens) keep the emulator to seconds; tolerance as tests/cuda_model.rs
    let cuda = Cuda::emulator().unwrap();
    per_sample_vs_materialised(&cuda, &[0, 1], 3e-2);
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let (adv, adv_h) = f.member("adv");
    let mixture =
        Mixture::new(&cuda, &f.bert, &[(&clean, &clean_h), (&adv, &adv_h)], BetaRule::Fixed(vec![0.3, 0.7]))
            .unwrap();
    let got = mixture.run(&cuda, &f.batch(&[0, 1])).unwrap().probs.concat();
    let (_, want) = fixture("adapter_oracle.safetensors").f64s("mix.logits").unwrap();
    let want: Vec<f32> = rows_of(&want, &[0, 1], 2)
        .chunks(2)
        .flat_map(|l| admix::model::classify::prediction(l.iter().map(|&v| v as f32).collect()).probs)
        .collect();
    let e = rel_err(&got, &want).unwrap();
    assert!(e <= 3e-2, "emulator mix probabilities vs mix.logits: relative error {e:.2e}");
}

#[test]
fn double_seq_bn_adapters_mix_per_sample_exactly() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 11, safetensors::Dtype::F32, "");
    let m = ModelDir::open(dir.path(), 40).unwrap();
    let bert = m.bert().unwrap();
    let spec = AdapterSpec {
        kind: AdapterKind::DoubleSeqBn,
        reduction: 4,
        activation: Activation::Silu,
        init: Init::Bert,
    };
    let mut rng = Rng::new(5);
    let members: Vec<(Adapter<Tensor>, ClassificationHead<Tensor>)> = (0..3)
        .map(|i| {
            let mut a = init::new_adapter(&format!("a{i}"), &spec, tiny::LAYERS, tiny::H, &mut rng).unwrap();
            // large weights, so that the mix is far from any one member and from output averaging
            for (_, t) in a.named_mut() {
                t.data_mut().iter_mut().for_each(|v| *v *= 40.0);
            }
            let mut h = init::new_head(&format!("a{i}"), tiny::H, 3, &mut rng);
            for (_, t) in h.named_mut() {
                t.data_mut().iter_mut().for_each(|v| *v *= 10.0);
            }
            (a, h)
        })
        .collect();
    let refs: Vec<(&Adapter<Tensor>, &ClassificationHead<Tensor>)> =
        members.iter().map(|(a, h)| (a, h)).collect();
    let texts = ["one", "a rather longer sentence with padding after the first", "two words"];
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::single(*t)).collect();
    let batch = m.tokenizer.encode(&inputs).unwrap();
    let betas = [[0.2f32, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.8, 0.1]];
    let mixture = Mixture::new(&Cpu, &bert, &refs, BetaRule::MinEntropy).unwrap();
    let got = Cpu
        .download(&mixture.logits_mixed(&Cpu, &batch, &RowMix::new(3, betas.concat()).unwrap()).unwrap())
        .unwrap()
        .2;
    let adapters: Vec<&Adapter<Tensor>> = members.iter().map(|m| &m.0).collect();
    let heads: Vec<&ClassificationHead<Tensor>> = members.iter().map(|m| &m.1).collect();
    let mut want = vec![];
    let mut averaged = vec![];
    for (k, text) in texts.iter().enumerate() {
        let one = m.tokenizer.encode(&[TextInput::single(*text)]).unwrap();
        let a = mix_adapters(&adapters, &betas[k]).unwrap();
        let h = mix_heads(&heads, &betas[k]).unwrap();
        want.extend(plain_logits(&Cpu, &bert, &a, &h, &one));
        // output averaging, which the weight-space mix is not
        let each: Vec<Vec<f32>> =
            members.iter().map(|(a, h)| plain_logits(&Cpu, &bert, a, h, &one)).collect();
        averaged.extend((0..3).map(|c| (0..3).map(|i| betas[k][i] * each[i][c]).sum::<f32>()));
    }
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-4, "double_seq_bn per-sample mix: max abs error {err:.2e}");
    let gap = got.iter().zip(&averaged).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(gap > 1e-2, "the mix equals output averaging ({gap:.2e}): the test cannot tell them apart");
}

#[test]
fn entropy_beta_follows_the_formula_and_its_limits() {
    let confident = [0.99f32, 0.01];
    let unsure = [0.55f32, 0.45];
    let members: [&[f32]; 2] = [&unsure, &confident];
    let (h0, h1) = (entropy(&unsure), entropy(&confident));
    assert!((h0 - 0.6881388).abs() < 1e-5 && (h1 - 0.0560015).abs() < 1e-5, "{h0} {h1}");
    for tau in [0.05f32, 0.1, 1.0, 10.0] {
        let b = BetaRule::Entropy { tau }.beta(&members).unwrap();
        let z = ((h1 - h0) / tau).exp();
        assert!((b[0] - z / (1.0 + z)).abs() < 1e-6 && (b[0] + b[1] - 1.0).abs() < 1e-6, "τ={tau}: {b:?}");
        assert!(b[1] > b[0], "the confident member must weigh more: {b:?}");
    }
    // τ → ∞: uniform; τ → 0: the arg-min-entropy member
    let wide = BetaRule::Entropy { tau: 1e6 }.beta(&members).unwrap();
    assert!((wide[0] - 0.5).abs() < 1e-4);
    assert_eq!(BetaRule::Entropy { tau: 1e-4 }.beta(&members).unwrap(), vec![0.0, 1.0]);
    assert_eq!(BetaRule::MinEntropy.beta(&members).unwrap(), vec![0.0, 1.0]);
    assert_eq!(BetaRule::Fixed(vec![0.3, 0.7]).beta(&members).unwrap(), vec![0.3, 0.7]);
}

#[test]
fn entropy_mixture_runs_each_member_then_mixes_with_its_beta() {
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let (adv, adv_h) = f.member("adv");
    let batch = f.batch(&[0, 2, 4]);
    let rule = BetaRule::Entropy { tau: 0.1 };
    let mixture = Mixture::new(&Cpu, &f.bert, &[(&clean, &clean_h), (&adv, &adv_h)], rule.clone()).unwrap();
    let out = mixture.run(&Cpu, &batch).unwrap();
    let each = [
        plain_logits(&Cpu, &f.bert, &clean, &clean_h, &batch),
        plain_logits(&Cpu, &f.bert, &adv, &adv_h, &batch),
    ];
    for s in 0..3 {
        let probs: Vec<Vec<f32>> = each
            .iter()
            .map(|l| admix::model::classify::prediction(l[s * 2..s * 2 + 2].to_vec()).probs)
            .collect();
        let want_beta = rule.beta(&[&probs[0], &probs[1]]).unwrap();
        assert_eq!(out.beta[s], want_beta, "sample {s}");
        let a = mix_adapters(&[&clean, &adv], &want_beta).unwrap();
        let h = mix_heads(&[&clean_h, &adv_h], &want_beta).unwrap();
        let want = admix::model::classify::prediction(plain_logits(
            &Cpu,
            &f.bert,
            &a,
            &h,
            &f.batch(&[[0, 2, 4][s]]),
        ))
        .probs;
        let err = out.probs[s].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "sample {s}: {:?} vs {want:?}", out.probs[s]);
    }
}

#[test]
fn mixing_refuses_mismatched_members() {
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let spec = AdapterSpec {
        kind: AdapterKind::SeqBn,
        reduction: 8,
        activation: Activation::Relu,
        init: Init::Bert,
    };
    let wide = init::new_adapter("wide", &spec, 6, 384, &mut Rng::new(1)).unwrap();
    let e = mix_adapters(&[&clean, &wide], &[0.5, 0.5]).err().unwrap().to_string();
    assert!(e.contains("shape [24, 384] in part 0, [48, 384] in part 1"), "{e}");
    let e =
        Mixture::new(&Cpu, &f.bert, &[(&clean, &clean_h)], BetaRule::Fixed(vec![0.5, 0.5])).err().unwrap();
    assert!(e.to_string().contains("2 mixing weights for 1 adapters"), "{e}");
    let e = Mixture::new(&Cpu, &f.bert, &[(&clean, &clean_h)], BetaRule::Entropy { tau: 0.0 }).err().unwrap();
    assert!(e.to_string().contains("τ must be positive"), "{e}");
    assert!(Cpu
        .mix_rows(&Cpu.upload(2, 6, &[0.0; 12]).unwrap(), 4, &[0.0; 8], Activation::Identity, None)
        .is_err());
}

#[test]
fn a_sample_with_all_beta_on_one_member_is_that_member_and_skips_the_mixed_pass() {
    let f = load();
    let (clean, clean_h) = f.member("clean");
    let (adv, adv_h) = f.member("adv");
    let batch = f.batch(&[0, 1, 2, 3]);
    let mixture =
        Mixture::new(&Cpu, &f.bert, &[(&clean, &clean_h), (&adv, &adv_h)], BetaRule::MinEntropy).unwrap();
    let passes = mixture.member_passes(&Cpu, &batch, false).unwrap();
    let each = &passes.probs;
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    // min-entropy: every sample is one member's
    let out = mixture.run(&Cpu, &batch).unwrap();
    let forced = mixture.run_with(&Cpu, &batch, out.beta.clone(), None).unwrap();
    for s in 0..4 {
        let i = out.beta[s].iter().position(|&b| b == 1.0).expect("one-hot β");
        assert_eq!(out.probs[s], each[i][s], "sample {s}");
        let e = close(&out.probs[s], &forced.probs[s]);
        assert!(e < 1e-5, "sample {s}: the member's probabilities vs its mixed pass: {e:.2e}");
    }
    // some samples mixed, some not: the mixed ones run as a batch of their own
    let beta = vec![vec![1.0, 0.0], vec![0.3, 0.7], vec![0.0, 1.0], vec![0.5, 0.5]];
    let part = mixture.run_with(&Cpu, &batch, beta.clone(), Some(&passes)).unwrap();
    let full = mixture.run_with(&Cpu, &batch, beta, None).unwrap();
    assert_eq!((&part.probs[0], &part.probs[2]), (&each[0][0], &each[1][2]));
    for s in 0..4 {
        let e = close(&part.probs[s], &full.probs[s]);
        assert!(e < 1e-5, "sample {s}: {:?} vs {:?}", part.probs[s], full.probs[s]);
    }
    assert!(close(&part.probs[1], &each[0][1]) > 1e-4 && close(&part.probs[1], &each[1][1]) > 1e-4);
    // the rules given the members' probabilities are the rules that compute them
    let rules = [BetaRule::Entropy { tau: 0.1 }, BetaRule::MinEntropy, BetaRule::Fixed(vec![0.4, 0.6])];
    let given = mixture.run_rules_given(&Cpu, &batch, &rules, Some(&passes)).unwrap();
    let own = mixture.run_rules(&Cpu, &batch, &rules).unwrap();
    for (g, o) in given.iter().zip(&own) {
        assert_eq!((&g.probs, &g.beta), (&o.probs, &o.beta));
    }
    let e = mixture.run_rules_given(&Cpu, &batch, &rules[..1], None).err().unwrap().to_string();
    assert!(e.contains("needs the members' probabilities"), "{e}");
    let one = MemberPasses::probs_only(each[..1].to_vec());
    let e = mixture.run_with(&Cpu, &batch, vec![vec![0.5, 0.5]; 4], Some(&one)).err().unwrap();
    assert!(e.to_string().contains("member probabilities for 1 members of 4 samples, not 2 of 4"), "{e}");
}
