//! What a storage holds: backups (with a manifest), their verify records, and
//! incomplete leftovers (data without a manifest). Computed from the storage
//! itself, never from local state.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::manifest::{Format, Kind, MANIFEST_SUFFIX, Manifest, VERIFY_SUFFIX};
use crate::storage::{ObjectMeta, Storage, get_bytes, list_all};
use serde::Serialize;

use crate::verify::{CheckResult, VerifyRecord};

/// One complete backup.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    /// Its manifest.
    pub manifest: Manifest,
    /// The latest verification record, if any.
    pub verify: Option<VerifyRecord>,
    /// The data object's metadata (None if the manifest points at a missing object).
    pub data: Option<ObjectMeta>,
}

/// What a backup is worth, as `list`, `status` and `report` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// A full verification (test restore) passed.
    Verified,
    /// Only the quick checks (checksum, archive) ran, and passed.
    VerifiedQuick,
    /// The last verification failed.
    Failed,
    /// Never verified.
    Unverified,
    /// Its manifest names a data object the storage does not hold.
    Incomplete,
}

impl BackupState {
    /// The word shown to people: `verified`, `verified (quick)`, `FAILED`, `unverified`,
    /// `incomplete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::VerifiedQuick => "verified (quick)",
            Self::Failed => "FAILED",
            Self::Unverified => "unverified",
            Self::Incomplete => "incomplete",
        }
    }
}

impl std::fmt::Display for BackupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BackupEntry {
    /// Its state: the data is missing (incomplete), else what its last verification said.
    pub fn state(&self) -> BackupState {
        if self.data.is_none() {
            return BackupState::Incomplete;
        }
        match &self.verify {
            Some(v) if v.passed && v.quick => BackupState::VerifiedQuick,
            Some(v) if v.passed => BackupState::Verified,
            Some(_) => BackupState::Failed,
            None => BackupState::Unverified,
        }
    }

    /// The first check that failed in its last verification.
    pub fn failed_check(&self) -> Option<&CheckResult> {
        self.verify
            .as_ref()
            .and_then(|v| v.checks.iter().find(|c| !c.passed))
    }

    /// How long the backup took (from the dump's start to the data object's commit).
    pub fn duration(&self) -> chrono::Duration {
        (self.manifest.finished_at - self.manifest.started_at).max(chrono::Duration::zero())
    }

    /// `verified`, `FAILED`, or `unverified`.
    pub fn verify_state(&self) -> &'static str {
        match &self.verify {
            Some(v) if v.passed && v.quick => "verified (quick)",
            Some(v) if v.passed => "verified",
            Some(_) => "FAILED",
            None => "unverified",
        }
    }
}

/// Everything found in one storage.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Complete backups, newest first.
    pub backups: Vec<BackupEntry>,
    /// Objects that belong to no complete backup (killed runs, in-progress writes).
    pub incomplete: Vec<ObjectMeta>,
    /// Manifests that could not be read, with the reason.
    pub unreadable: Vec<(String, String)>,
}

impl Catalog {
    /// The newest logical backup of `database` (not a safety copy), if any: what
    /// `restore latest` and `verify latest` mean. Physical backups are chosen by
    /// point-in-time restore itself.
    pub fn latest(&self, database: Option<&str>) -> Option<&BackupEntry> {
        self.backups.iter().find(|b| {
            let regular = match b.manifest.kind.unwrap_or_default() {
                Kind::Logical => true,
                Kind::Safety | Kind::Physical => false,
            };
            regular && database.is_none_or(|d| b.manifest.database == d)
        })
    }

    /// A backup by name.
    pub fn get(&self, name: &str) -> Option<&BackupEntry> {
        self.backups.iter().find(|b| b.manifest.name == name)
    }
}

fn is_meta_key(key: &str) -> bool {
    key.ends_with(MANIFEST_SUFFIX)
        || key.ends_with(VERIFY_SUFFIX)
        || key.ends_with(".lock")
        || key.ends_with(".flock")
        || key.ends_with(crate::lease::LEASE_SUFFIX)
        || key.ends_with(crate::drill::DRILL_SUFFIX)
}

/// Read the catalog of a storage.
pub async fn scan(storage: &dyn Storage) -> Result<Catalog> {
    let objects = list_all(storage, "").await?;
    let by_key: HashMap<&str, &ObjectMeta> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut cat = Catalog::default();
    let mut owned: HashSet<String> = HashSet::new();
    for o in &objects {
        let Some(name) = o.key.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        let manifest = match get_bytes(storage, &o.key)
            .await
            .and_then(|b| Manifest::from_json(&b))
        {
            Ok(m) => m,
            Err(Error::NotFound(_)) => continue, // deleted while we listed
            Err(e) => {
                cat.unreadable.push((o.key.clone(), e.to_string()));
                continue;
            }
        };
        let verify_key = Manifest::verify_key_for(name);
        let verify = if by_key.contains_key(verify_key.as_str()) {
            get_bytes(storage, &verify_key)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<VerifyRecord>(&b).ok())
        } else {
            None
        };
        owned.insert(manifest.object.clone());
        if let Some(r) = &manifest.roles {
            owned.insert(r.object.clone());
        }
        let data = by_key.get(manifest.object.as_str()).map(|m| (*m).clone());
        cat.backups.push(BackupEntry {
            manifest,
            verify,
            data,
        });
    }
    cat.backups.sort_by(|a, b| {
        b.manifest
            .finished_at
            .cmp(&a.manifest.finished_at)
            .then_with(|| b.manifest.name.cmp(&a.manifest.name))
    });
    cat.incomplete = objects
        .iter()
        .filter(|o| !is_meta_key(&o.key) && !owned.contains(&o.key))
        .cloned()
        .collect();
    Ok(cat)
}

