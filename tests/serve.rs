//! The scoring server in-process, with a scorer we control (it can hold a batch, fail or panic):
//! dynamic batching, the bounded queue, the connection limit, every kind of bad request, slow and
//! vanishing clients, scorer failures, graceful shutdown, and the load tester against it.
//! (tests/serve_cli.rs runs the real binary on the real model.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use admix::model::tokenizer::TextInput;
use admix::serve::batcher::BatchConfig;
use admix::serve::loadtest::{self, Client};
use admix::serve::metrics::Metrics;
use admix::serve::scorer::{Score, Scored};
use admix::serve::{http, ServeConfig, Server};
use serde_json::{json, Value};

/// A scorer that answers `probs = [chars of the text, 0]`, and can be held, made to fail or panic.
#[derive(Clone, Default)]
struct Fake {
    open: Arc<(Mutex<bool>, Condvar)>,
    /// calls that have started
    entered: Arc<AtomicUsize>,
    /// texts per call
    batches: Arc<Mutex<Vec<usize>>>,
    fail: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
    /// extra time per call
    delay: Duration,
}

impl Fake {
    fn open() -> Self {
        let f = Fake::default();
        f.set_open(true);
        f
    }
    fn set_open(&self, on: bool) {
        *self.open.0.lock().unwrap() = on;
        self.open.1.notify_all();
    }
}

impl Score for Fake {
    fn score(&self, inputs: &[TextInput]) -> anyhow::Result<Vec<Scored>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.0.lock().unwrap();
        while !*open {
            open = self.open.1.wait(open).unwrap();
        }
        drop(open);
        std::thread::sleep(self.delay);
        self.batches.lock().unwrap().push(inputs.len());
        if self.panic.load(Ordering::SeqCst) {
            panic!("the fake scorer panics");
        }
        if self.fail.load(Ordering::SeqCst) {
            anyhow::bail!("boom");
        }
        Ok(inputs
            .iter()
            .map(|i| {
                let n = i.text.chars().count();
                Scored { label: n % 2, probs: vec![n as f32, 0.0], beta: vec![1.0], truncated: false }
            })
            .collect())
    }
}

fn config() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".into(),
        batch: BatchConfig { max_batch: 8, max_wait: Duration::from_millis(1), max_queue: 64 },
        limits: http::Limits {
            max_head_bytes: 4096,
            max_body_bytes: 4096,
            request_timeout: Duration::from_secs(5),
        },
        max_texts: 8,
        max_text_chars: 100,
        max_connections: 32,
        keep_alive: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(10),
        labels: vec!["even".into(), "odd".into()],
        info: json!({"adapters": ["fake"]}),
    }
}

