//! The attacks' definitions against independent references: the input gradient of a perturbed
//! forward by central finite differences and against the fixture's `grad.inputs_embeds`; the PGD
//! projections' invariants; FreeLB's accumulation against a hand-written loop; packed inference
//! against unpadded rows; WordNet synonyms against NLTK's (a fixture written by
//! scripts/wordnet-fixture.py); HotFlip's flips (whole words, re-tokenizing to one piece).

mod common;

use admix::adapter::{Adapter, ClassificationHead};
use admix::attack::embedding::{self, Pgd};
use admix::attack::hotflip::{HotFlip, HotFlipConfig};
use admix::attack::metrics::Outcome;
use admix::attack::victim::{ModelScorer, Victim};
use admix::attack::wordnet::WordNet;
use admix::attack::words::Text;
use admix::backend::cpu::{Cpu, Mat};
use admix::backend::TokenBatch;
use admix::backend::{Activation, Backend, Norm, PgdStep};
use admix::model::classify::Model;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::rng::Rng;
use common::*;
use safetensors::Dtype;

/// The tiny random BERT with its seq_bn adapter and head, and a padded batch of three texts.
fn tiny_model() -> (tempfile::TempDir, ModelDir, Model<Cpu>) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 5, Dtype::F32, "");
    let m = ModelDir::open(dir.path(), 64).unwrap();
    let w = admix::weights::WeightFile::open(&dir.path().join("adapter.safetensors")).unwrap();
    let adapter = Adapter::load(&w, "a", tiny::LAYERS, tiny::H, Activation::Relu).unwrap();
    let head = ClassificationHead::load(&w, "a", tiny::H).unwrap();
    let model = Model::new(&Cpu, m.bert().unwrap(), Some(adapter), head, false).unwrap();
    (dir, m, model)
}

fn tiny_batch(m: &ModelDir) -> (TokenBatch, Vec<u32>) {
    let texts = ["a gripping, well-made thriller", "dull", "it never quite finds its footing, sadly"];
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::single(*t)).collect();
    (m.tokenizer.encode(&inputs).unwrap(), vec![1, 0, 0])
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Random values on the valid rows, zero on pads.
fn on_valid(batch: &TokenBatch, h: usize, scale: f32, rng: &mut tiny::Rng) -> Vec<f32> {
    let mut v = vec![0f32; batch.tokens() * h];
    for (b, &len) in batch.lens.iter().enumerate() {
        for x in &mut v[b * batch.seq * h..(b * batch.seq + len) * h] {
            *x = rng.uniform() * scale;
        }
    }
    v
}

