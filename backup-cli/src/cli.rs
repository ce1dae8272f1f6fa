//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// PostgreSQL backup and recovery for Kaizen Studio.
#[derive(Debug, Parser)]
#[command(name = "kaizen-backup", version = crate::VERSION.as_str(), about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every command.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Configuration file (default: ./kaizen-backup.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Storage target URL (repeatable; replaces the configured targets), e.g. file:///var/backups/kaizen, s3://bucket/prefix.
    #[arg(long = "storage", global = true, value_name = "URL")]
    pub storage: Vec<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// More output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[2024-01-15 14:30:00] [INFO] message`, like the old scripts.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a backup (default name: backup_YYYYMMDD_HHMMSS, UTC).
    #[command(
        after_help = "Examples:\n  kaizen-backup backup\n  kaizen-backup backup pre_migration_backup --pin\n  POSTGRES_HOST=prod-db.example.com kaizen-backup backup production_backup\n  kaizen-backup backup --jobs 4   # parallel dump of a large database, stored as NAME.tar"
    )]
    Backup(BackupArgs),
    /// List backups, newest first.
    #[command(after_help = "Example:\n  kaizen-backup list --json | jq '.[0].name'")]
    List {
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// What a backup holds: schemas, tables with exact row counts, sequences, views,
    /// functions, extensions (read from the archive itself; no database needed).
    #[command(
        after_help = "Examples:\n  kaizen-backup contents latest\n  kaizen-backup contents backup_20240115_143000 --json | jq '.schemas[].tables[].name'"
    )]
    Contents {
        /// Backup name, `latest`, or a path to a .dump file.
        backup: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Verify a backup: checksum, archive, test restore and exact comparison.
    #[command(
        after_help = "Examples:\n  kaizen-backup verify latest\n  kaizen-backup verify backup_20240115_143000 --quick"
    )]
    Verify {
        /// Backup name, `latest`, or a path to a .dump file.
        backup: String,
        /// Checksum and archive only (no database needed).
        #[arg(long)]
        quick: bool,
        /// Result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a database (created, or replaced atomically).
    #[command(
        after_help = "Examples:\n  kaizen-backup restore latest\n  kaizen-backup restore --pgdata /var/lib/postgresql/15/restored --to-time '2026-01-15 14:30:00+01'\n  kaizen-backup restore backup_20240115_143000 kaizen_studio_restore\n  kaizen-backup restore ./backups/backup_20240115_143000.dump\n  kaizen-backup restore latest kaizen_studio --confirm-production kaizen_studio\n  kaizen-backup restore latest kaizen_studio_copy --jobs 4\n  kaizen-backup restore latest side_db --table public.pipelines --table '\"Sales Data\".\"Audit Log\"'"
    )]
    Restore(RestoreArgs),
    /// Archive one WAL file (`archive_command = 'kaizen-backup wal-push %p'`): exit 0 only
    /// once it is stored on every required target.
    #[command(
        name = "wal-push",
        after_help = "Example (postgresql.conf):\n  archive_command = '/usr/local/bin/kaizen-backup --config /etc/kaizen-backup/config.toml wal-push %p'"
    )]
    WalPush {
        /// The file PostgreSQL names (%p).
        path: std::path::PathBuf,
    },
    /// Fetch one archived WAL file (`restore_command = 'kaizen-backup wal-fetch %f %p'`):
    /// exit 0 with the exact file at DEST, 1 when the archive does not have it.
    #[command(
        name = "wal-fetch",
        after_help = "Example:\n  kaizen-backup wal-fetch 000000010000000000000003 /tmp/000000010000000000000003"
    )]
    WalFetch {
        /// The WAL file name (%f).
        name: String,
        /// Where to write it (%p).
        dest: std::path::PathBuf,
    },
    /// Stream WAL through a physical replication slot into the archive (pg_receivewal),
    /// storing the segment in progress every wal.flush_interval; runs until SIGTERM,
    /// which stores what was received and exits 0.
    #[command(
        name = "wal-receive",
        after_help = "Examples:\n  kaizen-backup wal-receive --create-slot --metrics-listen 0.0.0.0:9187\n  KAIZEN_BACKUP_WAL__FLUSH_INTERVAL=5s kaizen-backup wal-receive --slot kaizen_backup"
    )]
    WalReceive(WalReceiveArgs),
    /// Apply the retention policy.
    #[command(after_help = "Example:\n  kaizen-backup prune --dry-run")]
    Prune {
        /// Show what would be deleted and why each kept backup is kept; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Wait this many seconds for another run's lock (default from config).
        #[arg(long, value_name = "SECS")]
        lock_timeout: Option<u64>,
    },
    /// Pin a backup: retention never deletes it.
    #[command(after_help = "Example:\n  kaizen-backup pin pre_migration_backup")]
    Pin {
        /// Backup name.
        name: String,
    },
    /// Unpin a backup.
    #[command(after_help = "Example:\n  kaizen-backup unpin pre_migration_backup")]
    Unpin {
        /// Backup name.
        name: String,
    },
    /// Newest backup, last archived WAL and recovery window per target, and the server's
    /// WAL archive failures; exit 1 when the backup is older than --max-age or the last
    /// archived WAL older than --max-wal-age.
    #[command(
        after_help = "Examples:\n  kaizen-backup status --max-age 26h\n  kaizen-backup status --max-wal-age 5m"
    )]
    Status {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Maximum age of the newest good backup (e.g. 24h, 90m, 2d).
        #[arg(long, value_name = "AGE")]
        max_age: Option<String>,
        /// Maximum age of the last archived WAL file (e.g. 5m); none archived is stale too.
        #[arg(long, value_name = "AGE")]
        max_wal_age: Option<String>,
    },
    /// Write a self-contained HTML report of every target: newest backups, size and
    /// duration over time, verification outcomes, retention, the recovery window, drills.
    #[command(
        after_help = "Examples:\n  kaizen-backup report --html /var/www/backups/index.html\n  kaizen-backup --storage s3://bucket/backups report --html report.html"
    )]
    Report {
        /// Where to write the page (replaced atomically; inline CSS and SVG, no script).
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
    },
    /// Restore drill: restore to a random point of the recovery window (or --to-time) in a
    /// scratch directory, start it, check it, remove it; records RTO and RPO. Without
    /// physical backups, a test restore of the newest logical one.
    #[command(
        after_help = "Examples:\n  kaizen-backup drill\n  kaizen-backup drill --to-time '2026-01-15 14:30:00+01' --json"
    )]
    Drill {
        /// Recover to this time instead of a random one (YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]).
        #[arg(long, value_name = "TS")]
        to_time: Option<String>,
        /// JSON on stdout (the stored record).
        #[arg(long)]
        json: bool,
    },
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create an age identity for encrypted backups (prints the public recipient), or with
    /// `--signing` an Ed25519 key that signs manifests (prints the public key).
    #[command(
        after_help = "Examples:\n  kaizen-backup keygen --output /secure/kaizen-backup.agekey\n  # put the printed age1... recipient in [encryption] recipients; keep the file off the backup host\n  kaizen-backup keygen --signing --output /secure/kaizen-signing.key\n  # [integrity] signing_key = { file = \"/secure/kaizen-signing.key\" } on the backup host;\n  # the printed ed25519:... key (also in kaizen-signing.key.pub) in [integrity] verify_keys where backups are read"
    )]
    Keygen {
        /// Where to write the key (created 0600; never overwritten). With `--signing`, the
        /// public key goes to FILE.pub as well.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// A manifest signing key (Ed25519) instead of an age identity.
        #[arg(long)]
        signing: bool,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  kaizen-backup completions bash > /etc/bash_completion.d/kaizen-backup"
    )]
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages into a directory (used by `cargo xtask man`).
    #[command(hide = true)]
    Man {
        /// Output directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Backup name (letters, digits, `_`, `-`, `.`).
    pub name: Option<String>,
    /// Verify right after backing up.
    #[arg(long)]
    pub verify: bool,
    /// Pin the backup (retention never deletes it).
    #[arg(long)]
    pub pin: bool,
    /// Do not apply retention after the backup.
    #[arg(long)]
    pub no_prune: bool,
    /// Wait this many seconds for another run's lock (default from config).
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Parallel pg_dump jobs: more than 1 dumps in directory format, staged on local
    /// disk and streamed to storage as one tar archive (default from config).
    #[arg(long, short = 'j', value_name = "N", conflicts_with = "physical")]
    pub jobs: Option<u32>,
    /// A physical base backup of the whole cluster (pg_basebackup) for point-in-time
    /// recovery, instead of a logical dump of one database.
    #[arg(long)]
    pub physical: bool,
}

