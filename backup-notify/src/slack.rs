//! Slack incoming webhook with a Block Kit message.

use async_trait::async_trait;
use backup_core::{Event, EventKind, Notifier, Result, Secret};

use crate::Common;
use crate::http::{client, send_with_retries};

/// Posts to a Slack incoming webhook.
pub struct Slack {
    name: String,
    url: Secret,
    events: Vec<EventKind>,
    retries: u32,
    client: reqwest::Client,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack")
            .field("name", &self.name)
            .field("url", &crate::http::redact(self.url.expose()))
            .finish()
    }
}

impl Slack {
    pub fn new(name: String, url: Secret, events: Vec<EventKind>, common: &Common) -> Result<Self> {
        Ok(Self {
            name,
            url,
            events,
            retries: common.retries,
            client: client(common.timeout())?,
        })
    }
}

/// The Block Kit payload for an event.
pub fn message(event: &Event) -> serde_json::Value {
    let icon = if event.kind.is_failure() {
        ":x:"
    } else {
        ":white_check_mark:"
    };
    let title = format!("{icon} {}", event.summary());
    let fields: Vec<serde_json::Value> = crate::describe(event)
        .into_iter()
        .filter(|(k, _)| k != "Error")
        .map(|(k, v)| serde_json::json!({ "type": "mrkdwn", "text": format!("*{k}*\n{v}") }))
        .collect();
    let mut blocks = vec![
        serde_json::json!({ "type": "header", "text": { "type": "plain_text", "text": title } }),
        serde_json::json!({ "type": "section", "fields": fields }),
    ];
    if let Some(e) = &event.error {
        blocks.push(serde_json::json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("*Error*\n```{e}```") }
        }));
    }
    blocks.push(serde_json::json!({
        "type": "context",
        "elements": [{ "type": "mrkdwn", "text": format!("kaizen-backup · `{}`", event.kind) }]
    }));
    serde_json::json!({ "text": title, "blocks": blocks })
}

#[async_trait]
impl Notifier for Slack {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    async fn notify(&self, event: &Event) -> Result<()> {
        let body = message(event);
        send_with_retries(&self.name, self.url.expose(), self.retries, || {
            self.client.post(self.url.expose()).json(&body)
        })
        .await
    }
}
