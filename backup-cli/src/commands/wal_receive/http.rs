//! `/metrics` (Prometheus text format 0.0.4) and `/healthz` of a running receiver, on a
//! small hyper HTTP/1 server that stops accepting when the receiver is cancelled.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backup_core::walreceive::{ReceiverStatus, SharedStatus};
use backup_core::{Error, Result};
use backup_notify::metrics::RECEIVER_METRICS;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

/// The labels every sample carries.
#[derive(Debug, Clone)]
pub struct Labels {
    /// `database.name`.
    pub database: String,
    /// The replication slot.
    pub slot: String,
}

/// Listen on `addr` (an error if it cannot) and answer in the background until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    labels: Labels,
    allowed: Duration,
    cancel: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {addr} (--metrics-listen)"), e))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        "Serving metrics on http://{bound}/metrics and health on http://{bound}/healthz"
    );
    let labels = Arc::new(labels);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::debug!("metrics listener: {e}");
                        continue;
                    }
                },
                _ = cancel.cancelled() => return,
            };
            let (status, labels) = (status.clone(), labels.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let snapshot = status.lock().map(|s| s.clone()).unwrap_or_default();
                    let reply = answer(&req, &snapshot, &labels, allowed, Utc::now());
                    async move { Ok::<_, Infallible>(reply) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn answer<B>(
    req: &Request<B>,
    s: &ReceiverStatus,
    labels: &Labels,
    allowed: Duration,
    now: DateTime<Utc>,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(s, labels, allowed, now),
        ),
        "/healthz" => match s.health(now, allowed) {
            Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("unhealthy: {why}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics or /healthz\n".into(),
        ),
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The receiver's metrics in the Prometheus text format.
pub fn render(
    s: &ReceiverStatus,
    labels: &Labels,
    allowed: Duration,
    now: DateTime<Utc>,
) -> String {
    let ts = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis() as f64 / 1000.0);
    let value = |name: &str| -> Option<f64> {
        match name {
            "kaizen_backup_wal_receive_streaming" => Some(if s.streaming { 1.0 } else { 0.0 }),
            "kaizen_backup_wal_receive_lag_bytes" => s.lag_bytes().map(|b| b as f64),
            "kaizen_backup_wal_receive_lag_seconds" => s.lag_seconds(now),
            "kaizen_backup_wal_receive_archived_lsn" => s.archived_lsn.map(|l| l.0 as f64),
            "kaizen_backup_wal_receive_last_segment_timestamp_seconds" => {
                ts(s.last_segment.as_ref().map(|(_, t)| *t))
            }
            "kaizen_backup_wal_receive_last_upload_timestamp_seconds" => ts(s.last_upload),
            "kaizen_backup_wal_receive_errors_total" => Some(s.errors_total as f64),
            "kaizen_backup_wal_receive_gaps_total" => Some(s.gaps_total as f64),
            "kaizen_backup_wal_receive_healthy" => Some(if s.health(now, allowed).is_ok() {
                1.0
            } else {
                0.0
            }),
            _ => None,
        }
    };
    let label = format!(
        "{{database=\"{}\",slot=\"{}\"}}",
        esc(&labels.database),
        esc(&labels.slot)
    );
    let mut out = String::new();
    for (name, kind, help) in RECEIVER_METRICS {
        if let Some(v) = value(name) {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {v}\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use backup_core::wal::Lsn;

    fn labels() -> Labels {
        Labels {
            database: "postgres".into(),
            slot: "kaizen_backup".into(),
        }
    }

    /// Streaming, 256 bytes behind, last in sync `synced_ago` before `now`.
    fn streaming(now: DateTime<Utc>, synced_ago: i64) -> ReceiverStatus {
        ReceiverStatus {
            streaming: true,
            archived_lsn: Some(Lsn(0x300_0000)),
            server_lsn: Some(Lsn(0x300_0100)),
            synced_at: Some(now - chrono::Duration::seconds(synced_ago)),
            ..Default::default()
        }
    }

    #[test]
    fn metrics_and_health_answer() {
        let now = Utc::now();
        let labels = labels();
        let s = ReceiverStatus {
            errors_total: 3,
            ..streaming(now, 2)
        };
        let allowed = Duration::from_secs(30);
        let text = render(&s, &labels, allowed, now);
        assert!(
            text.contains(
                "kaizen_backup_wal_receive_lag_bytes{database=\"postgres\",slot=\"kaizen_backup\"} 256\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE kaizen_backup_wal_receive_errors_total counter"));
        assert!(text.contains("kaizen_backup_wal_receive_lag_seconds{database=\"postgres\",slot=\"kaizen_backup\"} 2\n"), "{text}");
        assert!(!text.contains("last_segment"), "no sample without a value");

        assert!(text.contains("kaizen_backup_wal_receive_healthy{database=\"postgres\",slot=\"kaizen_backup\"} 1\n"), "{text}");
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let r = answer(&get("/healthz"), &s, &labels, allowed, now);
        assert_eq!(r.status(), StatusCode::OK);
        let stale = ReceiverStatus {
            synced_at: Some(now - chrono::Duration::seconds(120)),
            ..s.clone()
        };
        let r = answer(&get("/healthz"), &stale, &labels, allowed, now);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = answer(&get("/nope"), &s, &labels, allowed, now);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).unwrap();
        let r = answer(&post, &s, &labels, allowed, now);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn every_listed_metric_is_served_once_everything_is_known() {
        let now = Utc::now();
        let s = ReceiverStatus {
            last_segment: Some(("000000010000000000000002".into(), now)),
            last_upload: Some(now),
            ..streaming(now, 0)
        };
        let text = render(&s, &labels(), Duration::from_secs(30), now);
        for (name, _, _) in RECEIVER_METRICS {
            assert!(
                text.contains(&format!("\n{name}{{database=")),
                "{name} missing:\n{text}"
            );
        }
    }
}
