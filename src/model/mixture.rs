//! An AdpMixup classifier: one frozen encoder and `m` adapters (each with its head), mixed in
//! weight space per input, θ(β) = Σᵢ βᵢ·θᵢ over every adapter and head tensor (docs/mixup.md).
//!
//! With an input-dependent [`BetaRule`] a batch costs `m` passes (one per adapter, for their
//! prediction entropies) and one mixed pass. The mixed pass runs the adapters *stacked*: one GEMM
//! per projection computes all `m` outputs, and a per-row blend with each sample's β
//! ([`Backend::mix_rows`], the fused adapter-interpolation kernel on CUDA) makes it exactly the
//! weight-space mix of that sample, with no per-sample weight copy.

use anyhow::{bail, ensure, Result};

use crate::adapter::mix::{stack_adapters, stack_heads, BetaRule, RowMix};
use crate::adapter::{Adapter, ClassificationHead};
use crate::backend::Backend;
use crate::backend::TokenBatch;
use crate::model::bert::Bert;
use crate::model::classify::{ensure_finite, prediction, Classify};
use crate::weights::Tensor;

/// An adapter with its head.
type Member<W> = (Adapter<W>, ClassificationHead<W>);

pub struct Mixture<B: Backend> {
    bert: Bert<B::Weight>,
    /// each adapter with its head, for the entropy passes
    members: Vec<Member<B::Weight>>,
    stacked: Adapter<B::Weight>,
    stacked_head: ClassificationHead<B::Weight>,
    pub rule: BetaRule,
}

/// What a mixture computed for a batch.
pub struct MixOutput {
    /// class probabilities of the mixed model, per sample
    pub probs: Vec<Vec<f32>>,
    /// each sample's β over the members
    pub beta: Vec<Vec<f32>>,
}

impl<B: Backend> Mixture<B> {
    pub fn new(
        be: &B,
        bert: &Bert<Tensor>,
        members: &[(&Adapter<Tensor>, &ClassificationHead<Tensor>)],
        rule: BetaRule,
    ) -> Result<Self> {
        ensure!(!members.is_empty(), "a mixture needs at least one adapter");
        if let BetaRule::Fixed(b) = &rule {
            ensure!(b.len() == members.len(), "{} mixing weights for {} adapters", b.len(), members.len());
        }
        if let BetaRule::Entropy { tau } = rule {
            ensure!(tau > 0.0 && tau.is_finite(), "the entropy temperature τ must be positive (got {tau})");
        }
        let labels = members[0].1.num_labels;
        if let Some((_, h)) = members.iter().find(|(_, h)| h.num_labels != labels) {
            bail!("head `{}` has {} labels, head `{}` {labels}", h.name, h.num_labels, members[0].1.name);
        }
        let adapters: Vec<&Adapter<Tensor>> = members.iter().map(|m| m.0).collect();
        let heads: Vec<&ClassificationHead<Tensor>> = members.iter().map(|m| m.1).collect();
        let stacked = stack_adapters(&adapters)?.to_backend(be)?;
        let stacked_head = stack_heads(&heads)?.to_backend(be)?;
        let members = members
            .iter()
            .map(|(a, h)| Ok((a.to_backend(be)?, h.to_backend(be)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mixture { bert: bert.to_backend(be)?, members, stacked, stacked_head, rule })
    }

    /// The number of mixed adapters.
    pub fn m(&self) -> usize {
        self.members.len()
    }

    /// Each member's class probabilities on the batch: `[member][sample][class]`.
    pub fn member_probs(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Vec<Vec<f32>>>> {
        let _range = crate::profile::range("mix: member passes");
        self.members
            .iter()
            .map(|(a, h)| {
                let cls = self.bert.encode_cls(be, batch, Some(a), None)?;
                let (_, cols, logits) = be.download(&h.forward(be, &cls, batch.batch, 1)?)?;
                ensure_finite(&logits, "logit")?;
                Ok(logits.chunks(cols).map(|l| prediction(l.to_vec()).probs).collect())
            })
            .collect()
    }

    /// Each sample's β under the mixture's rule.
    pub fn betas(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        if let BetaRule::Fixed(b) = &self.rule {
            return Ok(vec![b.clone(); batch.batch]);
        }
        let probs = self.member_probs(be, batch)?;
        Ok((0..batch.batch)
            .map(|s| self.rule.beta(&probs.iter().map(|p| p[s].as_slice()).collect::<Vec<_>>()))
            .collect())
    }

    /// Logits `[B, labels]` with sample `b` run by the adapter and head `Σᵢ β[b][i]·θᵢ`.
    pub fn logits_mixed(&self, be: &B, batch: &TokenBatch, mix: &RowMix) -> Result<B::Act> {
        ensure!(mix.m == self.m(), "mixing weights over {} adapters for a mixture of {}", mix.m, self.m());
        let _range = crate::profile::range("mix: mixed pass");
        let cls = self.bert.encode_cls_mixed(be, batch, &self.stacked, mix, None)?;
        self.stacked_head.forward_mixed(be, &cls, mix)
    }

    /// β per sample, then the mixed pass.
    pub fn run(&self, be: &B, batch: &TokenBatch) -> Result<MixOutput> {
        let beta = self.betas(be, batch)?;
        self.run_with(be, batch, beta)
    }

    /// The mixed pass with the given per-sample β.
    pub fn run_with(&self, be: &B, batch: &TokenBatch, beta: Vec<Vec<f32>>) -> Result<MixOutput> {
        let mix = RowMix::new(self.m(), beta.concat())?;
        let (_, cols, logits) = be.download(&self.logits_mixed(be, batch, &mix)?)?;
        ensure_finite(&logits, "logit")?;
        Ok(MixOutput { probs: logits.chunks(cols).map(|l| prediction(l.to_vec()).probs).collect(), beta })
    }

    /// The batch under each of several rules, the members' passes shared (a τ ablation costs one
    /// mixed pass per rule).
    pub fn run_rules(&self, be: &B, batch: &TokenBatch, rules: &[BetaRule]) -> Result<Vec<MixOutput>> {
        let probs =
            if rules.iter().any(BetaRule::is_adaptive) { self.member_probs(be, batch)? } else { vec![] };
        rules
            .iter()
            .map(|rule| {
                let beta = (0..batch.batch)
                    .map(|s| rule.beta(&probs.iter().map(|p| p[s].as_slice()).collect::<Vec<_>>()))
                    .collect();
                self.run_with(be, batch, beta)
            })
            .collect()
    }
}

impl<B: Backend> Classify<B> for Mixture<B> {
    fn probs(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        Ok(self.run(be, batch)?.probs)
    }
}
