//! Notifiers and metrics sinks for kaizen-backup, each behind a Cargo feature.
