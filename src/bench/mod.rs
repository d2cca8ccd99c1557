//! `admix bench`: the benchmark suites, on any backend.
//!
//! - [`kernels`]: every op of the backend at a model's shapes (what one CUDA kernel, or one CPU
//!   routine, does), with its FLOPs and bytes counted in the code, against the roofline built from
//!   two ceilings measured on the device ([`ceilings`]: a large copy and a large GEMM), and the
//!   GEMMs against cuBLAS at the same shapes on a GPU;
//! - [`model`]: forward latency (p50/p99) and throughput per batch size, an adapter training
//!   step, a PGD step, a HotFlip step, and AdpMixup scoring with entropy β (m = 1 and m = 3), at
//!   MiniLM size with the real weights and at BERT-base/large sizes with random weights.
//!
//! Every case runs warm-up iterations first, then many timed repetitions; the median and p99 are
//! reported. Before each timed repetition a buffer larger than the last-level cache is
//! overwritten (`--no-flush` skips it), so the inputs are not served from a cache that a real
//! pass would not have warmed. On the GPU runs are timed with events (`Backend::time_runs`).

pub mod ceilings;
pub mod gpu_check;
pub mod kernels;
pub mod model;
pub mod run;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::backend::Backend;
use crate::model::config::BertConfig;

/// A model size to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// 2 layers, hidden 64 (smoke tests: the emulator runs it in seconds)
    Tiny,
    /// all-MiniLM-L6-v2 with its real weights (`admix fetch`)
    Minilm,
    /// bert-base's shape, random weights
    Base,
    /// bert-large's shape, random weights
    Large,
    /// roberta-base's shape (RoBERTa's positions, one token type, 50,265 tokens), random weights
    #[serde(rename = "roberta-base")]
    RobertaBase,
}

impl crate::Choice for Size {
    const WHAT: &'static str = "model size";
    const ALL: &'static [Self] = &[Size::Tiny, Size::Minilm, Size::Base, Size::Large, Size::RobertaBase];
    fn name(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::Minilm => "minilm",
            Size::Base => "base",
            Size::Large => "large",
            Size::RobertaBase => "roberta-base",
        }
    }
}

impl Size {
    /// The shape (MiniLM's is read from the fetched model by the caller).
    pub fn config(self) -> Option<BertConfig> {
        let base = BertConfig::bert_base();
        Some(match self {
            Size::Minilm => return None,
            Size::Base => base,
            Size::RobertaBase => BertConfig::roberta_base(),
            Size::Large => BertConfig {
                hidden_size: 1024,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                intermediate_size: 4096,
                ..base
            },
            Size::Tiny => BertConfig {
                vocab_size: 1000,
                hidden_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                intermediate_size: 128,
                max_position_embeddings: 128,
                ..base
            },
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::Minilm => "minilm",
            Size::Base => "bert-base",
            Size::Large => "bert-large",
            Size::RobertaBase => "roberta-base",
        }
    }
}

/// How much work each case gets.
#[derive(Clone, Debug)]
pub struct Plan {
    pub sizes: Vec<Size>,
    /// forward batch sizes
    pub batches: Vec<usize>,
    /// tokens per sequence (all valid)
    pub seq: usize,
    /// batch of the kernel suite, the training step, the attack steps and AdpMixup scoring
    pub work_batch: usize,
    pub warmup: usize,
    pub reps: usize,
    /// read a cache-sized buffer through before each timed run
    pub flush: bool,
}

/// One measured case.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    pub suite: String,
    pub model: String,
    pub case: String,
    pub shape: String,
    pub reps: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    /// counted work per run, where it is defined
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<f64>,
    /// max(FLOPs / GEMM ceiling, bytes / copy ceiling)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_ms: Option<f64>,
    /// sequences (or texts) per second
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_s: Option<f64>,
    /// the same work by the reference library (cuBLAS) at the same shape
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_ms: Option<f64>,
    /// the peer framework's median for the same case (`--peer`: benches/pytorch_bench.py), eager
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_eager_ms: Option<f64>,
    /// … and under torch.compile
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_compiled_ms: Option<f64>,
}

impl Row {
    pub fn tflops(&self) -> Option<f64> {
        self.flops.map(|f| f / (self.median_ms * 1e-3) / 1e12)
    }
    pub fn gbps(&self) -> Option<f64> {
        self.bytes.map(|b| b / (self.median_ms * 1e-3) / 1e9)
    }
    /// The roofline floor as a share of the measured time (100% = at the roofline).
    pub fn pct_of_roofline(&self) -> Option<f64> {
        self.floor_ms.map(|f| 100.0 * f / self.median_ms)
    }
}

/// Median, p99 and minimum of run times (nearest rank).
pub fn stats(mut ms: Vec<f64>) -> Result<(f64, f64, f64)> {
    if ms.is_empty() {
        bail!("no timed runs");
    }
    if let Some(bad) = ms.iter().find(|t| !t.is_finite()) {
        bail!("a run took {bad} ms");
    }
    ms.sort_by(f64::total_cmp);
    let rank = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok((rank(0.5), rank(0.99), ms[0]))
}

/// The median time (ms) of `reps` runs of `f` on `exec` after `warmup` untimed ones (the GPU
/// check's kernel timings; [`Timer`] adds the cache flush for the suites).
pub fn median_ms(
    exec: &dyn crate::backend::cuda::Executor,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    Ok(stats(exec.time_runs(warmup, reps.max(1), &mut || Ok(()), &mut f)?)?.0)
}

/// Times `f` on `be` under `plan` (warm-up, repetitions, the cache flush before each run).
pub struct Timer<'a, B: Backend> {
    pub be: &'a B,
    pub plan: &'a Plan,
    /// read through before each timed run (`None`: no flush)
    pub flush: Option<B::Act>,
}

