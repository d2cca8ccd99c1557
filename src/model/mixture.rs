//! An AdpMixup classifier: one frozen encoder and `m` adapters (each with its head), mixed in
//! weight space per input, θ(β) = Σᵢ βᵢ·θᵢ over every adapter and head tensor (docs/mixup.md).
//!
//! With an input-dependent [`BetaRule`] a batch costs `m` passes (one per adapter, for their
//! prediction entropies) and one mixed pass over the samples whose β is not all on one member.
//! The mixed pass runs the adapters *stacked*: one GEMM per projection computes all `m` outputs,
//! and a per-row blend with each sample's β ([`Backend::mix_rows`], the fused
//! adapter-interpolation kernel on CUDA) makes it exactly the weight-space mix of that sample,
//! with no per-sample weight copy.

use anyhow::{bail, ensure, Result};

use crate::adapter::mix::{self, stack_adapters, stack_heads, BetaRule, RowMix};
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

    /// Logits `[B, labels]` with sample `b` run by the adapter and head `Σᵢ β[b][i]·θᵢ`.
    pub fn logits_mixed(&self, be: &B, batch: &TokenBatch, mix: &RowMix) -> Result<B::Act> {
        ensure!(mix.m == self.m(), "mixing weights over {} adapters for a mixture of {}", mix.m, self.m());
        let _range = crate::profile::range("mix: mixed pass");
        let cls = self.bert.encode_cls_mixed(be, batch, &self.stacked, mix, None)?;
        self.stacked_head.forward_mixed(be, &cls, mix)
    }

    /// β per sample, then the mixed pass (see [`Mixture::run_rules_given`]).
    pub fn run(&self, be: &B, batch: &TokenBatch) -> Result<MixOutput> {
        Ok(self.run_rules(be, batch, std::slice::from_ref(&self.rule))?.remove(0))
    }

    /// Members' probabilities as [`Mixture::member_probs`] gives them for `samples` samples.
    fn check_members(&self, member_probs: Option<&[Vec<Vec<f32>>]>, samples: usize) -> Result<()> {
        if let Some(p) = member_probs {
            ensure!(
                p.len() == self.m() && p.iter().all(|p| p.len() == samples),
                "member probabilities for {} members of {} samples, not {} of {samples}",
                p.len(),
                p.first().map_or(0, Vec::len),
                self.m(),
            );
        }
        Ok(())
    }

    /// The batch under each of several rules, the members' passes shared (a τ ablation costs one
    /// mixed pass per rule).
    pub fn run_rules(&self, be: &B, batch: &TokenBatch, rules: &[BetaRule]) -> Result<Vec<MixOutput>> {
        let probs = match rules.iter().any(BetaRule::is_adaptive) {
            true => Some(self.member_probs(be, batch)?),
            false => None,
        };
        self.run_rules_given(be, batch, rules, probs.as_deref())
    }

    /// [`Mixture::run_rules`] with the members' probabilities on the batch already computed
    /// (`[member][sample][class]`, as [`Mixture::member_probs`] gives them; needed by adaptive
    /// rules). A sample whose β is all on one member is that member (θ = θᵢ): it takes the
    /// member's probabilities and skips the mixed pass, which runs on the other samples only.
    pub fn run_rules_given(
        &self,
        be: &B,
        batch: &TokenBatch,
        rules: &[BetaRule],
        member_probs: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<Vec<MixOutput>> {
        self.check_members(member_probs, batch.batch)?;
        rules
            .iter()
            .map(|rule| {
                let beta = match (rule, member_probs) {
                    (BetaRule::Fixed(b), _) => vec![b.clone(); batch.batch],
                    (_, Some(p)) => (0..batch.batch)
                        .map(|s| rule.beta(&p.iter().map(|p| p[s].as_slice()).collect::<Vec<_>>()))
                        .collect(),
                    (_, None) => bail!("β rule {rule:?} needs the members' probabilities"),
                };
                self.run_with(be, batch, beta, member_probs)
            })
            .collect()
    }

    /// The mixed pass with the given per-sample β; with the members' probabilities, samples whose
    /// β is one member's take that member's.
    pub fn run_with(
        &self,
        be: &B,
        batch: &TokenBatch,
        beta: Vec<Vec<f32>>,
        member_probs: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<MixOutput> {
        self.check_members(member_probs, batch.batch)?;
        ensure!(beta.len() == batch.batch, "{} β for a batch of {}", beta.len(), batch.batch);
        let mut probs = vec![vec![]; batch.batch];
        let mut mixed = vec![];
        for (s, b) in beta.iter().enumerate() {
            match (member_probs, mix::one_member(b)) {
                (Some(p), Some(i)) => probs[s] = p[i][s].clone(),
                _ => mixed.push(s),
            }
        }
        if !mixed.is_empty() {
            let sub;
            let rows = match mixed.len() == batch.batch {
                true => batch,
                false => {
                    sub = batch.select(&mixed);
                    &sub
                }
            };
            let mix = RowMix::new(self.m(), mixed.iter().flat_map(|&s| beta[s].iter().copied()).collect())?;
            let (_, cols, logits) = be.download(&self.logits_mixed(be, rows, &mix)?)?;
            ensure_finite(&logits, "logit")?;
            for (&s, l) in mixed.iter().zip(logits.chunks(cols)) {
                probs[s] = prediction(l.to_vec()).probs;
            }
        }
        Ok(MixOutput { probs, beta })
    }
}

impl<B: Backend> Classify<B> for Mixture<B> {
    fn probs(&self, be: &B, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        Ok(self.run(be, batch)?.probs)
    }
}
