//! Cross-example batching for black-box attacks.
//!
//! A greedy search asks for a handful of candidates at a time (four character edits, a word's
//! synonyms), far too few rows to keep a GEMM busy. So many examples are attacked at once, each on
//! its own worker thread running the ordinary sequential search, and their scoring requests meet
//! here: the thread that owns the model ([`BatchQueue::serve`]) waits until every live worker has
//! a request pending, then scores all of them together — rows sorted by length and cut into
//! batches of at most `max_tokens` tokens — and answers each worker.
//!
//! Each round holds exactly one request from every live worker, and its rows are ordered by
//! (length, example, position), so the batches do not depend on thread timing: a run is
//! reproducible.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Condvar, Mutex};

use anyhow::{anyhow, Result};

use super::victim::Scorer;

type Reply = std::result::Result<Vec<Vec<f32>>, String>;

struct Request {
    key: usize,
    rows: Vec<Vec<u32>>,
    reply: Sender<Reply>,
}

struct Round {
    pending: Vec<Request>,
    /// workers that have not left yet
    live: usize,
}

pub struct BatchQueue {
    state: Mutex<Round>,
    wake: Condvar,
    /// most tokens per forward batch
    pub max_tokens: usize,
}

/// Leaves the queue when dropped (a worker that finishes, fails or panics).
pub struct Membership<'q>(&'q BatchQueue);

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.live -= 1;
        self.0.wake.notify_all();
    }
}

impl BatchQueue {
    /// A queue for `workers` workers, each of which must hold a [`BatchQueue::member`] guard.
    pub fn new(workers: usize, max_tokens: usize) -> Self {
        BatchQueue {
            state: Mutex::new(Round { pending: vec![], live: workers }),
            wake: Condvar::new(),
            max_tokens,
        }
    }

    /// The guard a worker holds while it may send requests.
    pub fn member(&self) -> Membership<'_> {
        Membership(self)
    }

    /// Scores rounds of requests with `inner` until every worker has left.
    pub fn serve(&self, inner: &dyn Scorer) {
        loop {
            let round = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                while !(s.live == 0 || (s.pending.len() >= s.live && !s.pending.is_empty())) {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.live == 0 && s.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut s.pending)
            };
            self.score_round(inner, round);
        }
    }

    fn score_round(&self, inner: &dyn Scorer, mut round: Vec<Request>) {
        round.sort_by_key(|r| r.key);
        // every row of the round, by length (then example, then position): little padding
        let mut rows: Vec<(usize, usize)> =
            round.iter().enumerate().flat_map(|(q, r)| (0..r.rows.len()).map(move |i| (q, i))).collect();
        rows.sort_by_key(|&(q, i)| (round[q].rows[i].len(), q, i));
        let mut out: Vec<Vec<Option<Vec<f32>>>> = round.iter().map(|r| vec![None; r.rows.len()]).collect();
        let mut failure: Option<String> = None;
        let mut start = 0;
        while start < rows.len() && failure.is_none() {
            // grow the batch while its tokens stay within the budget (the classifier's forward
            // runs on the valid tokens alone, so padding costs only in the attention)
            let len = |k: usize| round[rows[k].0].rows[rows[k].1].len();
            let (mut end, mut tokens) = (start + 1, len(start));
            while end < rows.len() && tokens + len(end) <= self.max_tokens {
                tokens += len(end);
                end += 1;
            }
            let batch: Vec<Vec<u32>> =
                rows[start..end].iter().map(|&(q, i)| round[q].rows[i].clone()).collect();
            match inner.probs(round[rows[start].0].key, batch) {
                Ok(probs) => {
                    for (&(q, i), p) in rows[start..end].iter().zip(probs) {
                        out[q][i] = Some(p);
                    }
                }
                Err(e) => failure = Some(format!("{e:#}")),
            }
            start = end;
        }
        for (r, o) in round.into_iter().zip(out) {
            let reply = match &failure {
                Some(e) => Err(e.clone()),
                None => Ok(o.into_iter().map(|p| p.expect("every row scored")).collect()),
            };
            // a worker that gave up (its receiver dropped) needs no answer
            let _ = r.reply.send(reply);
        }
    }
}

impl Scorer for BatchQueue {
    fn probs(&self, key: usize, rows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let (tx, rx) = channel();
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.pending.push(Request { key, rows, reply: tx });
            self.wake.notify_all();
        }
        rx.recv().map_err(|_| anyhow!("the scoring thread stopped"))?.map_err(|e| anyhow!(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores a row as [its length, its first id]; records the batches it was given.
    struct Echo(Mutex<Vec<Vec<usize>>>);
    impl Scorer for Echo {
        fn probs(&self, _key: usize, rows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
            self.0.lock().unwrap().push(rows.iter().map(|r| r.len()).collect());
            Ok(rows.iter().map(|r| vec![r.len() as f32, r[0] as f32]).collect())
        }
    }

    #[test]
    fn every_worker_gets_its_own_answers_in_token_bounded_batches() {
        let (workers, rounds) = (7usize, 5usize);
        let queue = BatchQueue::new(workers, 40);
        let echo = Echo(Mutex::new(vec![]));
        std::thread::scope(|s| {
            for w in 0..workers {
                let queue = &queue;
                s.spawn(move || {
                    let _member = queue.member();
                    for round in 0..rounds {
                        // w + 1 rows of lengths 1..=w+1, tagged with the worker and round
                        let rows: Vec<Vec<u32>> =
                            (0..=w).map(|i| vec![(100 * w + round) as u32; i + 1]).collect();
                        let got = queue.probs(w, rows.clone()).unwrap();
                        for (r, p) in rows.iter().zip(&got) {
                            assert_eq!(p, &vec![r.len() as f32, r[0] as f32]);
                        }
                    }
                });
            }
            queue.serve(&echo);
        });
        let batches = echo.0.into_inner().unwrap();
        // every row was scored once, within the budget, shortest first within a round
        let rows: usize = batches.iter().map(|b| b.len()).sum();
        assert_eq!(rows, rounds * (1..=workers).sum::<usize>());
        for b in &batches {
            assert!(b.iter().sum::<usize>() <= 40 || b.len() == 1, "{b:?}");
            assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
        }
        // a round holds one request of every worker: 28 rows of 84 tokens, cut into ≥ 3 batches
        assert!(batches.len() >= 3 * rounds && batches.len() < rows, "{} batches", batches.len());
    }

    #[test]
    fn a_failing_scorer_fails_every_request_and_the_queue_still_ends() {
        struct Fail;
        impl Scorer for Fail {
            fn probs(&self, _key: usize, _rows: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
                anyhow::bail!("no model")
            }
        }
        let queue = BatchQueue::new(3, 100);
        std::thread::scope(|s| {
            for w in 0..3 {
                let queue = &queue;
                s.spawn(move || {
                    let _member = queue.member();
                    let e = queue.probs(w, vec![vec![1, 2]]).unwrap_err();
                    assert!(e.to_string().contains("no model"));
                });
            }
            queue.serve(&Fail);
        });
    }
}
