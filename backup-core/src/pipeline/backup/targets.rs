//! The target checks before anything is written: the backup's name is free on every
//! target (never overwrite), and there is room where the free space is known. An
//! optional target that fails a check (other than a taken name) is left out.

use super::*;

/// Phase: never overwrite: refuse a name that exists (manifest or data) on any target.
/// An optional target that cannot be reached, or lacks space, is left out and returned
/// with the reason as the second value.
pub(super) async fn choose_targets(
    targets: &[Target],
    plan: &Plan,
    name: &str,
    cancel: &CancellationToken,
) -> Result<(Vec<Target>, Vec<(String, String)>)> {
    let mut active: Vec<Target> = Vec::with_capacity(targets.len());
    let mut skipped: Vec<(String, String)> = Vec::new();
    let names = [&plan.manifest_key, &plan.data_key];
    for t in targets {
        let checked = tokio::select! {
            r = precheck(t, &names, name, plan.required_space) => r,
            _ = cancel.cancelled() => return Err(Error::Interrupted("a signal".into())),
        };
        match checked {
            Ok(()) => active.push(t.clone()),
            Err(e) if t.optional && !matches!(e, Error::AlreadyExists(_)) => {
                warn!("Optional target {} left out: {e}", t.storage.url());
                skipped.push((t.storage.url(), e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    if active.is_empty() {
        return Err(Error::other("no storage target is usable for this backup"));
    }
    Ok((active, skipped))
}

/// Checks on one target before anything is written: the name is free, and there is room.
async fn precheck(
    t: &Target,
    keys: &[&String],
    name: &str,
    required_space: Option<u64>,
) -> Result<()> {
    for key in keys {
        if t.storage.head(key).await?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "backup {name:?} already exists in {} ({key}); choose another name",
                t.storage.url()
            )));
        }
    }
    if let Some(required) = required_space
        && let Some(avail) = t.storage.available_space().await?
        && avail < required
    {
        return Err(Error::InsufficientSpace {
            available: human_size(avail),
            required: human_size(required),
            location: t.storage.url(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::{MemoryStorage, Op};

    fn target(store: &MemoryStorage, optional: bool) -> Target {
        Target {
            storage: Arc::new(store.clone()),
            optional,
        }
    }

    fn plan(required_space: Option<u64>) -> Plan {
        Plan {
            directory: false,
            data_key: "b1.dump".into(),
            manifest_key: "b1.manifest.json".into(),
            required_space,
        }
    }

    async fn choose(targets: &[Target], required_space: Option<u64>) -> Result<Vec<String>> {
        let (active, skipped) = choose_targets(
            targets,
            &plan(required_space),
            "b1",
            &CancellationToken::new(),
        )
        .await?;
        assert_eq!(active.len() + skipped.len(), targets.len());
        Ok(active.iter().map(|t| t.storage.url()).collect())
    }

    #[tokio::test]
    async fn a_name_taken_on_any_target_is_refused_even_an_optional_one() {
        for key in ["b1.dump", "b1.manifest.json"] {
            let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
            put_bytes(&b, key, Bytes::from_static(b"old"))
                .await
                .unwrap();
            let err = choose(&[target(&a, false), target(&b, true)], None)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
            assert!(err.to_string().contains("memory://b"), "{err}");
            assert_eq!(&b.object(key).unwrap()[..], b"old");
        }
    }

    #[tokio::test]
    async fn an_unusable_optional_target_is_left_out_and_a_required_one_fails() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        b.fail(Op::Head, "");
        let active = choose(&[target(&a, false), target(&b, true)], None)
            .await
            .unwrap();
        assert_eq!(active, ["memory://a"]);
        let err = choose(&[target(&a, false), target(&b, false)], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        let err = choose(&[target(&b, true)], None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no storage target is usable for this backup"
        );
    }

    #[tokio::test]
    async fn space_is_checked_only_when_asked_and_where_known() {
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        a.set_available_space(Some(100));
        // `b` cannot tell (an object store): never refused for space.
        let both = [target(&a, false), target(&b, false)];
        assert_eq!(choose(&both, Some(100)).await.unwrap().len(), 2);
        assert_eq!(choose(&both, None).await.unwrap().len(), 2);
        let err = choose(&both, Some(101)).await.unwrap_err();
        assert!(matches!(err, Error::InsufficientSpace { .. }), "{err}");
        let active = choose(&[target(&a, true), target(&b, false)], Some(101))
            .await
            .unwrap();
        assert_eq!(active, ["memory://b"]);
    }
}
