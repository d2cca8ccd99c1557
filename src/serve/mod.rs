//! Low-latency batch scoring: `admix serve` (HTTP/JSON with dynamic batching) and
//! `admix score --stream` (stdin JSONL → stdout JSONL), both over one [`scorer::Score`]: the
//! AdpMixup mixture of the adapters chosen at start-up.
//!
//! - [`http`]: the HTTP/1.1 subset (keep-alive, Content-Length bodies, limits while reading);
//! - [`batcher`]: the bounded queue and the batching thread (max batch, max wait);
//! - [`metrics`]: counters and histograms for `GET /metrics`;
//! - [`scorer`]: the mixture on a backend; [`stream`]: the JSONL pipeline mode;
//! - [`loadtest`]: the client that measures latency and throughput at several concurrencies.
//!
//! Endpoints: `POST /v1/score` `{"texts": ["…", …]}` (or `{"text": "…"}`; an item may be
//! `{"text": "…", "text_pair": "…"}`) → `{"predictions": [{"label", "label_id", "probs", "beta",
//! "truncated"}]}`; `GET /v1/info`; `GET /healthz`; `GET /metrics` (Prometheus text). Errors are
//! `{"error": "…"}` with a status that says what went wrong (docs/serving.md).

pub mod batcher;
pub mod http;
pub mod loadtest;
pub mod metrics;
pub mod scorer;
pub mod stream;

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use self::batcher::{BatchConfig, Batcher, Refused};
use self::metrics::Metrics;
use self::scorer::Score;
use crate::model::tokenizer::TextInput;

/// Everything `admix serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// e.g. `127.0.0.1:8080` (port 0: any free port)
    pub addr: String,
    pub batch: BatchConfig,
    pub limits: http::Limits,
    /// texts in one request
    pub max_texts: usize,
    /// characters in one text
    pub max_text_chars: usize,
    /// open connections; more are answered 503 and closed
    pub max_connections: usize,
    /// how long an idle keep-alive connection stays open
    pub keep_alive: Duration,
    /// how long a shutdown waits for open requests before giving up on them
    pub drain_timeout: Duration,
    /// label names in id order
    pub labels: Vec<String>,
    /// what `GET /v1/info` returns (model, adapters, τ, device)
    pub info: Value,
}

