//! Attacks on the CUDA path, run by the SIMT emulator, against the CPU, on a tiny random BERT:
//! the input gradient at a perturbation (embedding kernels with δ, the whole backward), PGD's
//! steps (the pgd_step kernel) and the final logits; and packed inference (the classifier's
//! forward on valid tokens only) on padded batches. The kernels themselves are checked one by one
//! in cuda_kernels.rs.

mod common;

use admix::adapter::{Adapter, ClassificationHead};
use admix::attack::embedding::{self, Pgd};
use admix::backend::cpu::Cpu;
use admix::backend::cuda::checks::rel_err;
use admix::backend::cuda::Cuda;
use admix::backend::{Activation, Backend, Norm};
use admix::model::classify::Model;
use admix::model::tokenizer::TextInput;
use admix::model::ModelDir;
use admix::rng::Rng;
use admix::weights::WeightFile;
use common::tiny;

/// bf16 activations through two random layers (see cuda_training.rs for what was measured there)
const TOL: f64 = 3e-2;

#[test]
fn pgd_on_the_emulator_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_model(dir.path(), 5, safetensors::Dtype::F32, "");
    let m = ModelDir::open(dir.path(), 32).unwrap();
    let inputs = [
        TextInput::single("one"),
        TextInput::single("the quick brown fox jumps over the lazy dog"),
        TextInput::single("it was fine, i suppose"),
    ];
    let batch = m.tokenizer.encode(&inputs).unwrap();
    let labels = [1u32, 0, 1];
    let file = WeightFile::open(&dir.path().join("adapter.safetensors")).unwrap();
    let ad = Adapter::load(&file, "a", tiny::LAYERS, tiny::H, Activation::Relu).unwrap();
    let head = ClassificationHead::load(&file, "a", tiny::H).unwrap();
    let cuda = Cuda::emulator().unwrap();
    let bert = m.bert().unwrap();
    let cpu_model = Model::new(
        &Cpu,
        bert.to_backend(&Cpu).unwrap(),
        Some(ad.map(|t| Ok(t.clone())).unwrap()),
        head.map(|t| Ok(t.clone())).unwrap(),
        false,
    )
    .unwrap();
    let emu_model = Model::new(
        &cuda,
        bert.to_backend(&cuda).unwrap(),
        Some(ad.to_backend(&cuda).unwrap()),
        head.to_backend(&cuda).unwrap(),
        false,
    )
    .unwrap();

    // packed inference on a padded batch
    let lc = Cpu.download(&cpu_model.logits(&Cpu, &batch).unwrap()).unwrap().2;
    let le = cuda.download(&emu_model.logits(&cuda, &batch).unwrap()).unwrap().2;
    let err = rel_err(&le, &lc).unwrap();
    assert!(err <= TOL, "logits: relative error {err:.2e}");

    // the gradient at a perturbation
    let h = tiny::H;
    let cfg = Pgd { norm: Norm::Linf, eps: 0.05, alpha: 0.02, steps: 1, random_start: true };
    let start = embedding::start(&batch, h, &cfg, &mut Rng::new(3));
    let gc = cpu_model
        .input_gradient(&Cpu, &batch, &labels, Some(&Cpu.upload(batch.tokens(), h, &start).unwrap()))
        .unwrap();
    let ge = emu_model
        .input_gradient(&cuda, &batch, &labels, Some(&cuda.upload_state(batch.tokens(), h, &start).unwrap()))
        .unwrap();
    assert!((gc.loss - ge.loss).abs() <= 1e-2 * gc.loss.abs(), "loss {} vs {}", ge.loss, gc.loss);
    let err =
        rel_err(&cuda.download(&ge.input_grad.unwrap()).unwrap().2, &gc.input_grad.unwrap().data).unwrap();
    assert!(err <= TOL, "input gradient at e + δ: relative error {err:.2e}");

    // three L2 PGD steps: δ stays in the ball and tracks the CPU's, and so do the logits
    let cfg = Pgd { norm: Norm::L2, eps: 1.0, alpha: 0.4, steps: 3, random_start: false };
    let c = embedding::pgd(&Cpu, &cpu_model, &batch, &labels, &cfg, &mut Rng::new(1)).unwrap();
    let e = embedding::pgd(&cuda, &emu_model, &batch, &labels, &cfg, &mut Rng::new(1)).unwrap();
    let de = cuda.download(&e.delta).unwrap().2;
    for n in embedding::norms(&de, &batch, h, Norm::L2) {
        assert!(n <= 1.0 + 1e-5, "‖δ‖ {n}");
    }
    let err = rel_err(&de, &c.delta.data).unwrap();
    assert!(err <= TOL, "δ after 3 steps: relative error {err:.2e}");
    let err = rel_err(&e.logits.concat(), &c.logits.concat()).unwrap();
    assert!(err <= TOL, "logits at e + δ: relative error {err:.2e}");
    eprintln!("PGD on the emulator: δ and logits within {err:.2e} of the CPU");
}