struct Running {
    addr: String,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn start(cfg: ServeConfig, fake: Fake) -> Self {
        let server = Server::bind(cfg, move || Ok(Box::new(fake) as Box<dyn Score>)).unwrap();
        let addr = server.local_addr().to_string();
        let metrics = server.metrics();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || server.run(&|| s.load(Ordering::SeqCst)));
        Running { addr, stop, metrics, thread: Some(thread) }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = Client::new(&self.addr).call(method, path, body.as_bytes()).unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into())),
        )
    }

    fn score(&self, texts: &[&str]) -> (u16, Value) {
        self.call("POST", "/v1/score", &json!({ "texts": texts }).to_string())
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Sends raw bytes, then reads until the server closes or `wait` passes: the response text.
fn raw(addr: &str, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn scores_texts_and_pairs_with_label_names() {
    let srv = Running::start(config(), Fake::open());
    let (status, v) = srv.score(&["abc", "abcd"]);
    assert_eq!(status, 200, "{v}");
    let p = v["predictions"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["probs"][0], 3.0);
    assert_eq!(p[0]["label"], "odd");
    assert_eq!(p[1]["label"], "even");
    assert_eq!(p[1]["label_id"], 0);
    let (status, v) = srv.call("POST", "/v1/score", r#"{"text": {"text": "ab", "text_pair": "cd"}}"#);
    assert_eq!((status, &v["predictions"][0]["probs"][0]), (200, &json!(2.0)));
    let (status, v) = srv.call("GET", "/v1/info", "");
    assert_eq!((status, &v["adapters"][0]), (200, &json!("fake")));
    assert_eq!(srv.call("GET", "/healthz", "").0, 200);
    srv.stop();
}

#[test]
fn concurrent_requests_share_one_batch_and_get_their_own_rows() {
    let mut cfg = config();
    // the batch closes when full, long before the wait runs out
    cfg.batch = BatchConfig { max_batch: 8, max_wait: Duration::from_secs(5), max_queue: 64 };
    let fake = Fake::open();
    let srv = Arc::new(Running::start(cfg, fake.clone()));
    let handles: Vec<_> = (1..=8)
        .map(|i| {
            let srv = srv.clone();
            std::thread::spawn(move || srv.score(&[&"x".repeat(i)]))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, v) = h.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["predictions"][0]["probs"][0], (i + 1) as f64, "request {i} got another's row");
    }
    assert_eq!(*fake.batches.lock().unwrap(), vec![8], "eight single-text requests, one batch");
    let metrics = srv.metrics.render();
    assert!(metrics.contains("admix_batch_size_bucket{le=\"8\"} 1\n"), "{metrics}");
    assert!(metrics.contains("admix_texts_scored_total 8\n"), "{metrics}");
    assert!(metrics.contains("admix_http_responses_total{code=\"200\"} 8\n"), "{metrics}");
}

#[test]
fn a_full_queue_answers_503_at_once_and_keeps_what_it_accepted() {
    let mut cfg = config();
    cfg.batch.max_queue = 4;
    let fake = Fake::default(); // closed: the first batch holds the scorer
    let srv = Arc::new(Running::start(cfg, fake.clone()));
    let first = {
        let srv = srv.clone();
        std::thread::spawn(move || srv.score(&["a"]))
    };
    wait_until("the first batch to start", || fake.entered.load(Ordering::SeqCst) == 1);
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let srv = srv.clone();
            std::thread::spawn(move || srv.score(&["bb", "cc"]))
        })
        .collect();
    wait_until("four queued texts", || srv.metrics.queued_texts.load(Ordering::SeqCst) == 4);
    let (status, v) = srv.score(&["d"]);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("overloaded"), "{v}");
    assert_eq!(fake.entered.load(Ordering::SeqCst), 1, "the refusal did not wait for the scorer");
    fake.set_open(true);
    assert_eq!(first.join().unwrap().0, 200);
    for q in queued {
        let (status, v) = q.join().unwrap();
        assert_eq!((status, v["predictions"].as_array().unwrap().len()), (200, 2));
    }
    assert_eq!(srv.metrics.responses(503), 1);
}

#[test]
fn connections_over_the_limit_get_503() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let srv = Running::start(cfg, Fake::open());
    let idle = TcpStream::connect(&srv.addr).unwrap();
    wait_until("the idle connection to count", || srv.metrics.connections.load(Ordering::SeqCst) == 1);
    let (status, v) = srv.score(&["a"]);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("too many open connections"));
    drop(idle);
    wait_until("the idle connection to close", || srv.metrics.connections.load(Ordering::SeqCst) == 0);
    assert_eq!(srv.score(&["a"]).0, 200);
    srv.stop();
}