impl<'a, B: Backend> Timer<'a, B> {
    /// A timer whose flush buffer is `flush_bytes` large (f32 elements).
    pub fn new(be: &'a B, plan: &'a Plan, flush_bytes: usize) -> Result<Self> {
        let flush = if plan.flush {
            let cols = 1024;
            Some(be.zeros(flush_bytes.div_ceil(4 * cols), cols)?)
        } else {
            None
        };
        Ok(Timer { be, plan, flush })
    }

    /// A row for `f` with the plan's warm-up and repetitions.
    pub fn run(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Row> {
        self.run_reps(self.plan.warmup, self.plan.reps, f)
    }

    pub fn run_reps(&self, warmup: usize, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<Row> {
        let mut before = || -> Result<()> {
            if let Some(buf) = &self.flush {
                // a read of every element: loads allocate in the caches, where a large memset
                // may stream past them (non-temporal stores) and evict nothing
                self.be.sum_squares(buf)?;
            }
            Ok(())
        };
        let times = self.be.time_runs(warmup, reps, &mut before, f)?;
        let (median_ms, p99_ms, min_ms) = stats(times)?;
        Ok(Row { reps, median_ms, p99_ms, min_ms, ..Row::default() })
    }
}

/// Sets each row's roofline floor, max(FLOPs / GEMM ceiling, bytes / bandwidth ceiling), where
/// it has counts.
pub fn apply_roofline(rows: &mut [Row], c: &ceilings::Ceilings) {
    for r in rows {
        if let (Some(f), Some(b)) = (r.flops, r.bytes) {
            r.floor_ms = Some((f / c.gemm_flops_per_s).max(b / c.copy_bytes_per_s) * 1e3);
        }
    }
}

/// Puts the peer's medians (benches/pytorch_bench.py's JSON) beside the rows of the same model
/// and case; returns how many rows got one.
pub fn merge_peer(rows: &mut [Row], peer: &serde_json::Value) -> Result<usize> {
    let Some(list) = peer["rows"].as_array() else { bail!("the peer file has no `rows` array") };
    let mut matched = 0;
    for p in list {
        let (Some(model), Some(case)) = (p["model"].as_str(), p["case"].as_str()) else {
            bail!("a peer row without `model` and `case`: {p}");
        };
        if let Some(r) = rows.iter_mut().find(|r| r.suite == "model" && r.model == model && r.case == case) {
            r.peer_eager_ms = p["eager_ms"].as_f64();
            r.peer_compiled_ms = p["compile_ms"].as_f64();
            matched += 1;
        }
    }
    Ok(matched)
}

/// The rows as a markdown table.
pub fn table(rows: &[Row]) -> String {
    let f = |v: Option<f64>, prec: usize| v.map_or("–".to_string(), |x| format!("{x:.prec$}"));
    let mut s = String::from(
        "| suite | model | case | shape | median ms | p99 ms | per s | TFLOP/s | GB/s | % roofline | cuBLAS ms | PyTorch ms (eager / compile) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} |\n",
            r.suite,
            r.model,
            r.case,
            r.shape,
            r.median_ms,
            r.p99_ms,
            f(r.per_s, 1),
            f(r.tflops(), 3),
            f(r.gbps(), 1),
            r.pct_of_roofline().map_or("–".into(), |p| format!("{p:.0}%")),
            f(r.reference_ms, 3),
            match (r.peer_eager_ms, r.peer_compiled_ms) {
                (None, None) => "–".to_string(),
                (e, c) => format!("{} / {}", f(e, 3), f(c, 3)),
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_nearest_ranks() {
        let (med, p99, min) = stats((1..=200).rev().map(f64::from).collect()).unwrap();
        assert_eq!((med, p99, min), (100.0, 198.0, 1.0));
        assert!(stats(vec![]).is_err());
        assert!(stats(vec![1.0, f64::NAN]).is_err());
    }

    #[test]
    fn peer_rows_join_on_model_and_case() {
        let mut rows = vec![
            Row {
                suite: "model".into(),
                model: "minilm".into(),
                case: "forward batch 1".into(),
                ..Row::default()
            },
            Row {
                suite: "kernels".into(),
                model: "minilm".into(),
                case: "forward batch 1".into(),
                ..Row::default()
            },
        ];
        let peer = serde_json::json!({"rows": [
            {"model": "minilm", "case": "forward batch 1", "eager_ms": 2.0, "compile_ms": 1.5},
            {"model": "bert-base", "case": "forward batch 1", "eager_ms": 9.0},
        ]});
        assert_eq!(merge_peer(&mut rows, &peer).unwrap(), 1);
        assert_eq!((rows[0].peer_eager_ms, rows[0].peer_compiled_ms), (Some(2.0), Some(1.5)));
        assert_eq!(rows[1].peer_eager_ms, None);
        assert!(table(&rows).contains("| 2.000 / 1.500 |"));
        assert!(merge_peer(&mut rows, &serde_json::json!({"rows": [{"case": "x"}]})).is_err());
        assert!(merge_peer(&mut rows, &serde_json::json!({})).is_err());
    }

    #[test]
    fn rates_follow_the_counts() {
        let r =
            Row { median_ms: 2.0, flops: Some(4e9), bytes: Some(2e6), floor_ms: Some(1.0), ..Row::default() };
        assert!((r.tflops().unwrap() - 2.0).abs() < 1e-12);
        assert!((r.gbps().unwrap() - 1.0).abs() < 1e-12);
        assert!((r.pct_of_roofline().unwrap() - 50.0).abs() < 1e-12);
    }
}
