//! Verifiers for kaizen-backup.