#[test]
fn bad_requests_get_a_clear_status_and_message() {
    let srv = Running::start(config(), Fake::open());
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{\"texts\": [\"a\"", 400, "not valid JSON"),
        ("[\"a\"]", 400, "must be a JSON object"),
        ("{\"texts\": \"a\"}", 400, "must be an array"),
        ("{\"txts\": [\"a\"]}", 400, "unknown field `txts`"),
        ("{}", 400, "missing field `texts`"),
        ("{\"texts\": [\"a\"], \"text\": \"b\"}", 400, "not both"),
        ("{\"texts\": [1]}", 400, "texts[0] must be a string"),
        ("{\"texts\": [{\"text\": 1}]}", 400, "`text` must be a string"),
        ("{\"texts\": [{\"text\": \"a\", \"label\": 1}]}", 400, "unknown field `label`"),
        ("{\"texts\": [{\"text\": \"a\", \"text_pair\": 2}]}", 400, "`text_pair` must be a string"),
        ("{\"texts\": []}", 422, "empty"),
        ("{\"texts\": [\"a\", \"  \"]}", 422, "texts[1] is empty"),
        (
            "{\"texts\": [\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}",
            413,
            "9 texts in one request",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, v) = srv.call("POST", "/v1/score", body);
        assert_eq!(status, want, "{body} → {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body} → {v}");
    }
    let long = "é".repeat(101);
    let (status, v) = srv.score(&[&long]);
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("101 characters"), "{v}");
    assert_eq!(srv.call("GET", "/v1/score", "").0, 405);
    assert_eq!(srv.call("POST", "/healthz", "").0, 405);
    assert_eq!(srv.call("GET", "/nowhere", "").0, 404);
    // a body over the byte limit, a huge head, chunked and length-less bodies, garbage
    let big = format!("{{\"texts\": [\"{}\"]}}", "a".repeat(5000));
    assert_eq!(srv.call("POST", "/v1/score", &big).0, 413);
    let w = Duration::from_secs(5);
    let huge_head = format!("GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(5000));
    assert_eq!(status_of(&raw(&srv.addr, huge_head.as_bytes(), w)), 431);
    let chunked = "POST /v1/score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(status_of(&raw(&srv.addr, chunked.as_bytes(), w)), 411);
    assert_eq!(status_of(&raw(&srv.addr, b"POST /v1/score HTTP/1.1\r\n\r\n", w)), 411);
    assert_eq!(status_of(&raw(&srv.addr, b"HELLO\r\n\r\n", w)), 400);
    assert_eq!(status_of(&raw(&srv.addr, b"GET / SPDY/3\r\n\r\n", w)), 400);
    let bad_len = "POST /v1/score HTTP/1.1\r\nContent-Length: ten\r\n\r\n";
    assert_eq!(status_of(&raw(&srv.addr, bad_len.as_bytes(), w)), 400);
    // none of that disturbed the server
    assert_eq!(srv.score(&["ok"]).0, 200);
    srv.stop();
}

