//! The learned router: its gradients against finite differences, learning separable features,
//! the save/load round trip, and routing clean and perturbed sentences on the real MiniLM end to
//! end (features from the members' passes, a trained router, the routed mixture).

mod common;

use admix::adapter::mix::{calibrate, fit_temperature, BetaRule};
use admix::adapter::router::features;
use admix::adapter::router::{Router, RouterConfig};
use admix::adapter::{Adapter, ClassificationHead};
use admix::backend::cpu::Cpu;
use admix::backend::{Activation, Backend};
use admix::model::mixture::Mixture;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::rng::Rng;
use admix::train::router::{fit, routing_accuracy, FitConfig, Routed};
use admix::weights::Tensor;
use common::{fixture, minilm_dir};

fn shape(features: usize, m: usize, layers: Vec<usize>, activation: Activation) -> RouterConfig {
    // synthetic features: not a mixture's, so their width is set by hand
    let members = (0..m).map(|i| format!("member{i}")).collect();
    RouterConfig { layers, activation, features, ..RouterConfig::for_mixture(members, 2, 0) }
}

/// Mean cross-entropy of the router's logits on standardised rows.
fn loss(r: &Router<Tensor>, x: &[f32], n: usize, labels: &[u32]) -> f64 {
    let rb = r.to_backend(&Cpu).unwrap();
    let z = Cpu.upload(n, r.config.features, x).unwrap();
    let (_, m, logits) = Cpu.download(&rb.logits(&Cpu, &z).unwrap()).unwrap();
    logits
        .chunks(m)
        .zip(labels)
        .map(|(l, &y)| {
            let l: Vec<f64> = l.iter().map(|&v| v as f64).collect();
            let top = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            top + l.iter().map(|v| (v - top).exp()).sum::<f64>().ln() - l[y as usize]
        })
        .sum::<f64>()
        / n as f64
}

#[test]
fn the_routers_gradients_match_finite_differences() {
    let (f, m, n) = (5, 3, 4);
    let mut rng = Rng::new(7);
    for (layers, act) in
        [(vec![6], Activation::Tanh), (vec![], Activation::Relu), (vec![4, 3], Activation::Tanh)]
    {
        let mut r = Router::init(shape(f, m, layers.clone(), act), vec![0.0; f], vec![1.0; f], 3).unwrap();
        let x: Vec<f32> = (0..n * f).map(|_| rng.normal() as f32).collect();
        let labels: Vec<u32> = vec![0, 2, 1, 2];
        let rb = r.to_backend(&Cpu).unwrap();
        let (logits, saved) = rb.forward_train(&Cpu, Cpu.upload(n, f, &x).unwrap()).unwrap();
        let (l, dlogits) = Cpu.cross_entropy(&logits, &labels).unwrap();
        assert!((l as f64 - loss(&r, &x, n, &labels)).abs() < 1e-5);
        let mut grads = rb.map(|w| Cpu.zeros_like(w)).unwrap();
        let dx = rb.backward(&Cpu, &saved, &dlogits, &mut grads).unwrap();
        let dx = Cpu.download(&dx).unwrap().2;
        let analytic: Vec<Vec<f32>> =
            grads.named_mut().into_iter().map(|(_, g)| Cpu.download(g).unwrap().2).collect();
        let eps = 1e-2f32;
        // every weight, one entry at a time
        let names: Vec<String> = r.named_mut().into_iter().map(|(n, _)| n).collect();
        for (k, name) in names.iter().enumerate() {
            let len = r.named_mut()[k].1.data().len();
            for i in 0..len {
                let at = |r: &mut Router<Tensor>, d: f32| {
                    let mut ws = r.named_mut();
                    let w = &mut ws[k].1;
                    w.data_mut()[i] += d;
                };
                at(&mut r, eps);
                let up = loss(&r, &x, n, &labels);
                at(&mut r, -2.0 * eps);
                let down = loss(&r, &x, n, &labels);
                at(&mut r, eps);
                let fd = (up - down) / (2.0 * eps as f64);
                let a = analytic[k][i] as f64;
                assert!(
                    (fd - a).abs() < 2e-3 + 1e-2 * a.abs(),
                    "{layers:?} {name}[{i}]: analytic {a:.5}, fd {fd:.5}"
                );
            }
        }
        // the input
        for i in 0..x.len() {
            let mut xp = x.clone();
            xp[i] += eps;
            let up = loss(&r, &xp, n, &labels);
            xp[i] -= 2.0 * eps;
            let down = loss(&r, &xp, n, &labels);
            let fd = (up - down) / (2.0 * eps as f64);
            assert!(
                (fd - dx[i] as f64).abs() < 2e-3 + 1e-2 * fd.abs(),
                "{layers:?} dx[{i}]: {} vs {fd}",
                dx[i]
            );
        }
    }
}

