//! Email over SMTP (lettre): STARTTLS, implicit TLS or plain, optional login.

use async_trait::async_trait;
use backup_core::{Error, Event, EventKind, Notifier, Result, Secret};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::{Common, SmtpTls};

/// SMTP settings (from [`crate::NotifierConfig::Email`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Recipient addresses.
    pub recipients: Vec<String>,
    /// SMTP server.
    pub host: String,
    /// Port (default by TLS mode).
    pub port: Option<u16>,
    /// Login.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Sender.
    pub from: Option<String>,
    /// Transport security.
    pub tls: SmtpTls,
}

/// Sends a plain-text email per event.
pub struct Email {
    name: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    events: Vec<EventKind>,
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
            .field("name", &self.name)
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

impl Email {
    /// An email notifier; addresses are checked here (a typo is a configuration error).
    pub fn new(name: String, s: Settings, events: Vec<EventKind>, common: &Common) -> Result<Self> {
        if s.recipients.is_empty() {
            return Err(cfg_err("no recipients".into()));
        }
        let to = s
            .recipients
            .iter()
            .map(|r| {
                r.parse::<Mailbox>()
                    .map_err(|e| cfg_err(format!("invalid recipient {r:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let from_text = s
            .from
            .clone()
            .unwrap_or_else(|| format!("kaizen-backup@{}", backup_core::util::hostname()));
        let from = from_text
            .parse::<Mailbox>()
            .map_err(|e| cfg_err(format!("invalid sender {from_text:?}: {e}")))?;
        let builder = match s.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host),
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &s.host,
            )),
        }
        .map_err(|e| cfg_err(format!("SMTP server {}: {e}", s.host)))?;
        let port = s.port.unwrap_or(match s.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        });
        let mut builder = builder.port(port).timeout(Some(common.timeout()));
        if let (Some(user), Some(pw)) = (&s.user, &s.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_string()));
        }
        Ok(Self {
            name,
            from,
            to,
            events,
            retries: common.retries,
            deadline: common.timeouts().deadline,
            transport: builder.build(),
            server: format!("{}:{port}", s.host),
            password: s.password.filter(|p| !p.is_empty()),
        })
    }

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
pub fn subject(event: &Event) -> String {
    format!("[kaizen-backup] {}", event.summary())
}

/// Plain-text body.
pub fn body(event: &Event) -> String {
    let mut b = format!("{}\n\n", event.summary());
    for (k, v) in crate::describe(event) {
        b.push_str(&format!("{k}: {v}\n"));
    }
    b.push_str(&format!("\nEvent: {}\n", event.kind));
    b
}

#[async_trait]
impl Notifier for Email {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    async fn notify(&self, event: &Event) -> Result<()> {
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
                        tracing::debug!("{}: attempt {attempts} failed: {last}", self.name);
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
            notifier: self.name.clone(),
            message: format!(
                "cannot send mail through SMTP server {}: {why} (after {attempts} attempt(s))",
                self.server
            ),
        })
    }

    /// Connects to the server (and logs in, if configured) without sending anything.
    async fn check(&self) -> Result<()> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Notify {
                notifier: self.name.clone(),
                message: format!("SMTP server {} did not answer NOOP", self.server),
            }),
            Err(e) => Err(Error::Notify {
                notifier: self.name.clone(),
                message: format!("SMTP server {}: {}", self.server, self.describe_error(&e)),
            }),
        }
    }
}
