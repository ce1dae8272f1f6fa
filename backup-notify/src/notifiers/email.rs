//! Email over SMTP (lettre): STARTTLS, implicit TLS or plain, optional login.

use backup_core::Secret;
use serde::{Deserialize, Serialize};

use crate::Common;

/// `type = "email"`: a plain-text email per event, over SMTP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailConfig {
    /// Recipients.
    pub recipients: Vec<String>,
    /// SMTP server.
    pub smtp_host: String,
    /// Port (default by TLS mode: 587, 465, 25).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// Login, if the server wants one.
    #[serde(default)]
    pub smtp_user: Option<String>,
    /// Password.
    #[serde(default)]
    pub smtp_password: Option<Secret>,
    /// Sender (default `kaizen-backup@<host>`).
    #[serde(default)]
    pub from: Option<String>,
    /// Transport security.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Settings every notifier has.
    #[serde(flatten)]
    pub common: Common,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587).
    #[default]
    Starttls,
    /// Implicit TLS (465).
    Tls,
    /// No TLS (local relays, test servers).
    None,
}

#[cfg(feature = "email")]
mod delivery {
    use async_trait::async_trait;
    use backup_core::{Error, Event, Result, Secret};
    use lettre::message::{Mailbox, header::ContentType};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    use super::{EmailConfig, SmtpTls};
    use crate::notifiers::Deliver;

    /// Sends a plain-text email per event.
    struct Email {
        from: Mailbox,
        to: Vec<Mailbox>,
        retries: u32,
        /// The whole delivery of one event.
        deadline: std::time::Duration,
        transport: AsyncSmtpTransport<Tokio1Executor>,
        server: String,
        /// Kept only to scrub it from server or library messages before they are shown.
        password: Option<Secret>,
    }

    impl std::fmt::Debug for Email {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Email")
                .field("server", &self.server)
                .finish()
        }
    }

    fn cfg_err(message: String) -> Error {
        Error::Config {
            key: "notify.email".into(),
            message,
        }
    }

    impl EmailConfig {
        /// The delivery; addresses are checked here (a typo is a configuration error).
        pub(crate) fn build(&self, _name: &str) -> Result<Box<dyn Deliver>> {
            if self.recipients.is_empty() {
                return Err(cfg_err("no recipients".into()));
            }
            let to = self
                .recipients
                .iter()
                .map(|r| {
                    r.parse::<Mailbox>()
                        .map_err(|e| cfg_err(format!("invalid recipient {r:?}: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let from_text = self
                .from
                .clone()
                .unwrap_or_else(|| format!("kaizen-backup@{}", backup_core::util::hostname()));
            let from = from_text
                .parse::<Mailbox>()
                .map_err(|e| cfg_err(format!("invalid sender {from_text:?}: {e}")))?;
            let builder = match self.tls {
                SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&self.smtp_host),
                SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&self.smtp_host),
                SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                    &self.smtp_host,
                )),
            }
            .map_err(|e| cfg_err(format!("SMTP server {}: {e}", self.smtp_host)))?;
            let port = self.smtp_port.unwrap_or(match self.tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            });
            let mut builder = builder.port(port).timeout(Some(self.common.timeout()));
            if let (Some(user), Some(pw)) = (&self.smtp_user, &self.smtp_password) {
                builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_string()));
            }
            Ok(Box::new(Email {
                from,
                to,
                retries: self.common.retries,
                deadline: self.common.timeouts().deadline,
                transport: builder.build(),
                server: format!("{}:{port}", self.smtp_host),
                password: self.smtp_password.clone().filter(|p| !p.is_empty()),
            }))
        }
    }

        impl Email {
        /// A lettre error as text, without the password even if a server echoed it.
        fn describe_error(&self, e: &lettre::transport::smtp::Error) -> String {
            let text = e.to_string();
            match &self.password {
                Some(p) => text.replace(p.expose(), "***"),
                None => text,
            }
        }
    }

    /// `[kaizen-backup] FAILED backup of kaizen_studio`
    fn subject(event: &Event) -> String {
        format!("[kaizen-backup] {}", event.summary())
    }

    /// Plain-text body.
    fn body(event: &Event) -> String {
        let mut b = format!("{}\n\n", event.summary());
        for (k, v) in crate::describe(event) {
            b.push_str(&format!("{k}: {v}\n"));
        }
        b.push_str(&format!("\nEvent: {}\n", event.kind));
        b
    }

    #[async_trait]
    impl Deliver for Email {
        async fn deliver(&self, name: &str, event: &Event) -> Result<()> {
            let mut mb = Message::builder()
                .from(self.from.clone())
                .subject(subject(event))
                .header(ContentType::TEXT_PLAIN);
            for to in &self.to {
                mb = mb.to(to.clone());
            }
            let msg = mb
                .body(body(event))
                .map_err(|e| Error::other(format!("cannot build the email: {e}")))?;
            let mut last = String::new();
            let mut attempts = 0;
            // lettre's timeout bounds connecting and each command; this bounds the delivery.
            let tries = async {
                for attempt in 0..=self.retries {
                    if attempt > 0 {
                        tokio::time::sleep(crate::backoff(attempt)).await;
                    }
                    attempts += 1;
                    match self.transport.send(msg.clone()).await {
                        Ok(_) => return true,
                        Err(e) => {
                            last = self.describe_error(&e);
                            // A 5xx answer (bad recipient, refused login) will not change on retry.
                            if e.is_permanent() {
                                break;
                            }
                            tracing::debug!("{name}: attempt {attempts} failed: {last}");
                        }
                    }
                }
                false
            };
            let delivered = tokio::time::timeout(self.deadline, tries).await;
            let why = match delivered {
                Ok(true) => return Ok(()),
                Ok(false) => last,
                Err(_) => format!(
                    "no answer within the delivery deadline of {}s (deadline_secs){}",
                    self.deadline.as_secs(),
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(", last: {last}")
                    }
                ),
            };
            Err(Error::Notify {
                notifier: name.to_string(),
                message: format!(
                    "cannot send mail through SMTP server {}: {why} (after {attempts} attempt(s))",
                    self.server
                ),
            })
        }

        /// Connects to the server (and logs in, if configured) without sending anything.
        async fn check(&self, name: &str) -> Result<()> {
            match self.transport.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::Notify {
                    notifier: name.to_string(),
                    message: format!("SMTP server {} did not answer NOOP", self.server),
                }),
                Err(e) => Err(Error::Notify {
                    notifier: name.to_string(),
                    message: format!("SMTP server {}: {}", self.server, self.describe_error(&e)),
                }),
            }
        }
    }
}