/// `n` points per member around member-specific centres in `f` dimensions (plus a constant
/// feature, which standardisation must survive).
fn clusters(n: usize, m: usize, f: usize, seed: u64) -> Routed {
    let mut rng = Rng::new(seed);
    let mut out = Routed::default();
    for k in 0..m {
        for _ in 0..n {
            let row: Vec<f32> = (0..f)
                .map(|j| match j {
                    0 => 5.0,
                    j if j % m == k => 3.0 + rng.normal() as f32,
                    _ => rng.normal() as f32,
                })
                .collect();
            out.push(&row, f, k);
        }
    }
    out
}

#[test]
fn a_router_learns_separable_features_and_survives_a_save_load_round_trip() {
    let (m, f) = (3, 9);
    let train = clusters(60, m, f, 1);
    let dev = clusters(20, m, f, 2);
    let test = clusters(30, m, f, 3);
    let cfg = FitConfig { layers: vec![8], epochs: 15, lr: 1e-2, batch_size: 16, ..FitConfig::default() };
    let (router, report) = fit(&Cpu, &cfg, shape(f, m, vec![], Activation::Relu), &train, &dev).unwrap();
    assert!(report.epochs.first().unwrap().loss > report.epochs.last().unwrap().loss, "{:?}", report.epochs);
    let best = &report.epochs[report.best_epoch - 1];
    for e in &report.epochs {
        let acc = e.dev_balanced_accuracy;
        assert!(
            acc < best.dev_balanced_accuracy
                || (acc == best.dev_balanced_accuracy && e.dev_loss >= best.dev_loss)
        );
    }
    let rb = router.to_backend(&Cpu).unwrap();
    let beta = rb.beta_of(&Cpu, &test.x).unwrap();
    let (per, mean) = routing_accuracy(&beta, &test.member, m);
    assert!(mean > 0.95, "held-out routing accuracy {per:?}");
    for b in &beta {
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5 && b.iter().all(|v| *v >= 0.0));
    }
    // the same seed, the same router
    let (again, _) = fit(&Cpu, &cfg, shape(f, m, vec![], Activation::Relu), &train, &dev).unwrap();
    assert_eq!(again.to_backend(&Cpu).unwrap().beta_of(&Cpu, &test.x).unwrap(), beta);

    let dir = tempfile::tempdir().unwrap();
    router.save(dir.path()).unwrap();
    let back = Router::load(dir.path()).unwrap();
    let plain = |c: &RouterConfig| RouterConfig { trained: serde_json::Value::Null, ..c.clone() };
    assert_eq!(plain(&back.config), plain(&router.config));
    assert_eq!((&back.mean, &back.std), (&router.mean, &router.std));
    assert_eq!(back.to_backend(&Cpu).unwrap().beta_of(&Cpu, &test.x).unwrap(), beta);
    assert_eq!(back.config.trained["best_epoch"], report.best_epoch);
    // a damaged directory is one clear error
    std::fs::write(dir.path().join("router_config.json"), "{}").unwrap();
    let e = Router::load(dir.path()).err().unwrap();
    assert!(format!("{e:#}").contains("not a router config"), "{e:#}");
    let e = Router::load(&dir.path().join("missing")).err().unwrap();
    assert!(format!("{e:#}").contains("a router directory"), "{e:#}");
}

#[test]
fn temperature_scaling_finds_the_temperature_that_made_the_predictions() {
    // labels drawn from softmax(z); the predictions handed in are softmax(3z): overconfident by 3
    let mut rng = Rng::new(5);
    let (mut probs, mut labels) = (vec![], vec![]);
    for _ in 0..4000 {
        let z: Vec<f32> = (0..3).map(|_| rng.normal() as f32).collect();
        let p = calibrate(&admix::model::classify::prediction(z.clone()).probs, 1.0);
        let u = rng.uniform() as f32;
        let y = if u < p[0] {
            0
        } else if u < p[0] + p[1] {
            1
        } else {
            2
        };
        labels.push(y);
        probs.push(admix::model::classify::prediction(z.iter().map(|v| 3.0 * v).collect()).probs);
    }
    let t = fit_temperature(&probs, &labels).unwrap();
    assert!((t - 3.0).abs() < 0.25, "fitted T = {t}");
    // calibrated entropy β is entropy β over the rescaled predictions
    let p = [vec![0.9f32, 0.1], vec![0.6, 0.4]];
    let members: Vec<&[f32]> = p.iter().map(|v| v.as_slice()).collect();
    let b = BetaRule::Calibrated { tau: 0.5, temperatures: vec![2.0, 0.5] }.beta(&members).unwrap();
    let scaled = [calibrate(&p[0], 2.0), calibrate(&p[1], 0.5)];
    let want = BetaRule::Entropy { tau: 0.5 }.beta(&[&scaled[0], &scaled[1]]).unwrap();
    assert_eq!(b, want);
    assert!(BetaRule::Router { dir: "r".into() }.beta(&members).is_err());
}

