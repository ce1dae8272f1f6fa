//! The backup manifest (`NAME.manifest.json`): field names are a contract.
//!
//! Values with a closed set of meanings (`format`, `compression`, `encryption`, `kind`)
//! are enums written as the same lower-case words manifests have always held. A value
//! this version does not know (written by a newer kaizen-backup) is refused with a
//! message naming the field and the value, never guessed at.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Current manifest format version.
pub const FORMAT_VERSION: u32 = 1;

/// Suffix of manifest objects.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of verification records.
pub const VERIFY_SUFFIX: &str = ".verify.json";

/// An enum stored as one of a fixed set of words: `Serialize`, `Deserialize` (an unknown
/// word is an error that names the field and the word), `Display` and `as_str`.
macro_rules! word_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($field:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The word written in manifests (and configuration).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $word, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| unknown_value($field, s, Self::ALL.iter().map(|v| v.as_str())))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let word = String::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The message for a word an enum does not know.
fn unknown_value<'a>(field: &str, value: &str, known: impl Iterator<Item = &'a str>) -> String {
    format!(
        "`{field}` is {value:?}, which this version of kaizen-backup does not know (it knows {})",
        known.collect::<Vec<_>>().join(", ")
    )
}

word_enum! {
    /// How pg_dump wrote the archive (`format`).
    pub enum Format ("format") {
        /// One custom-format archive (`pg_dump -Fc`).
        Custom = "custom",
        /// A directory-format dump (`pg_dump -Fd`, parallel), stored as one tar archive.
        Directory = "directory",
        /// A physical base backup: the tar archive `pg_basebackup -Ft` writes.
        Tar = "tar",
    }
}

word_enum! {
    /// Compression of the stored stream (`compression`); the level is recorded beside it.
    pub enum Compression ("compression") {
        /// pg_dump's own gzip, inside the archive (the stream itself is not compressed).
        Gzip = "gzip",
        /// The stream is zstd-compressed by kaizen-backup.
        Zstd = "zstd",
        /// Not compressed.
        None = "none",
    }
}

word_enum! {
    /// Encryption at rest of the stored stream (`encryption`), also the `[encryption]`
    /// `type` of the configuration.
    #[derive(Default)]
    pub enum Encryption ("encryption") {
        /// Stored as written.
        #[default]
        None = "none",
        /// age: X25519 recipients or a passphrase (scrypt).
        Age = "age",
    }
}

word_enum! {
    /// What a backup holds and why it was taken (`kind`).
    ///
    /// The words are those manifests have always held: a logical backup is `"backup"`,
    /// and the copy restore takes of a database it is about to replace is `"safety"` (also
    /// logical). Code that can only handle logical backups says so for the others with
    /// [`Kind::ensure_logical`].
    #[derive(Default)]
    pub enum Kind ("kind") {
        /// A logical backup of one database (`pg_dump`); manifests without `kind` are these.
        #[default]
        Logical = "backup",
        /// A logical backup taken by restore just before it replaced a database.
        Safety = "safety",
        /// A physical backup of the whole cluster (base backup plus WAL).
        Physical = "physical",
    }
}

impl Encryption {
    /// Whether the stored stream is encrypted.
    pub fn is_encrypted(self) -> bool {
        self != Self::None
    }
}

impl Kind {
    /// Whether this is a `pg_dump` backup of one database.
    pub fn is_logical(self) -> bool {
        match self {
            Self::Logical | Self::Safety => true,
            Self::Physical => false,
        }
    }

    /// Refuse what is not a logical backup, for code that runs `pg_dump`/`pg_restore`
    /// or reads an archive's table of contents; `what` names it (e.g. `backup "x"`).
    pub fn ensure_logical(self, what: &str) -> Result<()> {
        match self {
            Self::Logical | Self::Safety => Ok(()),
            Self::Physical => Err(Error::usage(format!(
                "{what} is a physical backup: physical backups are not supported by this command"
            ))),
        }
    }
}

/// One table and its exact row count at the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Exact row count (`count(*)` in the dump's snapshot).
    pub rows: i64,
    /// On-disk size in bytes (`pg_total_relation_size`: table, indexes, TOAST; a
    /// partitioned table's is its partitions' sum), taken beside the count. Absent in
    /// manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}

