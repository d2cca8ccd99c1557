//! Attack results and their summary, as TextAttack defines them.
//!
//! Skipped: the model was already wrong on the original input. Of the rest, successful: the attack
//! found an input the model gets wrong; failed: it did not. Accuracy under attack is
//! `failed / total`, the attack success rate `successful / (successful + failed)`; the perturbed
//! word percentage is averaged over successful attacks, queries over attacked (not skipped)
//! examples, words per input over all.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Skipped,
    Successful,
    Failed,
}

/// One attacked example: a line of the results JSONL.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttackRecord {
    pub index: usize,
    pub original: String,
    /// a sentence pair's second text (never perturbed: the attacks perturb the first)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    /// the adversarial text (text attacks; `None` for embedding-space attacks and skipped examples)
    pub perturbed: Option<String>,
    pub label: usize,
    pub original_prediction: usize,
    pub perturbed_prediction: usize,
    pub original_probs: Vec<f32>,
    pub perturbed_probs: Vec<f32>,
    pub outcome: Outcome,
    /// model queries, the original included
    pub queries: usize,
    pub words: usize,
    pub perturbed_words: usize,
    /// embedding-space attacks: ‖δ‖ of the final perturbation in the attack's norm
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_norm: Option<f32>,
}

/// The summary table of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub examples: usize,
    pub successful: usize,
    pub failed: usize,
    pub skipped: usize,
    /// `(total − skipped) / total`, in %
    pub original_accuracy: f64,
    /// `failed / total`, in %
    pub accuracy_under_attack: f64,
    /// `successful / (successful + failed)`, in %
    pub attack_success_rate: f64,
    /// mean over successful attacks of `perturbed words / words`, in %
    pub avg_perturbed_word_pct: f64,
    pub avg_words_per_input: f64,
    /// mean over attacked (not skipped) examples
    pub avg_queries: f64,
}

fn pct(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        100.0 * num as f64 / den as f64
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

impl Summary {
    pub fn of(records: &[AttackRecord]) -> Summary {
        let count = |o: Outcome| records.iter().filter(|r| r.outcome == o).count();
        let (successful, failed, skipped) =
            (count(Outcome::Successful), count(Outcome::Failed), count(Outcome::Skipped));
        let n = records.len();
        Summary {
            examples: n,
            successful,
            failed,
            skipped,
            original_accuracy: pct(n - skipped, n),
            accuracy_under_attack: pct(failed, n),
            attack_success_rate: pct(successful, successful + failed),
            avg_perturbed_word_pct: mean(
                records
                    .iter()
                    .filter(|r| r.outcome == Outcome::Successful && r.words > 0)
                    .map(|r| pct(r.perturbed_words, r.words)),
            ),
            avg_words_per_input: mean(records.iter().map(|r| r.words as f64)),
            avg_queries: mean(
                records.iter().filter(|r| r.outcome != Outcome::Skipped).map(|r| r.queries as f64),
            ),
        }
    }

    /// TextAttack's summary table, as text.
    pub fn table(&self) -> String {
        let rows = [
            ("Number of successful attacks", self.successful.to_string()),
            ("Number of failed attacks", self.failed.to_string()),
            ("Number of skipped attacks", self.skipped.to_string()),
            ("Original accuracy", format!("{:.2}%", self.original_accuracy)),
            ("Accuracy under attack", format!("{:.2}%", self.accuracy_under_attack)),
            ("Attack success rate", format!("{:.2}%", self.attack_success_rate)),
            ("Average perturbed word %", format!("{:.2}%", self.avg_perturbed_word_pct)),
            ("Average num. words per input", format!("{:.2}", self.avg_words_per_input)),
            ("Avg num queries", format!("{:.2}", self.avg_queries)),
        ];
        rows.iter().map(|(k, v)| format!("| {k:<30} | {v:>8} |\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(outcome: Outcome, queries: usize, words: usize, perturbed_words: usize) -> AttackRecord {
        AttackRecord {
            index: 0,
            original: String::new(),
            pair: None,
            perturbed: None,
            label: 0,
            original_prediction: 0,
            perturbed_prediction: 0,
            original_probs: vec![],
            perturbed_probs: vec![],
            outcome,
            queries,
            words,
            perturbed_words,
            delta_norm: None,
        }
    }

    #[test]
    fn textattack_definitions() {
        let r = [
            rec(Outcome::Successful, 10, 10, 1),
            rec(Outcome::Successful, 20, 4, 2),
            rec(Outcome::Failed, 30, 6, 0),
            rec(Outcome::Skipped, 1, 8, 0),
        ];
        let s = Summary::of(&r);
        assert_eq!((s.examples, s.successful, s.failed, s.skipped), (4, 2, 1, 1));
        assert_eq!(s.original_accuracy, 75.0);
        assert_eq!(s.accuracy_under_attack, 25.0);
        assert!((s.attack_success_rate - 200.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.avg_perturbed_word_pct, 30.0); // (10% + 50%) / 2, successful only
        assert_eq!(s.avg_words_per_input, 7.0); // all four
        assert_eq!(s.avg_queries, 20.0); // not the skipped one
        assert!(s.table().contains("| Accuracy under attack          |   25.00% |"));
        assert_eq!(Summary::of(&[]), Summary::default());
    }
}