#[test]
fn a_router_routes_clean_and_perturbed_sentences_on_the_real_minilm() {
    let model = ModelDir::open(&minilm_dir(), 64).unwrap();
    let bert = model.bert().unwrap();
    let w = fixture("adapter_weights.safetensors");
    let member = |name: &str| {
        (
            Adapter::load(&w, name, 6, 384, Activation::Relu).unwrap(),
            ClassificationHead::load(&w, name, 384).unwrap(),
        )
    };
    let ((clean, clean_h), (adv, adv_h)) = (member("clean"), member("adv"));
    let mixture =
        Mixture::new(&Cpu, &bert, &[(&clean, &clean_h), (&adv, &adv_h)], BetaRule::MinEntropy).unwrap();
    let table = model.tokenizer.piece_table();
    // MR sentences, clean and with DeepWordBug-like noise (characters swapped and replaced
    // inside words)
    let mr = admix::data::mr::load(&admix::assets::mr_path()).unwrap();
    let pick =
        |v: &[admix::data::Example], n: usize| v.iter().take(n).map(|e| e.text.clone()).collect::<Vec<_>>();
    let noisy = |s: &str, seed: u64| -> String {
        let mut rng = Rng::new(seed);
        s.split(' ')
            .map(|w| {
                let mut c: Vec<char> = w.chars().collect();
                if c.len() > 3 && rng.uniform() < 0.6 {
                    let i = 1 + (rng.next_u64() as usize % (c.len() - 2));
                    c.swap(i, i - 1);
                    c[i] = ['x', 'q', 'z', '0'][rng.next_u64() as usize % 4];
                }
                c.into_iter().collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let width = features::width(2, 2, 384);
    let rows = |texts: &[String]| -> (Vec<f32>, admix::backend::TokenBatch) {
        let inputs: Vec<TextInput> = texts.iter().map(TextInput::single).collect();
        let batch = model.tokenizer.encode(&inputs).unwrap();
        let passes = mixture.member_passes(&Cpu, &batch, true).unwrap();
        assert_eq!(passes.pooled[0].len(), texts.len());
        (features::rows(&passes, &batch, &table).unwrap(), batch)
    };
    let split = |clean: Vec<String>, seed: u64| -> Routed {
        let perturbed: Vec<String> =
            clean.iter().enumerate().map(|(i, s)| noisy(s, seed + i as u64)).collect();
        let mut r = Routed::default();
        r.push(&rows(&clean).0, width, 0);
        r.push(&rows(&perturbed).0, width, 1);
        r
    };
    let train = split(pick(&mr.train, 64), 100);
    let dev = split(pick(&mr.dev, 24), 200);
    let cfg = FitConfig { layers: vec![16], epochs: 20, lr: 3e-3, batch_size: 16, ..FitConfig::default() };
    let shape = RouterConfig::for_mixture(vec!["clean".into(), "adv".into()], 2, 384);
    assert_eq!(shape.features, width);
    let (router, _) = fit(&Cpu, &cfg, shape, &train, &dev).unwrap();
    // held-out sentences, routed by the mixture as a classifier
    let held = pick(&mr.test, 32);
    let held_noisy: Vec<String> = held.iter().enumerate().map(|(i, s)| noisy(s, 300 + i as u64)).collect();
    let routed = Mixture::new(
        &Cpu,
        &bert,
        &[(&clean, &clean_h), (&adv, &adv_h)],
        BetaRule::Router { dir: "router".into() },
    )
    .unwrap()
    .routed(&Cpu, &router, table.clone())
    .unwrap();
    let (mut right, mut all) = (0, 0);
    for (texts, want) in [(&held, 0usize), (&held_noisy, 1)] {
        let (x, batch) = rows(texts);
        let out = routed.run(&Cpu, &batch).unwrap();
        // the mixture's β is the router's β on the same features
        assert_eq!(out.beta, router.to_backend(&Cpu).unwrap().beta_of(&Cpu, &x).unwrap());
        right += out.beta.iter().filter(|b| admix::model::classify::argmax(b) == want).count();
        all += texts.len();
    }
    eprintln!("routed {right} of {all} held-out sentences to the right member");
    assert!(
        right as f64 >= 0.9 * all as f64,
        "routed {right} of {all} held-out sentences to the right member"
    );
    // a router of another shape is refused by the mixture
    let three = RouterConfig::for_mixture(vec!["a".into(), "b".into(), "c".into()], 2, 384);
    let w = three.features;
    let other = Router::init(three, vec![0.0; w], vec![1.0; w], 1).unwrap();
    let e = Mixture::new(&Cpu, &bert, &[(&clean, &clean_h), (&adv, &adv_h)], BetaRule::MinEntropy)
        .unwrap()
        .routed(&Cpu, &other, table)
        .err()
        .unwrap();
    assert!(e.to_string().contains("routes 3 members"), "{e}");
}