/// How a logical backup's row counts (`tables`) were taken. Both are exact counts of
/// the dump's snapshot; they differ in what they prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCountSource {
    /// `count(*)` of every table in the snapshot pg_dump dumped, beside the dump: a
    /// restore that matches holds what the database held.
    Snapshot,
    /// The rows of each table's COPY data counted in the archive as it streamed past
    /// (uncompressed data blocks: the zstd and none modes); a table without data in the
    /// archive counts 0. A restore that matches holds what was dumped, at no extra scan
    /// of the database.
    Dump,
}

/// Object counts of the database at the dump's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCounts {
    /// Tables (ordinary and partitioned) in user schemas.
    pub tables: i64,
    /// Sequences.
    pub sequences: i64,
    /// Indexes on user tables.
    pub indexes: i64,
    /// Constraints (check, foreign key, primary key, unique, exclusion).
    pub constraints: i64,
}

/// Everything recorded about one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// Backup name.
    pub name: String,
    /// Key of the data object, relative to the storage root.
    pub object: String,
    /// Database that was dumped.
    pub database: String,
    /// Server version string (`server_version`).
    pub server_version: String,
    /// `pg_dump --version` output.
    pub pg_dump_version: String,
    /// pg_dump archive format.
    pub format: Format,
    /// Compression of the stored stream.
    pub compression: Compression,
    /// Compression level (`null` for `none`).
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Encryption of the stored stream.
    pub encryption: Encryption,
    /// Public recipients (age), never secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// When the dump started.
    pub started_at: DateTime<Utc>,
    /// When the data object was committed.
    pub finished_at: DateTime<Utc>,
    /// Stored size in bytes.
    pub size_bytes: u64,
    /// SHA-256 (hex) of the stored bytes.
    pub sha256: String,
    /// kaizen-backup version.
    pub tool_version: String,
    /// Pinned backups are never removed by retention.
    #[serde(default)]
    pub pinned: bool,
    /// `pg_database_size` at dump time.
    pub database_size_bytes: i64,
    /// Database encoding, used when creating restore targets.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Database collation.
    #[serde(default)]
    pub lc_collate: Option<String>,
    /// Database ctype.
    #[serde(default)]
    pub lc_ctype: Option<String>,
    /// Locale provider when not libc (`icu`, `builtin`), with its locale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale_provider: Option<String>,
    /// The ICU or builtin locale (with `locale_provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Tables with exact row counts at the dump's snapshot.
    pub tables: Vec<TableCount>,
    /// Object counts at the dump's snapshot.
    pub counts: ObjectCounts,
    /// How the rows in `tables` were counted; absent in manifests written before this
    /// field existed, which counted in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_count_source: Option<RowCountSource>,
    /// Host that took the backup.
    #[serde(default)]
    pub host: Option<String>,
    /// What the backup is. `None` (no `kind` in the JSON, as in some hand-made
    /// manifests) means a logical backup; it is kept as read so that rewriting a manifest
    /// (pinning) changes nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Physical backups: where their WAL starts and ends, and the cluster they belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalInfo>,
    /// Every sequence's value when the dump ran (see [`SequenceValue`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceValue>,
    /// Logical backups: the roles the database needs from its cluster, stored beside the
    /// data (see [`crate::pg::roles`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<RolesInfo>,
    /// The signature of the backup host's key over everything else but `pinned` (see
    /// [`crate::signing`]); absent when no signing key is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::ManifestSignature>,
}

/// A sequence's value when the dump ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`.
    pub is_called: bool,
    /// The extension that owns it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// Whether pg_dump carries its value (false: an extension member that is not
    /// extension configuration, which restore sets itself).
    pub dumped: bool,
}

/// The roles object of a logical backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolesInfo {
    /// Its key, `NAME.roles.json[.age]` (encrypted like the data).
    pub object: String,
    /// SHA-256 (hex) of the stored bytes.
    pub sha256: String,
    /// Stored size.
    pub size_bytes: u64,
    /// Roles recorded.
    pub count: usize,
    /// Whether their password verifiers are included (the backup role could read
    /// `pg_authid`); without them, created roles have no password.
    pub passwords: bool,
}

