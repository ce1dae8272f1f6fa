//! Check `roles`: the roles object beside a logical backup is there, its checksum equals
//! the manifest's and (with the key) it reads back.

use std::time::Instant;

use async_trait::async_trait;
use backup_core::catalog::Resolved;
use backup_core::codec::DecryptKeys;
use backup_core::{CheckResult, Error, Result, Verifier, VerifyContext};

use crate::result;

/// Reads the roles object; skipped (no result) for a backup that records none.
pub struct RolesCheck {
    /// Decrypt and parse it too (not in `--quick`, which has no key).
    pub read: bool,
    /// Keys for an encrypted backup.
    pub keys: DecryptKeys,
}

impl std::fmt::Debug for RolesCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolesCheck")
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Verifier for RolesCheck {
    fn name(&self) -> &'static str {
        "roles"
    }

    async fn verify(&self, ctx: &VerifyContext) -> Result<Vec<CheckResult>> {
        let started = Instant::now();
        let Some(info) = ctx.manifest.as_ref().and_then(|m| m.roles.clone()) else {
            return Ok(Vec::new());
        };
        let passwords = if info.passwords {
            "password hashes included"
        } else {
            "no password hashes (the backup role could not read them): created roles get no password"
        };
        let fail = |why: String| Ok(vec![result("roles", false, why, started)]);
        let resolved = Resolved {
            name: ctx.name.clone(),
            storage: ctx.storage.clone(),
            data_key: ctx.data_key.clone(),
            manifest: ctx.manifest.clone(),
        };
        // Read once: the checksum always, the content with the key.
        let stored = match backup_core::restore::read_roles_object(&resolved).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Vec::new()),
            Err(Error::NotFound(_)) => {
                return fail(format!("roles object {} is missing", info.object));
            }
            Err(e) => return fail(e.to_string()),
        };
        if self.read {
            match backup_core::restore::decode_roles(&resolved, stored, &self.keys).await {
                Ok(set) if set.roles.len() == info.count => {}
                Ok(set) => {
                    return fail(format!(
                        "{} holds {} roles, the manifest says {}",
                        info.object,
                        set.roles.len(),
                        info.count
                    ));
                }
                Err(e @ Error::Refused(_)) => return Err(e),
                Err(e) => return fail(e.to_string()),
            }
        }
        Ok(vec![result(
            "roles",
            true,
            format!("{} roles recorded, {passwords}", info.count),
            started,
        )])
    }
}
