//! `admix serve` (the scoring server) and `admix loadtest` (its load generator).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use admix::assets;
use admix::classifier;
use admix::serve::batcher::BatchConfig;
use admix::serve::{self, http, loadtest, ServeConfig};
use admix::Choice;

use super::{ClassifierArgs, MaxLen, Runtime};

#[derive(Args)]
pub struct ServeArgs {
    /// The adapters served: one as it is, two or more as the AdpMixup mixture
    #[command(flatten)]
    clf: ClassifierArgs,
    /// Address to listen on (port 0: any free port; the chosen one is printed)
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Most texts per scorer batch
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long the oldest waiting request may wait for others to join its batch (µs)
    #[arg(long, default_value_t = 2000)]
    max_wait_us: u64,
    /// Most texts waiting at once; a request beyond it is answered 503 at once
    #[arg(long, default_value_t = 512)]
    max_queue: usize,
    /// Most texts in one request (413 beyond)
    #[arg(long, default_value_t = 64)]
    max_texts: usize,
    /// Most characters in one text (413 beyond; texts are truncated to --max-len tokens anyway)
    #[arg(long, default_value_t = 20_000)]
    max_text_chars: usize,
    /// Most bytes in a request body (413 beyond)
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Time a client has to send a whole request once it started (408 after), ms
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this, ms
    #[arg(long, default_value_t = 5_000)]
    keep_alive_ms: u64,
    /// Most open connections (503 beyond)
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// On SIGINT/SIGTERM, how long to wait for requests in flight, s
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    #[command(flatten)]
    max_len: MaxLen,
    #[command(flatten)]
    rt: Runtime,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let spec = a.clf.spec(None)?;
    // a zero limit would start a server that refuses or times out every request
    for (flag, v) in [
        ("--max-batch", a.max_batch as u64),
        ("--max-queue", a.max_queue as u64),
        ("--max-texts", a.max_texts as u64),
        ("--max-text-chars", a.max_text_chars as u64),
        ("--max-body-bytes", a.max_body_bytes as u64),
        ("--request-timeout-ms", a.request_timeout_ms),
        ("--keep-alive-ms", a.keep_alive_ms),
        ("--max-connections", a.max_connections as u64),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1 (0 would refuse every request)");
        }
    }
    a.rt.init()?;
    let model_dir = a.rt.model_dir();
    let loaded = classifier::load(&spec, a.rt.model.as_deref(), a.max_len.get())?;
    let labels = loaded.labels.clone();
    let adapters = loaded.names.clone();
    let rule = match loaded.members.len() {
        1 => "one adapter".to_string(),
        _ => loaded.mixing.to_string(),
    };
    let config = ServeConfig {
        addr: a.addr.clone(),
        batch: BatchConfig {
            max_batch: a.max_batch,
            max_wait: Duration::from_micros(a.max_wait_us),
            max_queue: a.max_queue,
        },
        limits: http::Limits {
            max_head_bytes: 16 << 10,
            max_body_bytes: a.max_body_bytes,
            request_timeout: Duration::from_millis(a.request_timeout_ms),
        },
        max_texts: a.max_texts,
        max_text_chars: a.max_text_chars,
        max_connections: a.max_connections,
        keep_alive: Duration::from_millis(a.keep_alive_ms),
        drain_timeout: Duration::from_secs(a.drain_timeout_s),
        labels: labels.clone(),
        info: json!({
            "model": model_dir.display().to_string(),
            "adapters": adapters,
            "labels": labels,
            "mixing": rule,
            "tau": a.clf.tau,
            "device": a.rt.device.name(),
            "precision": a.rt.precision.map(|p| p.name()),
            "max_batch": a.max_batch,
            "max_wait_us": a.max_wait_us,
            "max_texts": a.max_texts,
        }),
    };
    let (device, precision, max_batch) = (a.rt.device, a.rt.precision, a.max_batch);
    let server =
        serve::Server::bind(config, move || serve::scorer::open(device, precision, loaded, max_batch))?;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!(
        "admix serve: listening on http://{} ({} adapter(s), {rule}; device {}; batches of ≤ {} texts, ≤ {} µs wait)",
        server.local_addr(),
        adapters.len(),
        a.rt.device.name(),
        a.max_batch,
        a.max_wait_us
    );
    let metrics = server.metrics();
    server.run(&|| STOP.load(Ordering::SeqCst))?;
    eprintln!(
        "admix serve: stopped after {} text(s) in {} batch(es)",
        metrics.texts_scored.load(Ordering::Relaxed),
        metrics.batches.load(Ordering::Relaxed)
    );
    Ok(())
}

#[derive(Args)]
pub struct LoadtestArgs {
    /// The server's address
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Concurrency levels (clients, each with one keep-alive connection, requests back to back)
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Seconds per level
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Warm-up seconds before each level (not counted)
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Texts in each request
    #[arg(long, default_value_t = 1)]
    texts_per_request: usize,
    /// Texts to send, one per line (default: the MR test split's sentences)
    #[arg(long)]
    texts: Option<PathBuf>,
    /// After a 503, a client waits this long before its next request, ms
    #[arg(long, default_value_t = 50)]
    backoff_ms: u64,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn loadtest(a: LoadtestArgs) -> Result<()> {
    if !(a.duration_s > 0.0 && a.duration_s.is_finite())
        || a.warmup_s.is_nan()
        || a.warmup_s < 0.0
        || a.warmup_s.is_infinite()
    {
        bail!("--duration-s must be positive and --warmup-s not negative");
    }
    let texts: Vec<String> = match &a.texts {
        Some(p) => {
            let s = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let s = String::from_utf8(s).map_err(|_| anyhow::anyhow!("{} is not UTF-8", p.display()))?;
            s.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
        }
        None => admix::data::mr::load(&assets::mr_path())?.test.into_iter().map(|e| e.text).collect(),
    };
    if texts.is_empty() {
        bail!("no texts to send");
    }
    let cfg = loadtest::LoadConfig {
        addr: a.addr.clone(),
        concurrency: a.concurrency.clone(),
        duration: Duration::from_secs_f64(a.duration_s),
        warmup: Duration::from_secs_f64(a.warmup_s),
        texts_per_request: a.texts_per_request,
        texts,
        backoff: Duration::from_millis(a.backoff_ms),
    };
    println!(
        "admix loadtest: {} for {} s per level, {} text(s) per request, {} ms back-off after a 503",
        a.addr, a.duration_s, a.texts_per_request, a.backoff_ms
    );
    println!("| clients | ok | 503 | errors | req/s | texts/s | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let levels = loadtest::run(&cfg, |l| {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            l.concurrency,
            l.ok,
            l.rejected,
            l.errors,
            l.requests_per_s,
            l.texts_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms
        );
    })?;
    if let Some(p) = &a.json {
        let v = json!({"addr": a.addr, "texts_per_request": a.texts_per_request, "duration_s": a.duration_s,
                       "backoff_ms": a.backoff_ms, "levels": levels});
        admix::io::write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}