/// What a physical backup records beside the common fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalInfo {
    /// Timeline the backup was taken on.
    pub timeline: u32,
    /// WAL position where the backup starts (recovery begins here).
    pub start_lsn: crate::wal::Lsn,
    /// WAL position where it is consistent (the earliest recovery target).
    pub end_lsn: crate::wal::Lsn,
    /// The cluster's system identifier (`pg_control_system()`): WAL of another cluster
    /// never applies.
    pub system_identifier: String,
    /// The cluster's `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
}

impl Manifest {
    /// Manifest key for a backup name.
    pub fn key_for(name: &str) -> String {
        format!("{name}{MANIFEST_SUFFIX}")
    }

    /// Verify-record key for a backup name.
    pub fn verify_key_for(name: &str) -> String {
        format!("{name}{VERIFY_SUFFIX}")
    }

    /// Serialize (pretty JSON).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::other(format!("cannot serialize manifest: {e}")))
    }

    /// Refuse a backup that is not logical (see [`Kind::ensure_logical`]).
    pub fn ensure_logical(&self) -> Result<()> {
        self.kind
            .unwrap_or_default()
            .ensure_logical(&format!("backup {:?}", self.name))
    }

    /// Whether this is a physical (base) backup.
    pub fn is_physical(&self) -> bool {
        self.kind == Some(Kind::Physical)
    }

    /// Whether kaizen-backup compressed or encrypted the stored stream itself, so that it
    /// must be decoded (see [`crate::codec::decoder_for`]) before pg_restore can read it.
    pub fn is_encoded(&self) -> bool {
        self.compression == Compression::Zstd || self.encryption.is_encrypted()
    }

    /// Refuse a manifest that does not name its own objects: stored as
    /// `NAME.manifest.json`, it must say `name: NAME`, its data object must be
    /// `NAME.dump`, `NAME.tar` or `NAME.base.tar` (physical), with `.zst`, `.age` as its
    /// codecs say, and its roles object `NAME.roles.json[.age]`. A manifest pointing at another backup's objects
    /// (a copy, or a forgery) is refused whatever the keys.
    pub fn check_names(&self, name: &str) -> Result<()> {
        let refuse = |what: &str, found: &str| {
            Err(Error::Refused(format!(
                "manifest {}: {what} is {found:?}, which is not an object of backup {name:?} (a manifest names only its own objects): refusing to read it (nothing was touched)",
                Self::key_for(name)
            )))
        };
        if self.name != name {
            return refuse("`name`", &self.name);
        }
        let own_data = self
            .object
            .strip_prefix(name)
            .and_then(|rest| {
                [".dump", ".tar", ".base.tar"]
                    .iter()
                    .find_map(|suffix| rest.strip_prefix(suffix))
            })
            .map(|rest| rest.strip_prefix(".zst").unwrap_or(rest))
            .map(|rest| rest.strip_prefix(".age").unwrap_or(rest))
            .is_some_and(str::is_empty);
        if !own_data {
            return refuse("`object`", &self.object);
        }
        if let Some(r) = &self.roles {
            let plain = format!("{name}.roles.json");
            if r.object != plain && r.object != format!("{plain}.age") {
                return refuse("`roles.object`", &r.object);
            }
        }
        Ok(())
    }

    /// Parse and check the format version.
    pub fn from_json(data: &[u8]) -> Result<Self> {
        // The version first: a newer manifest may hold fields and values this one lacks.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        if let Ok(v) = serde_json::from_slice::<Version>(data) {
            check_version(v.format_version)?;
        }
        let m: Manifest = serde_json::from_slice(data).map_err(|e| {
            Error::Corrupt(match e.classify() {
                // Well-formed JSON with a missing field, a wrong type or an unknown value.
                serde_json::error::Category::Data => format!("manifest cannot be read: {e}"),
                _ => format!("manifest is not valid JSON: {e}"),
            })
        })?;
        check_version(m.format_version)?;
        Ok(m)
    }
}

