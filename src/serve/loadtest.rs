//! `admix loadtest`: closed-loop load on a running `admix serve` over loopback. At each
//! concurrency level, that many clients each keep one connection and send scoring requests back
//! to back for the duration; the result is throughput and the latency distribution seen by the
//! clients (median, p90, p99, max), with rejected (503) and failed requests counted apart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// A minimal keep-alive HTTP/1.1 client (for the load test and the server's tests).
pub struct Client {
    addr: String,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
    pub timeout: Duration,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        Client { addr: addr.to_string(), conn: None, timeout: Duration::from_secs(30) }
    }

    fn connect(&mut self) -> Result<&mut (TcpStream, BufReader<TcpStream>)> {
        if self.conn.is_none() {
            let s =
                TcpStream::connect(&self.addr).with_context(|| format!("cannot connect to {}", self.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            let r = BufReader::new(s.try_clone()?);
            self.conn = Some((s, r));
        }
        Ok(self.conn.as_mut().unwrap())
    }

    /// Sends one request and reads the response: `(status, body)`. Reconnects once if a kept-alive
    /// connection turns out closed.
    pub fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            match self.try_call(method, path, body) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.conn = None;
                    if !(reused && attempt == 0) {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!()
    }

    fn try_call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let addr = self.addr.clone();
        let (w, r) = self.connect()?;
        let mut msg = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(body);
        w.write_all(&msg)?;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line `{}`", line.trim_end()))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                bail!("the server closed the connection mid-response");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().context("bad Content-Length")?,
                    "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut out = vec![0u8; length];
        r.read_exact(&mut out)?;
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

/// One concurrency level's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub seconds: f64,
    /// answered 200
    pub ok: usize,
    /// answered 503 (overloaded)
    pub rejected: usize,
    /// other statuses and transport errors
    pub errors: usize,
    pub requests_per_s: f64,
    pub texts_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub struct LoadConfig {
    pub addr: String,
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub texts_per_request: usize,
    pub texts: Vec<String>,
    /// how long a client waits after a 503 before its next request (a client that retries at
    /// once turns an overload into a storm of refusals that takes the scorer's CPU)
    pub backoff: Duration,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs every level in turn (each after a warm-up at the same concurrency).
pub fn run(cfg: &LoadConfig, mut progress: impl FnMut(&Level)) -> Result<Vec<Level>> {
    anyhow::ensure!(!cfg.texts.is_empty(), "no texts to send");
    anyhow::ensure!(cfg.texts_per_request > 0, "--texts-per-request must be positive");
    // the server must be there before we measure anything
    let (status, _) = Client::new(&cfg.addr).call("GET", "/healthz", b"")?;
    anyhow::ensure!(status == 200, "{} answered /healthz with {status}", cfg.addr);
    let mut levels = Vec::new();
    for &c in &cfg.concurrency {
        anyhow::ensure!(c > 0, "concurrency must be positive");
        if !cfg.warmup.is_zero() {
            level(cfg, c, cfg.warmup)?;
        }
        let l = level(cfg, c, cfg.duration)?;
        progress(&l);
        levels.push(l);
    }
    Ok(levels)
}

fn level(cfg: &LoadConfig, clients: usize, duration: Duration) -> Result<Level> {
    let start = Instant::now();
    let until = start + duration;
    let results: Vec<(Vec<f64>, usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|w| {
                scope.spawn(move || {
                    let mut client = Client::new(&cfg.addr);
                    let (mut lat, mut rejected, mut errors) = (Vec::new(), 0, 0);
                    let mut next = w * 7919; // each client starts elsewhere in the texts
                    while Instant::now() < until {
                        let texts: Vec<&str> = (0..cfg.texts_per_request)
                            .map(|k| cfg.texts[(next + k) % cfg.texts.len()].as_str())
                            .collect();
                        next += cfg.texts_per_request;
                        let body = serde_json::json!({ "texts": texts }).to_string();
                        let t = Instant::now();
                        match client.call("POST", "/v1/score", body.as_bytes()) {
                            Ok((200, _)) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                            Ok((503, _)) => {
                                rejected += 1;
                                std::thread::sleep(cfg.backoff);
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, rejected, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("load client panicked")).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    lat.sort_by(f64::total_cmp);
    let ok = lat.len();
    Ok(Level {
        concurrency: clients,
        seconds,
        ok,
        rejected: results.iter().map(|r| r.1).sum(),
        errors: results.iter().map(|r| r.2).sum(),
        requests_per_s: ok as f64 / seconds,
        texts_per_s: (ok * cfg.texts_per_request) as f64 / seconds,
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 0.5), 50.0);
        assert_eq!(super::percentile(&v, 0.99), 99.0);
        assert_eq!(super::percentile(&v, 1.0), 100.0);
        assert_eq!(super::percentile(&[3.0], 0.99), 3.0);
    }
}
