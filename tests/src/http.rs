//! HTTP for the tests: the recording server that stands in for Slack and webhooks
//! (`kaizen-test-http`, shared with the notifier tests) and a minimal client for the
//! test services.

use std::io::{Read, Write};
use std::time::Duration;

pub use kaizen_test_http::{Recorder, Reply, Request};

/// A plain HTTP/1.1 request to `http://HOST:PORT/PATH` (no TLS); returns (status, body).
/// Handles Content-Length and chunked bodies, enough for the local test servers.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, _, body) = exchange(method, url, headers, body);
    (status, body)
}

/// [`request`], also returning the response's header lines (lowercased `name: value`).
pub fn exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<String>, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("only http:// URLs: {url}"));
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = std::net::TcpStream::connect(hostport).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of HTTP headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("no HTTP status");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &payload[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest = &rest[i + 2 + size + 2..];
        }
        payload = out;
    }
    let lines = head
        .lines()
        .skip(1)
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}: {}", k.trim().to_ascii_lowercase(), v.trim()),
            None => l.to_string(),
        })
        .collect();
    (status, lines, String::from_utf8_lossy(&payload).to_string())
}

/// `GET url`; returns (status, body).
pub fn get(url: &str) -> (u16, String) {
    request("GET", url, &[], b"")
}