/// A backup chosen by the user, ready to be read.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Backup name (file stem for bare files).
    pub name: String,
    /// Where the data object lives.
    pub storage: Arc<dyn Storage>,
    /// Key of the data object.
    pub data_key: String,
    /// The manifest, unless this is a bare file.
    pub manifest: Option<Manifest>,
}

impl Resolved {
    /// Whether this backup is a directory-format dump carried as a tar archive.
    pub fn is_directory(&self) -> bool {
        is_directory(self.manifest.as_ref(), &self.data_key)
    }

    /// Refuse a backup that is not logical, for code that assumes a pg_dump archive
    /// (bare files are pg_dump archives).
    pub fn ensure_logical(&self) -> Result<()> {
        match &self.manifest {
            Some(m) => m.ensure_logical(),
            None => Ok(()),
        }
    }
}

/// Whether a backup is a directory-format dump carried as a tar archive: its manifest
/// says so, or, for a bare file without one, its name does.
pub fn is_directory(manifest: Option<&Manifest>, data_key: &str) -> bool {
    match manifest {
        Some(m) => match m.format {
            Format::Directory => true,
            Format::Custom | Format::Tar => false,
        },
        None => data_key.contains(".tar"),
    }
}

/// Resolve `spec` (a name, `latest`, or a path to a `.dump` or `.tar` file) in `storage`.
/// `open_dir` opens local storage for a file path's directory.
pub async fn resolve(
    storage: &Arc<dyn Storage>,
    spec: &str,
    database: &str,
    open_dir: impl Fn(&Path) -> Result<Arc<dyn Storage>>,
) -> Result<Resolved> {
    if spec == "latest" {
        let cat = scan(storage.as_ref()).await?;
        let entry = cat.latest(Some(database)).ok_or_else(|| {
            Error::NotFound(format!(
                "no backup of database {database:?} in {}",
                storage.url()
            ))
        })?;
        let name = entry.manifest.name.clone();
        entry.manifest.check_names(&name)?;
        return Ok(Resolved {
            name,
            storage: storage.clone(),
            data_key: entry.manifest.object.clone(),
            manifest: Some(entry.manifest.clone()),
        });
    }
    let looks_like_path = spec.contains('/')
        || crate::name::DATA_SUFFIXES
            .iter()
            .any(|suffix| spec.ends_with(suffix));
    if !looks_like_path {
        crate::name::validate(spec)?;
        let key = Manifest::key_for(spec);
        let manifest = match get_bytes(storage.as_ref(), &key).await {
            Ok(b) => Manifest::from_json(&b)?,
            Err(Error::NotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "backup {spec:?} in {} (see `kaizen-backup list`)",
                    storage.url()
                )));
            }
            Err(e) => return Err(e),
        };
        manifest.check_names(spec)?;
        return Ok(Resolved {
            name: spec.to_string(),
            storage: storage.clone(),
            data_key: manifest.object.clone(),
            manifest: Some(manifest),
        });
    }
    // A file path: the old scripts' `restore.sh backups/backup_X.dump`.
    let path = Path::new(spec);
    if !path.is_file() {
        if !spec.contains('/') {
            return Err(Error::NotFound(format!(
                "backup file {spec} (a name ending in {} is taken as a file path, and backup names never end in one; see `kaizen-backup list` for names)",
                crate::name::DATA_SUFFIXES.join(" ")
            )));
        }
        return Err(Error::NotFound(format!("backup file {spec}")));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| Error::usage(format!("not a usable file name: {spec}")))?
        .to_string();
    let dir_storage = open_dir(&dir)?;
    let stem = file
        .strip_suffix(".age")
        .unwrap_or(&file)
        .trim_end_matches(".zst")
        .trim_end_matches(".dump")
        .trim_end_matches(".tar")
        .to_string();
    let manifest = match get_bytes(dir_storage.as_ref(), &Manifest::key_for(&stem)).await {
        Ok(b) => {
            let m = Manifest::from_json(&b)?;
            if m.object == file {
                m.check_names(&stem)?;
            }
            (m.object == file).then_some(m)
        }
        Err(_) => None,
    };
    Ok(Resolved {
        name: stem,
        storage: dir_storage,
        data_key: file,
        manifest,
    })
}