struct Shared {
    config: ServeConfig,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

/// A bound server; [`Server::run`] serves until asked to stop.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the address and starts the scorer (built by `make` on the batching thread).
    pub fn bind(
        config: ServeConfig,
        make: impl FnOnce() -> Result<Box<dyn Score>> + Send + 'static,
    ) -> Result<Self> {
        anyhow::ensure!(config.max_texts > 0, "--max-texts must be positive");
        anyhow::ensure!(config.max_connections > 0, "--max-connections must be positive");
        let listener =
            TcpListener::bind(&config.addr).with_context(|| format!("cannot listen on {}", config.addr))?;
        let metrics = Arc::new(Metrics::default());
        let batcher = Batcher::start(config.batch, metrics.clone(), make)?;
        let shared = Arc::new(Shared { config, batcher, metrics, draining: AtomicBool::new(false) });
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Accepts connections until `stop()` is true, then shuts down gracefully: the listener
    /// closes (new connections are refused), requests already being read or scored are finished
    /// and answered (with `Connection: close`; a health check among them answers 503), idle
    /// connections are closed, and the queue is drained before the scorer stops.
    pub fn run(self, stop: &(dyn Fn() -> bool + Sync)) -> Result<()> {
        self.listener.set_nonblocking(true).context("listener")?;
        let fd = self.listener.as_raw_fd();
        while !stop() {
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; a signal interrupts the wait (EINTR), then `stop` is read.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => self.accept(stream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                    // e.g. out of file descriptors: keep serving the connections we have
                    Err(e) => {
                        eprintln!("admix serve: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
        drop(self.listener);
        let s = &self.shared;
        s.draining.store(true, Ordering::SeqCst);
        let until = Instant::now() + s.config.drain_timeout;
        while s.metrics.connections.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = s.metrics.connections.load(Ordering::SeqCst);
        if left > 0 {
            eprintln!("admix serve: {left} connection(s) still open after the drain timeout");
        }
        s.batcher.close();
        Ok(())
    }

    fn accept(&self, stream: TcpStream) {
        let s = self.shared.clone();
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        // only this thread adds connections (others only close them), so a check then an add is safe
        if s.metrics.connections.load(Ordering::SeqCst) >= s.config.max_connections as u64 {
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let body = error_body("too many open connections; retry later");
            s.metrics.response(503);
            let _ = http::write_response(&mut stream, 503, JSON, &body, false);
            return;
        }
        s.metrics.connections.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new().name("admix-conn".into()).spawn({
            let s = s.clone();
            move || {
                connection(&s, stream);
                s.metrics.connections.fetch_sub(1, Ordering::SeqCst);
            }
        });
        if spawned.is_err() {
            s.metrics.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

const JSON: &str = "application/json";

fn error_body(msg: &str) -> Vec<u8> {
    json!({ "error": msg }).to_string().into_bytes()
}

/// Serves one connection's requests in order until it closes, idles out, or the server drains.
fn connection(s: &Shared, stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let _ = writer.set_write_timeout(Some(s.config.limits.request_timeout));
    let mut reader = BufReader::new(stream);
    let draining = || s.draining.load(Ordering::SeqCst);
    loop {
        match http::wait_for_request(&mut reader, s.config.keep_alive, &draining) {
            Ok(true) => {}
            _ => return,
        }
        let req = match http::read_request(&mut reader, &s.config.limits) {
            Ok(r) => r,
            Err(e) => {
                if let Some((status, msg)) = e.response() {
                    s.metrics.response(status);
                    let _ = http::write_response(&mut writer, status, JSON, &error_body(&msg), false);
                }
                return;
            }
        };
        let t0 = Instant::now();
        let (status, ctype, body) = route(s, &req);
        let keep = req.keep_alive && !draining();
        s.metrics.response(status);
        if req.path == "/v1/score" && status == 200 {
            s.metrics.latency.observe(t0.elapsed().as_secs_f64());
        }
        if http::write_response(&mut writer, status, ctype, &body, keep).is_err() || !keep {
            return;
        }
    }
}

fn route(s: &Shared, req: &http::Request) -> (u16, &'static str, Vec<u8>) {
    let method_not_allowed =
        |allowed: &str| (405, JSON, error_body(&format!("use {allowed} for {}", req.path)));
    match (req.path.as_str(), req.method.as_str()) {
        ("/v1/score", "POST") => match score(s, &req.body) {
            Ok(v) => (200, JSON, v.to_string().into_bytes()),
            Err((status, msg)) => (status, JSON, error_body(&msg)),
        },
        ("/v1/score", _) => method_not_allowed("POST"),
        ("/healthz", "GET") => {
            if s.draining.load(Ordering::SeqCst) {
                (503, JSON, json!({"status": "draining"}).to_string().into_bytes())
            } else {
                (200, JSON, json!({"status": "ok"}).to_string().into_bytes())
            }
        }
        ("/metrics", "GET") => (200, "text/plain; version=0.0.4", s.metrics.render().into_bytes()),
        ("/v1/info", "GET") => (200, JSON, s.config.info.to_string().into_bytes()),
        ("/healthz" | "/metrics" | "/v1/info", _) => method_not_allowed("GET"),
        _ => (
            404,
            JSON,
            error_body(&format!(
                "no endpoint {} (POST /v1/score, GET /v1/info, /healthz, /metrics)",
                req.path
            )),
        ),
    }
}

/// Parses a scoring request: its texts, or the status and message that reject it.
pub fn parse_score_request(
    body: &[u8],
    max_texts: usize,
    max_chars: usize,
) -> Result<Vec<TextInput>, (u16, String)> {
    let bad = |m: String| (400, m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(obj) = v else { return Err(bad("the body must be a JSON object".into())) };
    if let Some(k) = obj.keys().find(|k| *k != "texts" && *k != "text") {
        return Err(bad(format!("unknown field `{k}` (expected `texts` or `text`)")));
    }
    let items: Vec<(String, &Value)> = match (obj.get("texts"), obj.get("text")) {
        (Some(_), Some(_)) => return Err(bad("give `texts` or `text`, not both".into())),
        (None, None) => return Err(bad("missing field `texts`".into())),
        (None, Some(t)) => vec![("text".into(), t)],
        (Some(Value::Array(a)), None) => {
            a.iter().enumerate().map(|(i, t)| (format!("texts[{i}]"), t)).collect()
        }
        (Some(_), None) => return Err(bad("`texts` must be an array".into())),
    };
    if items.is_empty() {
        return Err((422, "`texts` is empty".into()));
    }
    if items.len() > max_texts {
        return Err((413, format!("{} texts in one request; the limit is {max_texts}", items.len())));
    }
    let mut inputs = Vec::with_capacity(items.len());
    for (name, item) in items {
        let input = match item {
            Value::String(t) => TextInput::single(t.clone()),
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| *k != "text" && *k != "text_pair") {
                    return Err(bad(format!("{name}: unknown field `{k}` (expected `text`, `text_pair`)")));
                }
                let Some(Value::String(t)) = o.get("text") else {
                    return Err(bad(format!("{name}: `text` must be a string")));
                };
                match o.get("text_pair") {
                    None | Some(Value::Null) => TextInput::single(t.clone()),
                    Some(Value::String(p)) => TextInput::pair(t.clone(), p.clone()),
                    Some(_) => return Err(bad(format!("{name}: `text_pair` must be a string"))),
                }
            }
            _ => return Err(bad(format!("{name} must be a string or {{\"text\", \"text_pair\"}}"))),
        };
        for part in std::iter::once(&input.text).chain(input.pair.as_ref()) {
            let chars = part.chars().count();
            if chars > max_chars {
                return Err((413, format!("{name} has {chars} characters; the limit is {max_chars}")));
            }
        }
        if input.text.trim().is_empty() || input.pair.as_ref().is_some_and(|p| p.trim().is_empty()) {
            return Err((422, format!("{name} is empty")));
        }
        inputs.push(input);
    }
    Ok(inputs)
}

fn score(s: &Shared, body: &[u8]) -> Result<Value, (u16, String)> {
    let inputs = parse_score_request(body, s.config.max_texts, s.config.max_text_chars)?;
    let rx = s.batcher.submit(inputs).map_err(|r| match r {
        Refused::Overloaded => (503, "overloaded: the queue is full; retry later".to_string()),
        Refused::Closed => (503, "the server is shutting down".to_string()),
    })?;
    let scores = match rx.recv() {
        Ok(Ok(sc)) => sc,
        Ok(Err(e)) => return Err((500, format!("scoring failed: {e}"))),
        Err(_) => return Err((500, "the scorer stopped".to_string())),
    };
    let labels = &s.config.labels;
    let predictions: Vec<Value> = scores
        .into_iter()
        .map(|p| {
            json!({
                "label": labels.get(p.label).cloned().unwrap_or_else(|| p.label.to_string()),
                "label_id": p.label,
                "probs": p.probs,
                "beta": p.beta,
                "truncated": p.truncated,
            })
        })
        .collect();
    Ok(json!({ "predictions": predictions }))
}
