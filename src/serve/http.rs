//! Just enough HTTP/1.1 for a scoring server: one request at a time per connection (keep-alive),
//! `Content-Length` bodies only, every limit enforced while reading.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Limits on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// request line + headers
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    /// from a request's first byte to its last
    pub request_timeout: Duration,
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// the path without the query string
    pub path: String,
    pub body: Vec<u8>,
    /// the client asked to keep the connection open (HTTP/1.1 default)
    pub keep_alive: bool,
}

/// Why no request could be read; each maps to a status (or to closing silently).
#[derive(Debug)]
pub enum ReadError {
    /// the connection closed (or stayed idle past the keep-alive limit) between requests
    Closed,
    /// the client stopped sending mid-request: 408
    Timeout,
    /// headers over the limit: 431; body over the limit: 413
    HeadTooLarge,
    BodyTooLarge {
        limit: usize,
    },
    /// a POST without Content-Length (or a chunked one): 411
    LengthRequired,
    /// not HTTP: 400
    Malformed(String),
    /// the client went away mid-request: nothing to answer
    Disconnected,
}

impl ReadError {
    /// The status and message to answer with, if any.
    pub fn response(&self) -> Option<(u16, String)> {
        Some(match self {
            ReadError::Closed | ReadError::Disconnected => return None,
            ReadError::Timeout => (408, "the request was not received in time".into()),
            ReadError::HeadTooLarge => (431, "request headers too large".into()),
            ReadError::BodyTooLarge { limit } => (413, format!("request body over {limit} bytes")),
            ReadError::LengthRequired => {
                (411, "a request with a body needs Content-Length (chunked bodies are not accepted)".into())
            }
            ReadError::Malformed(m) => (400, m.clone()),
        })
    }
}

/// Fills the reader's buffer, waiting at most until `until`.
fn fill(reader: &mut BufReader<TcpStream>, until: Instant) -> Result<&[u8], ReadError> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        reader.get_ref().set_read_timeout(Some(left)).map_err(|_| ReadError::Disconnected)?;
        match reader.fill_buf() {
            Ok(_) => return Ok(reader.buffer()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                return Err(ReadError::Timeout)
            }
            Err(_) => return Err(ReadError::Disconnected),
        }
    }
}

/// Waits for the first byte of the next request: `Ok(false)` when the client closed, went idle
/// past `idle`, or `stop()` became true.
pub fn wait_for_request(
    reader: &mut BufReader<TcpStream>,
    idle: Duration,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<bool> {
    if !reader.buffer().is_empty() {
        return Ok(true);
    }
    let until = Instant::now() + idle;
    loop {
        if stop() {
            return Ok(false);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        reader.get_ref().set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
        match reader.fill_buf() {
            Ok(b) => return Ok(!b.is_empty()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(false),
        }
    }
}

/// Reads one request (its first byte already arrived: see [`wait_for_request`]).
pub fn read_request(reader: &mut BufReader<TcpStream>, limits: &Limits) -> Result<Request, ReadError> {
    let until = Instant::now() + limits.request_timeout;
    // request line and headers, up to the blank line
    let mut head: Vec<u8> = Vec::new();
    loop {
        let buf = fill(reader, until)?;
        if buf.is_empty() {
            return Err(if head.is_empty() { ReadError::Closed } else { ReadError::Disconnected });
        }
        let take = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => buf.len(),
        };
        head.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if head.len() > limits.max_head_bytes {
            return Err(ReadError::HeadTooLarge);
        }
        if head == b"\r\n" || head == b"\n" {
            head.clear(); // blank lines before a request line are ignored (RFC 9112 §2.2)
        } else if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
    }
    let head =
        std::str::from_utf8(&head).map_err(|_| ReadError::Malformed("request head is not UTF-8".into()))?;
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed(format!(
            "bad request line `{}`",
            first.chars().take(80).collect::<String>()
        )));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed(format!("unsupported protocol `{version}`")));
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut length: Option<usize> = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed("a header line without `:`".into()));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse()
                    .map_err(|_| ReadError::Malformed(format!("bad Content-Length `{value}`")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ReadError::Malformed("conflicting Content-Length headers".into()));
                }
                length = Some(n);
            }
            "transfer-encoding" => return Err(ReadError::LengthRequired),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {}
        }
    }
    let needs_body = matches!(method, "POST" | "PUT" | "PATCH");
    let length = match length {
        Some(n) => n,
        None if needs_body => return Err(ReadError::LengthRequired),
        None => 0,
    };
    if length > limits.max_body_bytes {
        return Err(ReadError::BodyTooLarge { limit: limits.max_body_bytes });
    }
    let mut body = Vec::with_capacity(length);
    while body.len() < length {
        let buf = fill(reader, until)?;
        if buf.is_empty() {
            return Err(ReadError::Disconnected);
        }
        let take = buf.len().min(length - body.len());
        body.extend_from_slice(&buf[..take]);
        reader.consume(take);
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Request { method: method.to_string(), path, body, keep_alive })
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a whole response; `Err` when the client has gone.
pub fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if status == 503 {
        msg += "Retry-After: 1\r\n";
    }
    msg += "\r\n";
    let mut out = Vec::with_capacity(msg.len() + body.len());
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}