#[test]
fn input_gradient_at_a_perturbation_matches_finite_differences() {
    let (_d, m, model) = tiny_model();
    let (batch, labels) = tiny_batch(&m);
    let h = tiny::H;
    let mut rng = tiny::Rng::new(3);
    let delta = Cpu.upload(batch.tokens(), h, &on_valid(&batch, h, 0.3, &mut rng)).unwrap();
    let out = model.input_gradient(&Cpu, &batch, &labels, Some(&delta)).unwrap();
    let g = out.input_grad.unwrap();
    let loss = |d: &[f32]| -> f64 {
        let d = Cpu.upload(batch.tokens(), h, d).unwrap();
        let (_, cols, logits) =
            Cpu.download(&model.logits_perturbed(&Cpu, &batch, Some(&d)).unwrap()).unwrap();
        logits
            .chunks(cols)
            .zip(&labels)
            .map(|(l, &y)| {
                let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = l.iter().map(|&v| (v as f64 - m).exp()).sum();
                -(l[y as usize] as f64 - m - z.ln())
            })
            .sum::<f64>()
            / labels.len() as f64
    };
    assert!((loss(&delta.data) - out.loss as f64).abs() < 1e-5, "the pass's loss is the loss at e + δ");
    for k in 0..4 {
        // a unit direction on the valid rows, a small step along it
        let mut u = on_valid(&batch, h, 1.0, &mut rng);
        let n = dot(&u, &u).sqrt() as f32;
        u.iter_mut().for_each(|x| *x /= n);
        let eps = 1e-2f32;
        let plus: Vec<f32> = delta.data.iter().zip(&u).map(|(d, u)| d + eps * u).collect();
        let minus: Vec<f32> = delta.data.iter().zip(&u).map(|(d, u)| d - eps * u).collect();
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
        let an = dot(&g.data, &u);
        assert!(
            (fd - an).abs() <= 1e-3 * an.abs() + 1e-5,
            "direction {k}: finite differences {fd:.7} vs gradient {an:.7}"
        );
    }
    // pads carry no gradient
    for (b, &len) in batch.lens.iter().enumerate() {
        assert!(g.data[(b * batch.seq + len) * h..(b + 1) * batch.seq * h].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn the_first_pgd_gradient_is_the_fixtures_input_gradient() {
    let (model, batch, labels) = fixture_model();
    let oracle = fixture("adapter_oracle.safetensors");
    // δ⁰ = 0 (no random start): the attack's first gradient is ∇_e L at the clean input
    let zero = Cpu.zeros(batch.tokens(), 384).unwrap();
    let out = model.input_gradient(&Cpu, &batch, &labels, Some(&zero)).unwrap();
    let (_, reference) = oracle.f64s("grad.inputs_embeds_valid_f64").unwrap();
    let scale = reference.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let g = out.input_grad.unwrap().data;
    let err = max_abs(&valid_rows(&g, &batch.lens, batch.seq, 384), &reference) / scale;
    assert!(err < 1e-4, "grad.inputs_embeds: error {err:.2e} of its max");
    assert!(pads_are_zero(&g, &batch.lens, batch.seq, 384));
    assert!((out.loss as f64 - oracle.f64s("loss_f64").unwrap().1[0]).abs() < 1e-5);
}

#[test]
fn pgd_steps_stay_in_the_ball_and_fgsm_is_a_signed_step() {
    let (seq, h, lens) = (5, 8, vec![5usize, 2]);
    let mut rng = tiny::Rng::new(9);
    let grad = Mat { rows: 10, cols: h, data: rng.vec(10 * h, 1.0) };
    let tb = TokenBatch {
        batch: 2,
        seq,
        ids: vec![0; 10],
        type_ids: vec![0; 10],
        lens: lens.clone(),
        truncated: vec![false; 2],
    };
    // FGSM (L∞): ε·sign(g) on valid rows, pads zero
    let mut d = Cpu.zeros(10, h).unwrap();
    Cpu.pgd_step(&mut d, &grad, &lens, seq, &PgdStep { norm: Norm::Linf, alpha: 0.1, eps: 0.1 }).unwrap();
    for r in 0..10 {
        let valid = r % seq < lens[r / seq];
        for c in 0..h {
            let want = if valid { 0.1 * grad.data[r * h + c].signum() } else { 0.0 };
            assert_eq!(d.data[r * h + c], want);
        }
    }
    // FGM (L2): ε·g/‖g‖ per sequence
    let mut d = Cpu.zeros(10, h).unwrap();
    Cpu.pgd_step(&mut d, &grad, &lens, seq, &PgdStep { norm: Norm::L2, alpha: 0.7, eps: 0.7 }).unwrap();
    for n in embedding::norms(&d.data, &tb, h, Norm::L2) {
        assert!((n - 0.7).abs() < 1e-5, "‖δ‖ {n}");
    }
    let g0 = &grad.data[..5 * h];
    let gn = dot(g0, g0).sqrt();
    assert!(d.data[..5 * h].iter().zip(g0).all(|(d, g)| (*d as f64 - 0.7 * *g as f64 / gn).abs() < 1e-6));
    // many steps from a random start never leave the ball
    for norm in [Norm::Linf, Norm::L2] {
        let cfg = Pgd { norm, eps: 0.3, alpha: 0.2, steps: 1, random_start: true };
        let mut d = Cpu.upload(10, h, &embedding::start(&tb, h, &cfg, &mut Rng::new(4))).unwrap();
        for _ in 0..20 {
            let g = Mat { rows: 10, cols: h, data: rng.vec(10 * h, 1.0) };
            Cpu.pgd_step(&mut d, &g, &lens, seq, &PgdStep { norm, alpha: 0.2, eps: 0.3 }).unwrap();
            for n in embedding::norms(&d.data, &tb, h, norm) {
                assert!(n <= 0.3 + 1e-6, "{norm:?}: ‖δ‖ {n} > ε");
            }
        }
    }
}

#[test]
fn pgd_raises_the_loss_and_freelb_accumulates_every_steps_gradient() {
    let (_d, m, mut model) = tiny_model();
    let (batch, labels) = tiny_batch(&m);
    let clean = model.input_gradient(&Cpu, &batch, &labels, None).unwrap().loss;
    let cfg = Pgd { norm: Norm::L2, eps: 2.0, alpha: 0.5, steps: 5, random_start: false };
    let adv = embedding::pgd(&Cpu, &model, &batch, &labels, &cfg, &mut Rng::new(1)).unwrap();
    let attacked = model.input_gradient(&Cpu, &batch, &labels, Some(&adv.delta)).unwrap().loss;
    assert!(attacked > clean + 0.05, "PGD loss {attacked} vs clean {clean}");
    for n in embedding::norms(&adv.delta.data, &batch, tiny::H, Norm::L2) {
        assert!(n <= 2.0 + 1e-5);
    }
    // FreeLB: the parameter gradients of the K ascent points, summed
    let cfg = Pgd { norm: Norm::L2, eps: 1.0, alpha: 0.3, steps: 3, random_start: true };
    model.zero_grads(&Cpu).unwrap();
    let loss = embedding::freelb_accumulate(&Cpu, &mut model, &batch, &labels, None, &cfg, &mut Rng::new(8))
        .unwrap();
    let got: Vec<Vec<f32>> = model.params().into_iter().map(|p| p.grad.data.clone()).collect();
    // the same by hand: the same start, a step per pass, gradients added up
    let mut want: Vec<Vec<f32>> = got.iter().map(|g| vec![0.0; g.len()]).collect();
    let mut delta = Cpu
        .upload(batch.tokens(), tiny::H, &embedding::start(&batch, tiny::H, &cfg, &mut Rng::new(8)))
        .unwrap();
    let mut losses = 0.0;
    for _ in 0..3 {
        model.zero_grads(&Cpu).unwrap();
        let out = model.forward_backward_perturbed(&Cpu, &batch, &labels, None, Some(&delta), true).unwrap();
        losses += out.loss / 3.0;
        for (w, p) in want.iter_mut().zip(model.params()) {
            w.iter_mut().zip(&p.grad.data).for_each(|(a, b)| *a += b);
        }
        Cpu.pgd_step(
            &mut delta,
            &out.input_grad.unwrap(),
            &batch.lens,
            batch.seq,
            &PgdStep { norm: Norm::L2, alpha: 0.3, eps: 1.0 },
        )
        .unwrap();
    }
    assert!((loss - losses).abs() < 1e-6);
    for (g, w) in got.iter().zip(&want) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-5 * scale));
    }
}

