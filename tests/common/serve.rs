//! A running `admix serve` for tests: started on a free port, called over HTTP, stopped by SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use admix::serve::loadtest::Client;
use serde_json::{json, Value};

/// A running `admix serve` and its address (read from its first stderr line).
pub struct Serve {
    child: Child,
    addr: String,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Serve {
    pub fn start(model: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_admix"))
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--model", model.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in `{line}`"))
            .to_string();
        Serve { child, addr, stderr }
    }

    pub fn score(&self, texts: &[String]) -> Vec<Value> {
        let body = json!({ "texts": texts }).to_string();
        let (status, body) = Client::new(&self.addr).call("POST", "/v1/score", body.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{v}");
        v["predictions"].as_array().unwrap().clone()
    }

    /// SIGTERM, then the exit status and the rest of stderr.
    pub fn terminate(mut self) -> (bool, String) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        (status.success(), rest)
    }
}