#[derive(Debug, Args)]
pub struct WalReceiveArgs {
    /// Create the replication slot if it does not exist (and again if the server
    /// invalidated it).
    #[arg(long)]
    pub create_slot: bool,
    /// The physical replication slot (default: wal.slot, `kaizen_backup`).
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,
    /// Serve Prometheus metrics on /metrics and a health check on /healthz at this
    /// address (e.g. 0.0.0.0:9187).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup name, `latest`, or a path to a .dump file. With --pgdata: a physical
    /// backup by name (default: the newest one that ends before the target).
    #[arg(required_unless_present = "pgdata")]
    pub backup: Option<String>,
    /// Database to restore into (default: the configured database).
    #[arg(conflicts_with = "pgdata")]
    pub target_db: Option<String>,
    /// Point-in-time restore: fill this empty or missing data directory from a physical
    /// backup and the WAL archive, ready to start and recover.
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<std::path::PathBuf>,
    /// Recover to this time: `YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]` (UTC without a zone).
    #[arg(
        long,
        value_name = "TS",
        requires = "pgdata",
        group = "recovery_target"
    )]
    pub to_time: Option<String>,
    /// Recover to this WAL position (`0/16B3748`).
    #[arg(
        long,
        value_name = "LSN",
        requires = "pgdata",
        group = "recovery_target"
    )]
    pub to_lsn: Option<String>,
    /// Recover to a restore point made with `pg_create_restore_point`.
    #[arg(
        long,
        value_name = "NAME",
        requires = "pgdata",
        group = "recovery_target"
    )]
    pub to_name: Option<String>,
    /// Recover only to the end of the base backup (the earliest consistent point).
    #[arg(long, requires = "pgdata", group = "recovery_target")]
    pub to_backup_end: bool,
    /// The restored server does not archive WAL (a look at the past that must not add a
    /// timeline to the archive).
    #[arg(long, requires = "pgdata")]
    pub no_archive: bool,
    /// Do not take a safety backup of an existing target first.
    #[arg(long)]
    pub no_safety_backup: bool,
    /// Confirm replacing this production database without a terminal.
    #[arg(long, value_name = "DB")]
    pub confirm_production: Option<String>,
    /// Parallel pg_restore jobs (a custom-format backup is downloaded to a temporary file first).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<u32>,
    /// Wait this many seconds for another run's lock on the target (default from config).
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Only create the roles the backup needs that this server lacks (e.g. before
    /// restoring several databases onto a new server); no database is touched.
    #[arg(long, conflicts_with_all = ["pgdata", "target_db"])]
    pub globals_only: bool,
    /// Restore only this table (repeatable) into TARGET_DB, which must not exist. Names
    /// are exact; quote a part that contains a dot: `--table '"a.b".c'`.
    #[arg(long = "table", value_name = "SCHEMA.TABLE", conflicts_with_all = ["pgdata", "globals_only"])]
    pub tables: Vec<String>,
    /// Restore every table of this schema (repeatable) into TARGET_DB, which must not exist.
    #[arg(long = "schema", value_name = "SCHEMA", conflicts_with_all = ["pgdata", "globals_only"])]
    pub schemas: Vec<String>,
    /// With --table/--schema: also restore the tables they reference by foreign key, so
    /// those keys are kept.
    #[arg(long)]
    pub with_dependencies: bool,
}

impl RestoreArgs {
    /// Whether only some tables are restored (into a new database).
    pub fn is_selective(&self) -> bool {
        !self.tables.is_empty() || !self.schemas.is_empty()
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the merged configuration (secrets as ***) and where each value came from.
    Show {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration; exit 2 naming the first invalid key.
    Check {
        /// Also reach the database, every storage target and every notifier (exit 1 if one fails).
        #[arg(long)]
        connect: bool,
    },
}
