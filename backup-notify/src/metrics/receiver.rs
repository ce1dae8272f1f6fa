//! The metrics `kaizen-backup wal-receive` serves itself (not written through a sink).

/// What `kaizen-backup wal-receive` serves on `--metrics-listen` (labels `database` and
/// `slot`): name, type, help. Scraped from the receiver, not written by a sink.
pub const RECEIVER_METRICS: &[(&str, &str, &str)] = &[
    (
        "kaizen_backup_wal_receive_streaming",
        "gauge",
        "1 while pg_receivewal streams from the server, 0 while it is being restarted.",
    ),
    (
        "kaizen_backup_wal_receive_lag_bytes",
        "gauge",
        "Bytes of WAL the server has flushed that the archive does not hold yet.",
    ),
    (
        "kaizen_backup_wal_receive_lag_seconds",
        "gauge",
        "Seconds since the archive last held all WAL received (at most the flush interval while healthy).",
    ),
    (
        "kaizen_backup_wal_receive_archived_lsn",
        "gauge",
        "The WAL position (LSN as a number) up to which the archive holds WAL.",
    ),
    (
        "kaizen_backup_wal_receive_last_segment_timestamp_seconds",
        "gauge",
        "Unix time the last complete WAL segment was stored.",
    ),
    (
        "kaizen_backup_wal_receive_last_upload_timestamp_seconds",
        "gauge",
        "Unix time anything (segment, partial segment, history file) was last stored.",
    ),
    (
        "kaizen_backup_wal_receive_errors_total",
        "counter",
        "Errors since the receiver started: failed stores, pg_receivewal exits, failed server checks.",
    ),
    (
        "kaizen_backup_wal_receive_gaps_total",
        "counter",
        "Gaps found since the receiver started: WAL the archive will never hold.",
    ),
    (
        "kaizen_backup_wal_receive_healthy",
        "gauge",
        "1 when /healthz answers 200 (streaming and storing).",
    ),
];
