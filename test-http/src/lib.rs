//! Tests only: a local HTTP server that records every request and answers from a
//! script, standing in for Slack, webhooks and other receivers. It runs on its own
//! threads, so synchronous tests (the end-to-end suite drives the binary) and async
//! ones (the notifier tests) use it alike.
//!
//! ```
//! use kaizen_test_http::{Recorder, Reply};
//!
//! let hook = Recorder::start();
//! hook.script(&[Reply::Status(503), Reply::Hang]); // then 200 for the rest
//! // ... point the code under test at format!("{}/hook", hook.url) ...
//! assert!(hook.requests().is_empty());
//! ```

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path and query, e.g. `/hook?token=abc`.
    pub path: String,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// The body (as long as `Content-Length` said).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (failing the test) when it is not.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

/// How the server answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// This HTTP status (body `ok` below 300, else `error`).
    Status(u16),
    /// Read the request, then never answer (until the client gives up and closes).
    Hang,
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    script: Mutex<VecDeque<Reply>>,
    delay: Mutex<Duration>,
}

/// The server, on a free port of 127.0.0.1. Answers follow the script, then 200.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler thread that panicked leaves consistent data: every change is one step.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    /// Start a server answering 200 to everything.
    pub fn start() -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("cannot listen on 127.0.0.1: {e}"),
        };
        let url = match listener.local_addr() {
            Ok(a) => format!("http://{a}"),
            Err(e) => panic!("no local address: {e}"),
        };
        let rec = Self {
            url,
            shared: Arc::default(),
        };
        let shared = rec.shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || handle(&shared, stream));
            }
        });
        rec
    }

    /// Answer the next requests with `replies`, in order (then 200 again).
    pub fn script(&self, replies: &[Reply]) {
        *lock(&self.shared.script) = replies.iter().copied().collect();
    }

    /// Answer the next requests with these statuses, in order (then 200 again).
    pub fn respond_with(&self, statuses: &[u16]) {
        *lock(&self.shared.script) = statuses.iter().map(|s| Reply::Status(*s)).collect();
    }

    /// Wait this long before each answer.
    pub fn delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Forget the requests received so far.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Wait until at least `n` requests arrived (or `timeout` passed); returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut requests = lock(&self.shared.requests);
        while requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            requests = match self.shared.arrived.wait_timeout(requests, left) {
                Ok((r, _)) => r,
                Err(e) => e.into_inner().0,
            };
        }
        requests.clone()
    }
}

fn handle(shared: &Shared, mut stream: TcpStream) {
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    lock(&shared.requests).push(req);
    shared.arrived.notify_all();
    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let reply = lock(&shared.script)
        .pop_front()
        .unwrap_or(Reply::Status(200));
    match reply {
        Reply::Hang => {
            // Until the client closes: its timeout is what is being tested.
            let mut buf = [0u8; 1024];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
        Reply::Status(code) => {
            let body = if code < 300 { "ok" } else { "error" };
            let _ = write!(
                stream,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn post(url: &str, body: &str) -> TcpStream {
        let addr = url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /hook?x=1 HTTP/1.1\r\nHost: {addr}\r\nX-Kind: Test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s
    }

    fn status(mut s: TcpStream) -> String {
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn records_requests_and_answers_from_the_script() {
        let rec = Recorder::start();
        rec.respond_with(&[500]);
        assert_eq!(status(post(&rec.url, r#"{"a":1}"#)), "HTTP/1.1 500 X");
        assert_eq!(status(post(&rec.url, "{}")), "HTTP/1.1 200 X");
        let reqs = rec.wait_for(2, Duration::from_secs(10));
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/hook?x=1");
        assert_eq!(reqs[0].header("x-kind"), Some("Test"));
        assert_eq!(reqs[0].json()["a"], 1);
    }

    #[test]
    fn a_hanging_reply_ends_when_the_client_gives_up() {
        let rec = Recorder::start();
        rec.script(&[Reply::Hang]);
        let s = post(&rec.url, "{}");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 16];
        let err = (&s).read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        assert_eq!(rec.requests().len(), 1);
        drop(s);
        // The next request gets the default answer.
        assert_eq!(status(post(&rec.url, "{}")), "HTTP/1.1 200 X");
    }
}