fn check_version(format_version: u32) -> Result<()> {
    if format_version > FORMAT_VERSION {
        return Err(Error::Corrupt(format!(
            "manifest format_version {format_version} is newer than this kaizen-backup understands ({FORMAT_VERSION}); upgrade kaizen-backup"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Manifests as kaizen-backup 0.1 wrote them (before these fields were enums).
    const WRITTEN: [&str; 3] = [
        include_str!("../../testdata/manifest-gzip-custom.json"),
        include_str!("../../testdata/manifest-zstd-age-directory-safety.json"),
        include_str!("../../testdata/manifest-none-no-kind.json"),
    ];

    #[test]
    fn written_manifests_round_trip_byte_for_byte() {
        for json in WRITTEN {
            let m = Manifest::from_json(json.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(m.to_json().unwrap()).unwrap(), json);
        }
    }

    #[test]
    fn written_values_read_as_enums() {
        let [gzip, zstd, none] = WRITTEN.map(|j| Manifest::from_json(j.as_bytes()).unwrap());
        assert_eq!(
            (gzip.format, gzip.compression, gzip.compression_level),
            (Format::Custom, Compression::Gzip, Some(6))
        );
        assert_eq!(
            (gzip.encryption, gzip.kind),
            (Encryption::None, Some(Kind::Logical))
        );
        assert!(!gzip.is_encoded());
        assert_eq!(
            (zstd.format, zstd.compression, zstd.compression_level),
            (Format::Directory, Compression::Zstd, Some(3))
        );
        assert_eq!(
            (zstd.encryption, zstd.kind),
            (Encryption::Age, Some(Kind::Safety))
        );
        assert!(zstd.is_encoded());
        assert_eq!(
            (none.compression, none.compression_level),
            (Compression::None, None)
        );
        assert_eq!(none.kind, None);
        assert!(none.ensure_logical().is_ok());
    }

    #[test]
    fn every_word_round_trips() {
        fn check<T>(all: &[T])
        where
            T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + fmt::Display,
        {
            for v in all {
                let json = serde_json::to_string(v).unwrap();
                assert_eq!(json, format!("\"{v}\""));
                assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v);
            }
        }
        check(Format::ALL);
        check(Compression::ALL);
        check(Encryption::ALL);
        check(Kind::ALL);
        assert_eq!(
            Kind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["backup", "safety", "physical"]
        );
    }

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(WRITTEN[0]).unwrap();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn unknown_values_name_the_field_and_the_value() {
        for (field, value, known) in [
            ("compression", "lz4", "gzip, zstd, none"),
            ("encryption", "gpg", "none, age"),
            ("format", "cpio", "custom, directory, tar"),
            ("kind", "incremental", "backup, safety, physical"),
        ] {
            let err = Manifest::from_json(&with(field, value.into())).unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!(
                    "manifest cannot be read: `{field}` is \"{value}\", which this version of kaizen-backup does not know (it knows {known})"
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_newer_format_version_is_named_before_unknown_values() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&with("compression", "lz4".into())).unwrap();
        v["format_version"] = 2.into();
        let msg = Manifest::from_json(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("format_version 2 is newer"), "{msg}");
    }

    #[test]
    fn physical_backups_are_refused_where_a_logical_one_is_needed() {
        let m = Manifest::from_json(&with("kind", "physical".into())).unwrap();
        assert_eq!(m.kind, Some(Kind::Physical));
        let err = m.ensure_logical().unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "backup \"backup_20240115_143000\" is a physical backup: physical backups are not supported by this command"
        );
    }

    #[test]
    fn broken_json_is_still_reported_as_such() {
        let msg = Manifest::from_json(b"{\"format_version\": 1,")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("manifest is not valid JSON"), "{msg}");
    }

    #[test]
    fn a_manifest_names_only_its_own_objects() {
        let m = Manifest::from_json(&with("object", "b.dump.zst.age".into())).unwrap();
        let mut m = Manifest {
            name: "b".into(),
            ..m
        };
        assert!(m.check_names("b").is_ok());
        for own in ["b.dump", "b.tar", "b.tar.zst", "b.base.tar.zst.age"] {
            m.object = own.into();
            assert!(m.check_names("b").is_ok(), "{own}");
        }
        for foreign in [
            "a.dump",
            "bb.dump",
            "b.dump.x",
            "b",
            "../b.dump",
            "b.roles.json",
        ] {
            m.object = foreign.into();
            let err = m.check_names("b").unwrap_err();
            assert!(matches!(err, Error::Refused(_)), "{foreign}: {err:?}");
        }
        m.object = "b.dump".into();
        assert!(m.check_names("c").is_err(), "another name");
        m.roles = Some(RolesInfo {
            object: "a.roles.json".into(),
            sha256: String::new(),
            size_bytes: 0,
            count: 0,
            passwords: false,
        });
        assert!(m.check_names("b").is_err(), "another backup's roles");
    }
}