#[test]
fn packed_inference_matches_unpadded_rows() {
    let (_d, m, model) = tiny_model();
    let (batch, _) = tiny_batch(&m);
    assert!(batch.lens.iter().any(|&l| l < batch.seq), "the batch must have padding");
    let (_, cols, padded) = Cpu.download(&model.logits(&Cpu, &batch).unwrap()).unwrap();
    for b in 0..batch.batch {
        let row = &batch.ids[b * batch.seq..b * batch.seq + batch.lens[b]];
        let one = TokenBatch::from_rows(&[(row.to_vec(), vec![0; row.len()])], 0);
        let (_, _, alone) = Cpu.download(&model.logits(&Cpu, &one).unwrap()).unwrap();
        for c in 0..cols {
            assert!(
                (padded[b * cols + c] - alone[c]).abs() < 1e-5,
                "row {b}: {} vs {}",
                padded[b * cols + c],
                alone[c]
            );
        }
    }
}

#[test]
fn wordnet_synonyms_and_antonyms_match_nltk() {
    let wn = WordNet::load(&admix::assets::wordnet_dir()).expect("run `admix fetch` for WordNet");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wordnet-synonyms.json"))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let words = v["synonyms"].as_object().unwrap();
    assert!(words.len() > 1000);
    let (mut with_synonyms, mut mismatched) = (0, vec![]);
    for (word, want) in words {
        let mut want: Vec<String> =
            want.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let mut got = wn.synonyms(word);
        want.sort();
        got.sort();
        with_synonyms += !want.is_empty() as usize;
        if got != want {
            mismatched.push(format!("{word}: ours {got:?}, NLTK {want:?}"));
        }
    }
    assert!(with_synonyms > 500);
    // antonyms (TextFooler's filter): ours are those of the word's base forms in every sense, so
    // they include NLTK's (those of its lemmas in the synsets of the word)
    let antonyms = v["antonyms"].as_object().unwrap();
    for (word, want) in antonyms {
        let got = wn.antonyms(word);
        for a in want.as_array().unwrap().iter().map(|s| s.as_str().unwrap()) {
            if !got.iter().any(|g| g == a) {
                mismatched.push(format!("antonyms of {word}: ours {got:?} lack NLTK's {a}"));
            }
        }
    }
    assert!(antonyms.values().filter(|a| !a.as_array().unwrap().is_empty()).count() > 300);
    assert!(
        mismatched.is_empty(),
        "{} of {} words differ, e.g. {:?}",
        mismatched.len(),
        words.len(),
        &mismatched[..mismatched.len().min(3)]
    );
}

