//! An AdpMixup classifier: one frozen encoder and `m` adapters (each with its head), mixed in
//! weight space per input, θ(β) = Σᵢ βᵢ·θᵢ over every adapter and head tensor (docs/mixup.md).
//!
//! With an input-dependent [`BetaRule`] a batch costs `m` passes (one per adapter, for their
//! prediction entropies) and one mixed pass over the samples whose β is not all on one member.
//! The mixed pass runs the adapters *stacked*: one GEMM per projection computes all `m` outputs,
//! and a per-row blend with each sample's β ([`Backend::mix_rows`], the fused
//! adapter-interpolation kernel on CUDA) makes it exactly the weight-space mix of that sample,
//! with no per-sample weight copy. With the learned router ([`crate::adapter::router`]) the
//! members' passes also keep their pooled [CLS] states, which with the input's wordpieces are the
//! router's input.

use anyhow::{bail, ensure, Context, Result};

use crate::adapter::mix::{self, stack_adapters, stack_heads, BetaRule, RowMix};
use crate::adapter::router::features::{MemberPasses, PieceTable};
use crate::adapter::router::Router;
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
    /// the learned router with the tokenizer's piece table ([`Mixture::routed`])
    router: Option<(Router<B::Weight>, PieceTable)>,
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
        if let BetaRule::Entropy { tau } | BetaRule::Calibrated { tau, .. } = rule {
            ensure!(tau > 0.0 && tau.is_finite(), "the entropy temperature τ must be positive (got {tau})");
        }
        if let BetaRule::Calibrated { temperatures, .. } = &rule {
            ensure!(
                temperatures.len() == members.len() && temperatures.iter().all(|t| *t > 0.0 && t.is_finite()),
                "calibrated entropy needs one positive temperature per adapter (got {temperatures:?})"
            );
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
        Ok(Mixture { bert: bert.to_backend(be)?, members, stacked, stacked_head, rule, router: None })
    }

    /// The mixture with a learned router (for [`BetaRule::Router`]); `table` is the tokenizer's.
    pub fn routed(mut self, be: &B, router: &Router<Tensor>, table: PieceTable) -> Result<Self> {
        let labels = self.members[0].1.num_labels;
        router.check_fits(self.m(), labels, self.bert.cfg.hidden_size)?;
        self.router = Some((router.to_backend(be)?, table));
        Ok(self)
    }

    /// The number of mixed adapters.
    pub fn m(&self) -> usize {
        self.members.len()
    }

    /// Each member's pass over the batch: its probabilities and, with `pooled`, its [CLS] states.
    pub fn member_passes(&self, be: &B, batch: &TokenBatch, pooled: bool) -> Result<MemberPasses> {
        let _range = crate::profile::range("mix: member passes");
        let mut out = MemberPasses::default();
        for (a, h) in &self.members {
            let cls = self.bert.encode_cls(be, batch, Some(a), None)?;
            let (_, cols, logits) = be.download(&h.forward(be, &cls, batch.batch, 1)?)?;
            ensure_finite(&logits, "logit")?;
            out.probs.push(logits.chunks(cols).map(|l| prediction(l.to_vec()).probs).collect());
            if pooled {
                let (_, width, states) = be.download(&cls)?;
                out.pooled.push(states.chunks(width).map(<[f32]>::to_vec).collect());
            }
        }
        Ok(out)
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

    /// Members' passes as [`Mixture::member_passes`] gives them for `samples` samples.
    fn check_members(&self, passes: Option<&MemberPasses>, samples: usize) -> Result<()> {
        if let Some(p) = passes {
            ensure!(
                p.members() == self.m() && p.probs.iter().all(|p| p.len() == samples),
                "member probabilities for {} members of {} samples, not {} of {samples}",
                p.members(),
                p.samples(),
                self.m(),
            );
        }
        Ok(())
    }

    /// The batch under each of several rules, the members' passes shared (a τ ablation costs one
    /// mixed pass per rule).
    pub fn run_rules(&self, be: &B, batch: &TokenBatch, rules: &[BetaRule]) -> Result<Vec<MixOutput>> {
        let passes = match rules.iter().any(BetaRule::is_adaptive) {
            true => {
                let pooled = rules.iter().any(|r| matches!(r, BetaRule::Router { .. }));
                Some(self.member_passes(be, batch, pooled)?)
            }
            false => None,
        };
        self.run_rules_given(be, batch, rules, passes.as_ref())
    }

    /// Each sample's β under `rule`, from the members' passes (adaptive rules need them; the
    /// router needs their pooled states too).
    pub fn betas(
        &self,
        be: &B,
        batch: &TokenBatch,
        rule: &BetaRule,
        passes: Option<&MemberPasses>,
    ) -> Result<Vec<Vec<f32>>> {
        Ok(match (rule, passes) {
            (BetaRule::Fixed(b), _) => vec![b.clone(); batch.batch],
            (BetaRule::Router { dir }, Some(p)) => {
                let (router, table) = self.router.as_ref().with_context(|| {
                    format!("the mixture was built without the router in {}", dir.display())
                })?;
                router.beta(be, p, batch, table)?
            }
            (_, Some(p)) => (0..batch.batch)
                .map(|s| rule.beta(&p.probs.iter().map(|p| p[s].as_slice()).collect::<Vec<_>>()))
                .collect::<Result<_>>()?,
            (_, None) => bail!("β rule {rule:?} needs the members' probabilities"),
        })
    }

    /// [`Mixture::run_rules`] with the members' passes over the batch already computed (needed by
    /// adaptive rules). A sample whose β is all on one member is that member (θ = θᵢ): it takes
    /// the member's probabilities and skips the mixed pass, which runs on the other samples only.
    pub fn run_rules_given(
        &self,
        be: &B,
        batch: &TokenBatch,
        rules: &[BetaRule],
        passes: Option<&MemberPasses>,
    ) -> Result<Vec<MixOutput>> {
        self.check_members(passes, batch.batch)?;
        rules
            .iter()
            .map(|rule| {
                let beta = self.betas(be, batch, rule, passes)?;
                self.run_with(be, batch, beta, passes)
            })
            .collect()
    }

    /// The mixed pass with the given per-sample β; with the members' passes, samples whose β is
    /// one member's take that member's probabilities.
    pub fn run_with(
        &self,
        be: &B,
        batch: &TokenBatch,
        beta: Vec<Vec<f32>>,
        passes: Option<&MemberPasses>,
    ) -> Result<MixOutput> {
        self.check_members(passes, batch.batch)?;
        ensure!(beta.len() == batch.batch, "{} β for a batch of {}", beta.len(), batch.batch);
        let mut probs = vec![vec![]; batch.batch];
        let mut mixed = vec![];
        for (s, b) in beta.iter().enumerate() {
            match (passes, mix::one_member(b)) {
                (Some(p), Some(i)) => probs[s] = p.probs[i][s].clone(),
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
