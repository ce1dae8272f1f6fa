//! A logical backup's roles object (`NAME.roles.json[.age]`): read with its checksum
//! proven, decrypted, parsed; and the roles the server lacks created from it.

use bytes::Bytes;
use futures::StreamExt;
use tokio_postgres::Client;

use super::{RestoreOptions, RolesMode};
use crate::catalog::Resolved;
use crate::error::{Error, Result};
use crate::storage::ByteStream;

/// Read a backup's roles object and check it against the manifest's checksum; `None`
/// for a backup that has none (older backups, bare files).
pub async fn read_roles_object(resolved: &Resolved) -> Result<Option<Bytes>> {
    let Some(info) = resolved.manifest.as_ref().and_then(|m| m.roles.as_ref()) else {
        return Ok(None);
    };
    let stored = crate::storage::get_bytes(resolved.storage.as_ref(), &info.object).await?;
    let (sha, size) = crate::util::digest_bytes(&stored);
    if sha != info.sha256 || size != info.size_bytes {
        return Err(Error::Corrupt(format!(
            "checksum mismatch for {}: {size} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
            info.object, info.size_bytes, info.sha256
        )));
    }
    Ok(Some(stored))
}

/// Read a backup's roles object (checksum checked, decrypted with `keys`); `None` for a
/// backup that has none (older backups, bare files).
pub async fn load_roles(
    resolved: &Resolved,
    keys: &crate::codec::DecryptKeys,
) -> Result<Option<crate::pg::roles::RoleSet>> {
    match read_roles_object(resolved).await? {
        Some(stored) => decode_roles(resolved, stored, keys).await.map(Some),
        None => Ok(None),
    }
}

/// Decrypt (with `keys`) and parse a roles object [`read_roles_object`] returned.
pub async fn decode_roles(
    resolved: &Resolved,
    stored: Bytes,
    keys: &crate::codec::DecryptKeys,
) -> Result<crate::pg::roles::RoleSet> {
    let Some(m) = &resolved.manifest else {
        return Err(Error::usage(
            "a roles object is read through its backup's manifest",
        ));
    };
    let plain: Vec<u8> = match m.encryption {
        crate::manifest::Encryption::Age => {
            let stream: ByteStream = Box::pin(futures::stream::once(async move { Ok(stored) }));
            let mut decoded = crate::codec::age_decode(stream, keys, &m.recipients)?;
            let mut out = Vec::new();
            while let Some(chunk) = decoded.next().await {
                out.extend_from_slice(&chunk?);
            }
            out
        }
        crate::manifest::Encryption::None => stored.to_vec(),
    };
    crate::pg::roles::RoleSet::from_json(&plain)
}

/// Create the roles of `opts.roles` the server lacks (`restore.roles = missing`), after
/// checking the restoring role may. Returns the created ones.
pub async fn create_missing_roles(
    admin: &mut Client,
    opts: &RestoreOptions,
) -> Result<Vec<String>> {
    let Some(set) = opts
        .roles
        .as_ref()
        .filter(|_| opts.settings.roles == RolesMode::Missing)
    else {
        return Ok(Vec::new());
    };
    let missing = crate::pg::roles::missing(admin, set).await?;
    crate::pg::roles::check_can_create(admin, &missing).await?;
    crate::pg::roles::create_missing(admin, set, &missing).await
}