#[test]
fn hotflip_flips_whole_words_that_retokenize_and_reports_the_models_probabilities() {
    let (_d, m, model) = tiny_model();
    let word = m.bert().unwrap().emb.word.clone();
    let tokens: Vec<String> =
        (0..word.shape()[0]).map(|v| m.tokenizer.id_to_token(v as u32).unwrap_or_default()).collect();
    let cfg = HotFlipConfig { max_word_frac: 0.5, min_cos: -1.0, beam: 2, top_k: 4 };
    let hf = HotFlip::new(&Cpu, &word, tokens, cfg).unwrap();
    let scorer =
        ModelScorer { be: &Cpu, model: &model, pad_id: m.tokenizer.pad_id(), sep_id: None, batch_size: 32 };
    let mut victim = Victim::new(&scorer, &m.tokenizer).unwrap();
    let text = "the acting is wooden and the story drags on forever";
    for label in [0usize, 1] {
        let r = hf.attack(&Cpu, &model, &mut victim, 0, text, label, 500).unwrap();
        if r.outcome == Outcome::Skipped {
            continue;
        }
        let perturbed = r.perturbed.clone().unwrap();
        let (orig, adv) = (Text::parse(text), Text::parse(&perturbed));
        assert_eq!(orig.num_words(), adv.num_words());
        let changed = adv.changed_words(&orig);
        assert!(changed.len() <= admix::attack::hotflip::max_words(0.5, orig.num_words()));
        for &i in &changed {
            // a whole lower-case word, one wordpiece, not a stopword, where a non-stopword was
            assert!(
                !admix::attack::words::is_stopword(orig.word(i))
                    && !admix::attack::words::is_stopword(adv.word(i))
            );
            assert_eq!(m.tokenizer.pieces(adv.word(i)).unwrap().len(), 1, "{}", adv.word(i));
        }
        // the reported probabilities are the model's on the text as written
        let batch = m.tokenizer.encode(&[TextInput::single(perturbed.clone())]).unwrap();
        let (_, _, logits) = Cpu.download(&model.logits(&Cpu, &batch).unwrap()).unwrap();
        let p = admix::model::classify::prediction(logits).probs;
        assert!(p.iter().zip(&r.perturbed_probs).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(r.outcome == Outcome::Successful, admix::model::classify::argmax(&p) != label);
    }
    // in lockstep, several examples give what each gives alone
    let texts = [text, "a gripping, well-made thriller", "dull", "it never quite finds its footing, sadly"];
    let items: Vec<(usize, &str, usize)> =
        texts.iter().enumerate().flat_map(|(i, t)| [(2 * i, *t, 0), (2 * i + 1, *t, 1)]).collect();
    let together = hf.attack_all(&Cpu, &model, &mut victim, &items, 500).unwrap();
    for (r, &(i, t, label)) in together.iter().zip(&items) {
        let alone = hf.attack(&Cpu, &model, &mut victim, i, t, label, 500).unwrap();
        assert_eq!(r.index, i);
        assert_eq!(
            (r.outcome, &r.perturbed, r.queries),
            (alone.outcome, &alone.perturbed, alone.queries),
            "{t} / {label}"
        );
    }
}

#[test]
fn word_by_word_tokenization_is_the_tokenizers() {
    let m = ModelDir::open(&minilm_dir(), 64).unwrap();
    let splits = admix::data::mr::load(&admix::assets::mr_path()).unwrap();
    let scorer = admix::attack::victim::ModelScorer {
        be: &Cpu,
        model: &tiny_model().2,
        pad_id: 0,
        sep_id: None,
        batch_size: 1,
    };
    let mut victim = Victim::new(&scorer, &m.tokenizer).unwrap();
    let unk = m.tokenizer.token_id("[UNK]").unwrap();
    assert_eq!(m.tokenizer.pieces("[UNK]").unwrap(), [unk], "the ranking's [UNK] is one token");
    let mut by_words = 0;
    let examples = &splits.get(admix::data::mr::Split::Test)[..400];
    for (i, e) in examples.iter().enumerate() {
        let text = Text::parse(&e.text);
        let whole = m.tokenizer.encode_rows(&[TextInput::single(e.text.clone())]).unwrap().remove(0).0;
        by_words += (victim.ids(&text).unwrap() == whole) as usize;
        victim.begin(i, &text, None).unwrap();
        assert_eq!(victim.ids(&text).unwrap(), whole, "`{}`", e.text);
    }
    assert!(by_words >= 390, "only {by_words} of 400 tokenize word by word as a whole");

    // sentence pairs (the next sentence as the second text): the ids and the token types the
    // scorer derives are the tokenizer's, pairs longer than 64 tokens included (truncated longest
    // first by the tokenizer)
    let sep = m.tokenizer.token_id("[SEP]");
    let mut truncated = 0;
    for (i, w) in examples.windows(2).enumerate() {
        let (text, pair) = (Text::parse(&w[0].text), w[1].text.as_str());
        let (ids, types, cut) =
            m.tokenizer.encode_rows(&[TextInput::pair(w[0].text.clone(), pair)]).unwrap().remove(0);
        truncated += cut as usize;
        victim.begin(i, &text, Some(pair)).unwrap();
        let got = victim.ids(&text).unwrap();
        assert_eq!(got, ids, "`{}` / `{pair}`", w[0].text);
        assert_eq!(admix::attack::victim::segment_types(&got, sep), types, "`{}` / `{pair}`", w[0].text);
        // a candidate with a changed first word keeps the second text as it is
        let cand = text.with_word(0, "zzz");
        let want = m.tokenizer.encode_rows(&[TextInput::pair(cand.render(), pair)]).unwrap().remove(0).0;
        assert_eq!(victim.ids(&cand).unwrap(), want);
    }
    assert!(truncated > 10 && truncated < 390, "{truncated} of 399 pairs truncated: both paths are tested");
    // single texts stay type 0 with or without a separator id
    assert!(admix::attack::victim::segment_types(&[101, 7, 102], sep).iter().all(|&t| t == 0));
}

#[test]
fn glove_loads_from_the_wheels_npy_and_parquet() {
    let g =
        admix::attack::glove::Glove::load(&admix::assets::glove_dir()).expect("run `admix fetch` for GloVe");
    assert_eq!((g.words.len(), g.dim), (400_000, 50));
    // GloVe's files list words by corpus frequency
    assert_eq!(&g.words[..5], ["the", ",", ".", "of", "to"]);
    let id = |w: &str| g.id(w).unwrap();
    assert!(g.cos(id("movie"), id("film")) > 0.9, "movie/film {}", g.cos(id("movie"), id("film")));
    assert!(g.cos(id("movie"), id("film")) > g.cos(id("movie"), id("banana")) + 0.5);
    assert!((g.cos(id("good"), id("good")) - 1.0).abs() < 1e-5);
}
