//! HTTP delivery shared by Slack, webhooks and the Pushgateway: timeouts, retries with
//! backoff on 5xx/429/timeouts/connection errors, and errors that never show the URL's
//! path or query (they often carry tokens).

use std::time::Duration;

use backup_core::{Error, Result};

/// `scheme://host[:port]`, the only part of a URL that appears in messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// A client with a per-request timeout.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("kaizen-backup/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::other(format!("cannot build the HTTP client: {e}")))
}

/// Send with retries. `make` builds a fresh request for each attempt; `timeout` is the
/// client's per-attempt timeout, named in the message when an attempt times out.
/// 5xx, 429, timeouts and connection errors are retried; other 4xx answers are not
/// (the request itself is wrong, repeating it cannot help).
pub async fn send_with_retries(
    notifier: &str,
    url: &str,
    retries: u32,
    timeout: Duration,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<()> {
    let target = redact(url);
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(crate::backoff(attempt)).await;
        }
        match make().send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                last = format!("{target} answered HTTP {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    break;
                }
            }
            Err(e) => {
                // Never print reqwest's error with its URL: describe the kind only.
                let kind = if e.is_timeout() {
                    format!("no answer within {}s (timed out)", timeout.as_secs())
                } else if e.is_connect() {
                    "connection failed".to_string()
                } else if e.is_builder() {
                    // Not transient: a bad header or URL stays bad.
                    last = format!("{target}: invalid request");
                    break;
                } else {
                    "request failed".to_string()
                };
                last = format!("{target}: {kind}");
            }
        }
        tracing::debug!("{notifier}: attempt {} failed: {last}", attempt + 1);
    }
    Err(Error::Notify {
        notifier: notifier.to_string(),
        message: format!("{last} (after {} attempt(s))", retries + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            redact("http://127.0.0.1:9000/x?token=abc"),
            "http://127.0.0.1:9000"
        );
    }
}
