//! The server's counters and histograms, rendered in Prometheus' text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram with fixed upper bounds (cumulative on rendering, as Prometheus wants).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// sum of observations, in millionths of the unit
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Everything `GET /metrics` reports.
pub struct Metrics {
    /// answered requests by HTTP status
    responses: Mutex<BTreeMap<u16, u64>>,
    pub texts_scored: AtomicU64,
    pub batches: AtomicU64,
    /// texts per scored batch
    pub batch_size: Histogram,
    /// seconds from a request's last byte to its response (scoring requests)
    pub latency: Histogram,
    /// seconds a text waited in the queue before its batch ran
    pub queue_wait: Histogram,
    /// texts waiting for a batch now
    pub queued_texts: AtomicU64,
    /// open client connections now
    pub connections: AtomicU64,
}

const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const SECONDS_BOUNDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            responses: Mutex::new(BTreeMap::new()),
            texts_scored: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_BOUNDS),
            latency: Histogram::new(SECONDS_BOUNDS),
            queue_wait: Histogram::new(SECONDS_BOUNDS),
            queued_texts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn response(&self, status: u16) {
        *self.responses.lock().unwrap().entry(status).or_default() += 1;
    }

    /// Responses sent with `status` so far.
    pub fn responses(&self, status: u16) -> u64 {
        self.responses.lock().unwrap().get(&status).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s += "# HELP admix_http_responses_total HTTP responses sent, by status code\n";
        s += "# TYPE admix_http_responses_total counter\n";
        for (code, n) in self.responses.lock().unwrap().iter() {
            let _ = writeln!(s, "admix_http_responses_total{{code=\"{code}\"}} {n}");
        }
        let counter = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(&mut s, "admix_texts_scored_total", "texts scored", "counter", get(&self.texts_scored));
        counter(&mut s, "admix_batches_total", "batches run by the scorer", "counter", get(&self.batches));
        counter(&mut s, "admix_queued_texts", "texts waiting for a batch", "gauge", get(&self.queued_texts));
        counter(&mut s, "admix_open_connections", "open client connections", "gauge", get(&self.connections));
        self.batch_size.render(&mut s, "admix_batch_size", "texts per scored batch");
        self.latency.render(
            &mut s,
            "admix_request_latency_seconds",
            "scoring requests: last request byte to response",
        );
        self.queue_wait.render(&mut s, "admix_queue_wait_seconds", "time a request waited for its batch");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "test");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum 56.5\n"), "{s}");
        assert_eq!(h.count(), 4);
    }
}
