//! Generic webhook: POST of the versioned JSON event, optionally signed.

use std::collections::BTreeMap;

use backup_core::Secret;
use serde::{Deserialize, Serialize};

use crate::Common;

/// `type = "webhook"`: a POST of the JSON event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfig {
    /// Where to POST (a secret: URLs often carry tokens).
    pub url: Secret,
    /// Shared secret for the `X-Kaizen-Signature: sha256=<hex>` header.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Extra headers (e.g. an authorization token).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Settings every notifier has.
    #[serde(flatten)]
    pub common: Common,
}

#[cfg(feature = "webhook")]
mod delivery {
    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use backup_core::{Error, Event, Result, Secret};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::WebhookConfig;
    use crate::http::{client, send_with_retries};
    use crate::notifiers::Deliver;

    /// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
    const SIGNATURE_HEADER: &str = "X-Kaizen-Signature";
    /// Header carrying the event kind.
    const EVENT_HEADER: &str = "X-Kaizen-Event";

    /// POSTs events as JSON.
    struct Webhook {
        url: Secret,
        secret: Option<Secret>,
        headers: BTreeMap<String, Secret>,
        retries: u32,
        timeouts: crate::Timeouts,
        client: reqwest::Client,
    }

    impl std::fmt::Debug for Webhook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Webhook")
                .field("url", &crate::http::redact(self.url.expose()))
                .finish()
        }
    }

    /// `sha256=<hex>` over `body` with `secret`.
    fn signature(secret: &str, body: &[u8]) -> Result<String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| Error::other(format!("invalid HMAC key: {e}")))?;
        mac.update(body);
        Ok(format!(
            "sha256={}",
            hex::encode(mac.finalize().into_bytes())
        ))
    }

    impl WebhookConfig {
        /// The delivery; the URL and header names/values are checked here so a typo is a
        /// configuration error at start-up, not a failed delivery after a backup.
        pub(crate) fn build(&self, name: &str) -> Result<Box<dyn Deliver>> {
            if url::Url::parse(self.url.expose()).is_err() {
                return Err(Error::Config {
                    key: "notify.url".into(),
                    message: format!("{name}: the webhook URL is not a valid URL"),
                });
            }
            for (k, v) in &self.headers {
                let bad = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(v.expose()).is_err();
                if bad {
                    // The value may be a token: name the header only.
                    return Err(Error::Config {
                        key: "notify.headers".into(),
                        message: format!("{name}: header {k:?} has an invalid name or value"),
                    });
                }
            }
            Ok(Box::new(Webhook {
                url: self.url.clone(),
                secret: self.secret.clone(),
                headers: self.headers.clone(),
                retries: self.common.retries,
                timeouts: self.common.timeouts(),
                client: client(&self.common.timeouts())?,
            }))
        }
    }

    #[async_trait]
    impl Deliver for Webhook {
        async fn deliver(&self, name: &str, event: &Event) -> Result<()> {
            let body = serde_json::to_vec(event)
                .map_err(|e| Error::other(format!("cannot serialize event: {e}")))?;
            let sig = match &self.secret {
                Some(s) => Some(signature(s.expose(), &body)?),
                None => None,
            };
            send_with_retries(name, self.url.expose(), self.retries, &self.timeouts, || {
                let mut req = self
                    .client
                    .post(self.url.expose())
                    .header("Content-Type", "application/json")
                    .header(EVENT_HEADER, event.kind.as_str())
                    .body(body.clone());
                if let Some(sig) = &sig {
                    req = req.header(SIGNATURE_HEADER, sig);
                }
                for (k, v) in &self.headers {
                    req = req.header(k, v.expose());
                }
                req
            })
            .await
        }
    }
}
