//! Dynamic batching: requests queue up (bounded, in texts), and one thread runs the scorer on
//! batches of up to `max_batch` texts, waiting at most `max_wait` after the oldest request for
//! others to join it.
//!
//! A full queue refuses a request at once ([`Refused::Overloaded`], HTTP 503) instead of letting
//! latency grow; a closed batcher refuses new work but finishes what it accepted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use super::scorer::{Score, Scored};
use crate::model::tokenizer::TextInput;

#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// the most texts one scorer call takes (a larger request runs alone)
    pub max_batch: usize,
    /// how long the oldest queued request may wait for others
    pub max_wait: Duration,
    /// the most texts waiting at once; beyond it requests are refused
    pub max_queue: usize,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// the queue is full
    Overloaded,
    /// the server is shutting down
    Closed,
}

/// What a queued request gets back: its scores, or the scorer's error.
pub type Reply = Result<Vec<Scored>, String>;

struct Job {
    inputs: Vec<TextInput>,
    queued: Instant,
    reply: mpsc::SyncSender<Reply>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    texts: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    config: BatchConfig,
    metrics: Arc<Metrics>,
}

/// The queue and its batching thread.
pub struct Batcher {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts the batching thread; `make` builds the scorer on it (device state stays on the
    /// thread that uses it). Returns once the scorer is ready, or with its error.
    pub fn start(
        config: BatchConfig,
        metrics: Arc<Metrics>,
        make: impl FnOnce() -> anyhow::Result<Box<dyn Score>> + Send + 'static,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_batch > 0, "the maximum batch size must be positive");
        anyhow::ensure!(config.max_queue > 0, "the queue must hold at least one text");
        let shared =
            Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new(), config, metrics });
        let (ready_tx, ready_rx) = mpsc::channel();
        let s = shared.clone();
        let worker = std::thread::Builder::new().name("admix-batcher".into()).spawn(move || {
            let scorer = match make() {
                Ok(sc) => {
                    let _ = ready_tx.send(Ok(()));
                    sc
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            run(&s, &*scorer);
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Batcher { shared, worker: Mutex::new(Some(worker)) }),
            Ok(Err(e)) => Err(e),
            Err(_) => anyhow::bail!("the scorer thread panicked while loading"),
        }
    }

    /// Queues `inputs`; the receiver gets the reply when their batch has run.
    pub fn submit(&self, inputs: Vec<TextInput>) -> Result<mpsc::Receiver<Reply>, Refused> {
        let (tx, rx) = mpsc::sync_channel(1);
        let mut q = self.shared.queue.lock().unwrap();
        if q.closed {
            return Err(Refused::Closed);
        }
        // an empty queue takes any request, so that a request larger than the queue can run
        if q.texts > 0 && q.texts + inputs.len() > self.shared.config.max_queue {
            return Err(Refused::Overloaded);
        }
        q.texts += inputs.len();
        self.shared.metrics.queued_texts.store(q.texts as u64, Ordering::Relaxed);
        q.jobs.push_back(Job { inputs, queued: Instant::now(), reply: tx });
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Refuses new work, runs what was queued, and waits for the batching thread to end.
    pub fn close(&self) {
        self.shared.queue.lock().unwrap().closed = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.lock().unwrap().take() {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

/// The batching loop: take the oldest job, gather more until the batch is full or the oldest has
/// waited `max_wait`, score, answer each job with its rows.
fn run(s: &Shared, scorer: &dyn Score) {
    let cfg = s.config;
    loop {
        let mut q = s.queue.lock().unwrap();
        while q.jobs.is_empty() {
            if q.closed {
                return;
            }
            q = s.wake.wait(q).unwrap();
        }
        let deadline = q.jobs[0].queued + cfg.max_wait;
        let mut jobs: Vec<Job> = Vec::new();
        let mut texts = 0;
        loop {
            while let Some(next) = q.jobs.front() {
                if !jobs.is_empty() && texts + next.inputs.len() > cfg.max_batch {
                    break;
                }
                let job = q.jobs.pop_front().unwrap();
                texts += job.inputs.len();
                q.texts -= job.inputs.len();
                jobs.push(job);
            }
            let now = Instant::now();
            // full, out of time, or shutting down (no one else is coming)
            if texts >= cfg.max_batch || now >= deadline || q.closed || !q.jobs.is_empty() {
                break;
            }
            q = s.wake.wait_timeout(q, deadline - now).unwrap().0;
        }
        s.metrics.queued_texts.store(q.texts as u64, Ordering::Relaxed);
        drop(q);

        let started = Instant::now();
        for j in &jobs {
            s.metrics.queue_wait.observe((started - j.queued).as_secs_f64());
        }
        let inputs: Vec<TextInput> = jobs.iter().flat_map(|j| j.inputs.iter().cloned()).collect();
        // a panicking scorer must not leave requests hanging: it answers them with an error
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.score(&inputs)));
        let result = match result {
            Ok(Ok(scores)) if scores.len() == inputs.len() => Ok(scores),
            Ok(Ok(scores)) => {
                Err(format!("the scorer returned {} results for {} texts", scores.len(), inputs.len()))
            }
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("the scorer panicked".to_string()),
        };
        s.metrics.batches.fetch_add(1, Ordering::Relaxed);
        s.metrics.batch_size.observe(inputs.len() as f64);
        match result {
            Ok(mut scores) => {
                s.metrics.texts_scored.fetch_add(inputs.len() as u64, Ordering::Relaxed);
                for j in jobs.into_iter().rev() {
                    let mine = scores.split_off(scores.len() - j.inputs.len());
                    // the client may have gone: its request still ran, nobody is told
                    let _ = j.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
