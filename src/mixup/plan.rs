//! The sizes of a pipeline run: the preset's, or the user's overrides.

use serde::{Deserialize, Serialize};

use super::{AdaptiveMethods, MixupConfig, Preset};
use crate::attack::run::AttackKind;
use crate::Choice;

/// The sizes of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// `mr`, or the user's train/dev/test files
    #[serde(default = "mr_name")]
    pub data: String,
    pub train: Option<usize>,
    pub adv: Option<usize>,
    pub dev: Option<usize>,
    pub test: Option<usize>,
    pub known: Vec<String>,
    pub unseen: Vec<String>,
    pub epochs: usize,
    pub full_epochs: usize,
    pub adaptive: usize,
    #[serde(default)]
    pub adaptive_methods: AdaptiveMethods,
    pub adv_only: bool,
    pub full: bool,
    pub seed: u64,
    /// training seeds (`seed` and the ones after it)
    #[serde(default = "one")]
    pub seeds: usize,
    #[serde(default)]
    pub lr: Option<f32>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub dropout: Option<f32>,
    /// every stage's token limit (pairs truncated longest first)
    #[serde(default = "sixty_four")]
    pub max_len: usize,
}

fn one() -> usize {
    1
}

fn sixty_four() -> usize {
    64
}

fn mr_name() -> String {
    "mr".into()
}

impl Plan {
    /// The sizes `a` asks for, the preset filling what it leaves open.
    pub fn of(a: &MixupConfig) -> Plan {
        let quick = a.preset == Preset::Quick;
        let names = |v: &[AttackKind]| v.iter().map(|&k| k.name().to_string()).collect::<Vec<_>>();
        let known = a.known.clone().unwrap_or_else(|| {
            if quick {
                vec![AttackKind::Deepwordbug]
            } else {
                vec![AttackKind::Deepwordbug, AttackKind::Textbugger]
            }
        });
        let unseen = a.unseen.clone().unwrap_or_else(|| {
            if quick {
                vec![AttackKind::Pwws, AttackKind::Textbugger]
            } else {
                vec![AttackKind::Pwws, AttackKind::Textfooler]
            }
        });
        let pick = |v: Option<usize>, q: usize| v.or(quick.then_some(q));
        let data = match &a.files {
            Some(f) => f.describe(),
            None => mr_name(),
        };
        Plan {
            data,
            train: pick(a.train_examples, 2000),
            adv: pick(a.adv_examples, 1000),
            dev: pick(a.dev_examples, 300),
            test: pick(a.test_examples, 300),
            known: names(&known),
            unseen: names(&unseen),
            epochs: a.epochs.unwrap_or(3),
            full_epochs: a.full_epochs.unwrap_or(if quick { 3 } else { 2 }),
            adaptive: a.adaptive_examples.unwrap_or(if quick { 20 } else { 100 }),
            adaptive_methods: a.adaptive_methods,
            adv_only: a.adv_only,
            full: !a.no_full,
            seed: a.seed,
            seeds: a.seeds,
            lr: a.lr,
            batch_size: a.batch_size,
            dropout: a.dropout,
            max_len: a.max_len.unwrap_or(sixty_four()),
        }
    }
}
