//! The `[[notify]]` notifier types, in one registry.
//!
//! Each type is one file here: its settings (a struct with `#[serde(flatten)] pub
//! common: Common`, always compiled so every configuration parses) and, behind the
//! Cargo feature named like the type, `fn build(&self, name: &str) -> Result<Box<dyn
//! Deliver>>` and its [`Deliver`] implementation. The name, the `on` filter and the
//! [`Notifier`] implementation are shared ([`Configured`]).
//!
//! Adding a notifier: its file, its feature in `Cargo.toml` (and the CLI's), and one
//! line in the [`registry!`] call below.

use async_trait::async_trait;
use backup_core::{Error, Event, EventKind, Notifier, Result};
use serde::{Deserialize, Serialize};

use crate::Common;

/// How one notifier type delivers an event. The name and event filter around it are the
/// same for every type ([`Configured`]).
#[async_trait]
pub(crate) trait Deliver: Send + Sync + std::fmt::Debug {
    /// Deliver one event (with the type's own timeouts and retries); `name` is the
    /// notifier's name for messages.
    async fn deliver(&self, name: &str, event: &Event) -> Result<()>;
    /// Cheap configuration/health check for `config check`.
    async fn check(&self, _name: &str) -> Result<()> {
        Ok(())
    }
}

/// A built notifier: its name in logs, the events it sends, its delivery.
#[derive(Debug)]
struct Configured {
    name: String,
    events: Vec<EventKind>,
    delivery: Box<dyn Deliver>,
}

#[async_trait]
impl Notifier for Configured {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    async fn notify(&self, event: &Event) -> Result<()> {
        self.delivery.deliver(&self.name, event).await
    }

    async fn check(&self) -> Result<()> {
        self.delivery.check(&self.name).await
    }
}

#[cfg_attr(
    all(feature = "slack", feature = "email", feature = "webhook"),
    allow(dead_code)
)]
fn not_compiled(kind: &str) -> Error {
    Error::NotCompiled {
        what: kind.into(),
        feature: kind.into(),
    }
}

/// `Variant(module::Settings) = "type"`: the module (a file here), its settings type,
/// and the name that is both `type = "..."` in `[[notify]]` and the Cargo feature.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($module:ident::$settings:ident) = $kind:literal, )+) => {
        $(
            mod $module;
            pub use $module::$settings;
        )+

        /// One notifier in the configuration (`[[notify]]`), tagged by `type`. Every
        /// variant parses whatever was compiled in; building one needs its feature.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum NotifierConfig {
            $(
                $(#[$doc])*
                #[serde(rename = $kind)]
                $variant($settings),
            )+
        }

        impl NotifierConfig {
            /// The type name (`slack`, `email`, `webhook`, ...).
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $kind,)+
                }
            }

            /// Settings every notifier has.
            pub fn common(&self) -> &Common {
                match self {
                    $(Self::$variant(s) => &s.common,)+
                }
            }

            /// One of each type, with default settings (the shape of the configuration,
            /// for checking its keys).
            pub fn all_types() -> Vec<Self> {
                vec![$(Self::$variant($settings::default()),)+]
            }

            /// The delivery of this notifier, or [`Error::NotCompiled`] without its feature.
            #[cfg_attr(not(any($(feature = $kind),+)), allow(unused_variables))]
            fn delivery(&self, name: &str) -> Result<Box<dyn Deliver>> {
                match self {
                    $(
                        #[cfg(feature = $kind)]
                        Self::$variant(s) => s.build(name),
                        #[cfg(not(feature = $kind))]
                        Self::$variant(_) => Err(not_compiled($kind)),
                    )+
                }
            }
        }

        /// The notifier types compiled into this build.
        const COMPILED: &[&str] = &[$(#[cfg(feature = $kind)] $kind,)+];
    };
}

pub use email::SmtpTls;

registry! {
    /// Slack incoming webhook, Block Kit message.
    Slack(slack::SlackConfig) = "slack",
    /// SMTP (STARTTLS, implicit TLS or none, optional login), plain-text body.
    Email(email::EmailConfig) = "email",
    /// POST of the versioned JSON [`backup_core::Event`], optional HMAC-SHA256 signature.
    Webhook(webhook::WebhookConfig) = "webhook",
}

/// The notifier types compiled into this build (their features).
pub(crate) fn compiled() -> &'static [&'static str] {
    COMPILED
}

/// Build one notifier. A type whose feature is not compiled in fails with
/// [`Error::NotCompiled`] ("slack support is not compiled in (feature `slack`)").
pub fn build(cfg: &NotifierConfig) -> Result<Box<dyn Notifier>> {
    let common = cfg.common();
    let events = common.events()?;
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| cfg.kind().to_string());
    let delivery = cfg.delivery(&name)?;
    Ok(Box::new(Configured {
        name,
        events,
        delivery,
    }))
}

/// Build every configured notifier.
pub fn build_all(cfgs: &[NotifierConfig]) -> Result<Vec<Box<dyn Notifier>>> {
    cfgs.iter().map(build).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_type_is_registered_once_and_parses_back() {
        let all = NotifierConfig::all_types();
        let kinds: Vec<&str> = all.iter().map(NotifierConfig::kind).collect();
        assert_eq!(kinds, ["slack", "email", "webhook"]);
        for cfg in &all {
            let json = serde_json::to_value(cfg).unwrap();
            assert_eq!(json["type"], cfg.kind());
            assert!(
                json.get("retries").is_some(),
                "common settings flattened: {json}"
            );
            let back: NotifierConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back.kind(), cfg.kind());
        }
    }

    #[cfg(all(feature = "slack", feature = "email", feature = "webhook"))]
    #[test]
    fn a_full_build_has_every_type() {
        assert_eq!(compiled(), ["slack", "email", "webhook"]);
    }
}
