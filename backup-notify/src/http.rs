//! HTTP delivery shared by Slack, webhooks and the Pushgateway: connect, request and
//! idle timeouts, retries with backoff on 5xx/429/timeouts/connection errors, a deadline
//! on the whole delivery, and errors that never show the URL's path or query (they often
//! carry tokens).

use backup_core::{Error, Result};

use crate::Timeouts;

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

/// A client with connect, per-request and idle (read) timeouts.
pub fn client(t: &Timeouts) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(t.request)
        .read_timeout(t.request)
        .connect_timeout(t.connect)
        .user_agent(concat!("kaizen-backup/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::other(format!("cannot build the HTTP client: {e}")))
}

/// Send with retries, all within `t.deadline`. `make` builds a fresh request for each
/// attempt; the client's per-attempt timeout (`t.request`) is named in the message when
/// an attempt times out. 5xx, 429, timeouts and connection errors are retried; other 4xx
/// answers are not (the request itself is wrong, repeating it cannot help).
pub async fn send_with_retries(
    notifier: &str,
    url: &str,
    retries: u32,
    t: &Timeouts,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<()> {
    let target = redact(url);
    let mut last = String::new();
    let mut attempts = 0;
    let tries = async {
        attempt_all(
            &target,
            notifier,
            retries,
            t,
            &mut last,
            &mut attempts,
            make,
        )
        .await
    };
    match tokio::time::timeout(t.deadline, tries).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => Err(Error::Notify {
            notifier: notifier.to_string(),
            message: format!("{last} (after {attempts} attempt(s))"),
        }),
        Err(_) => Err(Error::Notify {
            notifier: notifier.to_string(),
            message: format!(
                "{target}: no answer within the delivery deadline of {}s (deadline_secs; {attempts} attempt(s){})",
                t.deadline.as_secs(),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(", last: {last}")
                }
            ),
        }),
    }
}

async fn attempt_all(
    target: &str,
    notifier: &str,
    retries: u32,
    t: &Timeouts,
    last: &mut String,
    attempts: &mut u32,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> std::result::Result<(), ()> {
    let timeout = t.request;
    for attempt in 0..=retries {
        *attempts = attempt + 1;
        if attempt > 0 {
            tokio::time::sleep(crate::backoff(attempt)).await;
        }
        match make().send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                *last = format!("{target} answered HTTP {status}");
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
                    *last = format!("{target}: invalid request");
                    break;
                } else {
                    "request failed".to_string()
                };
                *last = format!("{target}: {kind}");
            }
        }
        tracing::debug!("{notifier}: attempt {} failed: {last}", attempt + 1);
    }
    Err(())
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
