//! Slack incoming webhook with a Block Kit message.

use backup_core::Secret;
use serde::{Deserialize, Serialize};

use crate::Common;

/// `type = "slack"`: a Slack incoming webhook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlackConfig {
    /// `https://hooks.slack.com/services/...` (a secret: it grants posting).
    pub webhook_url: Secret,
    /// Settings every notifier has.
    #[serde(flatten)]
    pub common: Common,
}

#[cfg(feature = "slack")]
mod delivery {
    use async_trait::async_trait;
    use backup_core::{Error, Event, Result, Secret};

    use super::SlackConfig;
    use crate::http::{client, send_with_retries};
    use crate::notifiers::Deliver;

    /// Posts to a Slack incoming webhook.
    struct Slack {
        url: Secret,
        retries: u32,
        timeouts: crate::Timeouts,
        client: reqwest::Client,
    }

    impl std::fmt::Debug for Slack {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Slack")
                .field("url", &crate::http::redact(self.url.expose()))
                .finish()
        }
    }

    impl SlackConfig {
        /// The delivery; the URL is checked here (and never printed beyond scheme and host).
        pub(crate) fn build(&self, name: &str) -> Result<Box<dyn Deliver>> {
            if url::Url::parse(self.webhook_url.expose()).is_err() {
                return Err(Error::Config {
                    key: "notify.webhook_url".into(),
                    message: format!("{name}: the Slack webhook URL is not a valid URL"),
                });
            }
            Ok(Box::new(Slack {
                url: self.webhook_url.clone(),
                retries: self.common.retries,
                timeouts: self.common.timeouts(),
                client: client(&self.common.timeouts())?,
            }))
        }
    }

    /// At most `max` characters (Slack refuses blocks with longer texts).
    fn clip(s: &str, max: usize) -> String {
        if s.chars().count() <= max {
            s.to_string()
        } else {
            let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
            t.push('…');
            t
        }
    }

    /// The Block Kit payload for an event: a header with the summary, a section of fields
    /// (database, backup, size, duration, targets, host, time), the error if any, and a context line.
    /// `text` repeats the summary for notifications and clients without Block Kit.
    fn message(event: &Event) -> serde_json::Value {
        let icon = if event.kind.is_failure() {
            ":x:"
        } else {
            ":white_check_mark:"
        };
        // Slack limits: header 150 chars, 10 fields of 2000 chars, section text 3000 chars.
        let title = clip(&format!("{icon} {}", event.summary()), 150);
        let fields: Vec<serde_json::Value> = crate::describe(event)
            .into_iter()
            .filter(|(k, _)| k != "Error")
            .take(10)
            .map(|(k, v)| serde_json::json!({ "type": "mrkdwn", "text": clip(&format!("*{k}*\n{v}"), 2000) }))
            .collect();
        let mut blocks = vec![
            serde_json::json!({ "type": "header", "text": { "type": "plain_text", "text": title } }),
            serde_json::json!({ "type": "section", "fields": fields }),
        ];
        if let Some(e) = &event.error {
            blocks.push(serde_json::json!({
                "type": "section",
                "text": { "type": "mrkdwn", "text": format!("*Error*\n```{}```", clip(e, 2900)) }
            }));
        }
        blocks.push(serde_json::json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("kaizen-backup · `{}`", event.kind) }]
        }));
        serde_json::json!({ "text": title, "blocks": blocks })
    }

    #[async_trait]
    impl Deliver for Slack {
        async fn deliver(&self, name: &str, event: &Event) -> Result<()> {
            let body = message(event);
            send_with_retries(
                name,
                self.url.expose(),
                self.retries,
                &self.timeouts,
                || self.client.post(self.url.expose()).json(&body),
            )
            .await
        }
    }
}