#[test]
fn slow_and_vanishing_clients_do_not_disturb_others() {
    let mut cfg = config();
    cfg.limits.request_timeout = Duration::from_millis(300);
    let fake = Fake::open();
    let srv = Arc::new(Running::start(cfg, fake.clone()));
    // a client that stops mid-body gets 408 once its time is up; meanwhile others are served
    let slow = {
        let addr = srv.addr.clone();
        std::thread::spawn(move || {
            raw(
                &addr,
                b"POST /v1/score HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"texts\":",
                Duration::from_secs(10),
            )
        })
    };
    assert_eq!(srv.score(&["fine"]).0, 200);
    let answer = slow.join().unwrap();
    assert_eq!(status_of(&answer), 408, "{answer}");
    // a client that hangs up mid-request gets nothing, and nothing breaks
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.write_all(b"POST /v1/score HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"te").unwrap();
    drop(s);
    // a client that hangs up while its batch runs: the batch still answers the others in it
    fake.set_open(false);
    let mut gone = TcpStream::connect(&srv.addr).unwrap();
    let body = r#"{"texts": ["vanishing"]}"#;
    write!(gone, "POST /v1/score HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    wait_until("the vanishing client's batch to start", || fake.entered.load(Ordering::SeqCst) >= 2);
    drop(gone);
    let other = {
        let srv = srv.clone();
        std::thread::spawn(move || srv.score(&["stays"]))
    };
    wait_until("the other request to queue", || srv.metrics.queued_texts.load(Ordering::SeqCst) == 1);
    fake.set_open(true);
    let (status, v) = other.join().unwrap();
    assert_eq!((status, &v["predictions"][0]["probs"][0]), (200, &json!(5.0)));
    let scored: usize = fake.batches.lock().unwrap().iter().sum();
    assert_eq!(scored, 3, "fine, vanishing and stays were scored");
    assert_eq!(srv.metrics.responses(408), 1);
}

#[test]
fn scorer_errors_and_panics_answer_500_and_the_server_goes_on() {
    let fake = Fake::open();
    let srv = Running::start(config(), fake.clone());
    fake.fail.store(true, Ordering::SeqCst);
    let (status, v) = srv.score(&["a"]);
    assert_eq!(status, 500);
    assert!(v["error"].as_str().unwrap().contains("boom"), "{v}");
    fake.fail.store(false, Ordering::SeqCst);
    fake.panic.store(true, Ordering::SeqCst);
    let (status, v) = srv.score(&["a"]);
    assert_eq!(status, 500);
    assert!(v["error"].as_str().unwrap().contains("panicked"), "{v}");
    fake.panic.store(false, Ordering::SeqCst);
    assert_eq!(srv.score(&["a"]).0, 200);
    srv.stop();
}

#[test]
fn shutdown_finishes_accepted_requests_and_refuses_new_ones() {
    let fake = Fake::default();
    let srv = Running::start(config(), fake.clone());
    let addr = srv.addr.clone();
    let in_flight = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let body = r#"{"texts": ["accepted"]}"#;
            raw(
                &addr,
                format!("POST /v1/score HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                Duration::from_secs(20),
            )
        })
    };
    wait_until("the request to reach the scorer", || fake.entered.load(Ordering::SeqCst) == 1);
    srv.stop.store(true, Ordering::SeqCst);
    wait_until("new connections to be refused", || TcpStream::connect(&addr).is_err());
    let thread = {
        let mut srv = srv;
        srv.thread.take().unwrap()
    };
    assert!(!thread.is_finished(), "the server stopped before answering its request");
    fake.set_open(true);
    let answer = in_flight.join().unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert!(answer.contains("\"probs\":[8.0,0.0]"), "{answer}");
    thread.join().unwrap().unwrap();
}

#[test]
fn load_test_counts_answers_rejections_and_latency() {
    let srv = Running::start(config(), Fake::open());
    let cfg = loadtest::LoadConfig {
        addr: srv.addr.clone(),
        concurrency: vec![1, 4],
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        texts_per_request: 2,
        texts: vec!["one".into(), "three".into()],
        backoff: Duration::from_millis(1),
    };
    let mut seen = 0;
    let levels = loadtest::run(&cfg, |_| seen += 1).unwrap();
    assert_eq!((levels.len(), seen), (2, 2));
    for l in &levels {
        assert!(l.ok > 0 && l.errors == 0 && l.rejected == 0, "{l:?}");
        assert!(l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms && l.p99_ms <= l.max_ms, "{l:?}");
        assert!((l.texts_per_s - 2.0 * l.requests_per_s).abs() < 1e-9);
    }
    let answered: u64 = levels.iter().map(|l| l.ok as u64).sum();
    // the load test's own /healthz call is the one extra 200
    assert_eq!(srv.metrics.responses(200), answered + 1);
    srv.stop();

    // a slow scorer and a queue of one: the load test sees the 503s
    let mut tight = config();
    tight.batch = BatchConfig { max_batch: 1, max_wait: Duration::ZERO, max_queue: 1 };
    let slow = Fake { delay: Duration::from_millis(20), ..Fake::open() };
    let srv = Running::start(tight, slow);
    let levels =
        loadtest::run(&loadtest::LoadConfig { addr: srv.addr.clone(), concurrency: vec![8], ..cfg }, |_| {})
            .unwrap();
    assert!(levels[0].rejected > 0 && levels[0].ok > 0, "{:?}", levels[0]);
    srv.stop();
}
