//! The CPU backward pass and AdamW against the reference: PyTorch + AdapterHub gradients and two
//! AdamW steps for MiniLM + seq_bn adapter `clean` + head on the fixture's 8 sentences.

mod common;

use admix::backend::cpu::Cpu;
use admix::train::optim::{AdamW, AdamWConfig};
use common::*;

/// Largest difference relative to the reference's largest magnitude.
fn rel_to_max(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    max_abs(a, b) / scale
}

#[test]
fn loss_gradients_and_input_gradient_match_the_reference() {
    let (mut model, batch, labels) = fixture_model();
    let oracle = fixture("adapter_oracle.safetensors");
    model.zero_grads(&Cpu).unwrap();
    let out = model.forward_backward(&Cpu, &batch, &labels, None, true).unwrap();
    let loss_ref = oracle.f64s("loss_f64").unwrap().1[0];
    assert!((out.loss as f64 - loss_ref).abs() < 1e-5, "loss {} vs {loss_ref}", out.loss);
    assert!(max_abs(&out.logits.data, &oracle.f64s("logits_f64").unwrap().1) < 1e-5);

    let params = model.params();
    assert_eq!(params.len(), 28);
    for p in params {
        let (shape, reference) = oracle.f64s(&format!("grad_f64.{}", p.name)).unwrap();
        assert_eq!(shape.iter().product::<usize>(), p.grad.data.len(), "{}", p.name);
        let err = rel_to_max(&p.grad.data, &reference);
        assert!(err < 1e-4, "gradient of {}: error {err:.2e} of its max", p.name);
    }

    let dx = out.input_grad.expect("input gradient");
    let (_, reference) = oracle.f64s("grad.inputs_embeds_valid_f64").unwrap();
    let err = rel_to_max(&valid_rows(&dx.data, &batch.lens, batch.seq, 384), &reference);
    assert!(err < 1e-4, "grad.inputs_embeds: error {err:.2e} of its max");
    // exactly zero at pad positions, as in the reference
    assert!(pads_are_zero(&dx.data, &batch.lens, batch.seq, 384));
}

#[test]
fn two_adamw_steps_match_the_reference() {
    let (mut model, batch, labels) = fixture_model();
    let oracle = fixture("adapter_oracle.safetensors");
    // the fixture's settings: torch defaults, decay on all 28 tensors, constant lr, no clipping
    let cfg = AdamWConfig { no_decay: vec![], max_grad_norm: None, ..AdamWConfig::default() };
    let mut opt = AdamW::new(cfg);
    for step in 1..=2 {
        model.zero_grads(&Cpu).unwrap();
        let out = model.forward_backward(&Cpu, &batch, &labels, None, false).unwrap();
        let before = oracle.tensor_any_shape(&format!("adamw.step{step}.loss_before")).unwrap().data()[0];
        assert!((out.loss - before).abs() < 2e-5, "step {step}: loss {} vs {before}", out.loss);
        opt.update(&Cpu, model.params(), 1e-3).unwrap();
        for p in model.params() {
            let reference = oracle.tensor_any_shape(&format!("adamw.after_step{step}.{}", p.name)).unwrap();
            let err = p
                .weight
                .data()
                .iter()
                .zip(reference.data())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 2e-4, "step {step}, {}: max error {err:.2e}", p.name);
        }
    }
}
