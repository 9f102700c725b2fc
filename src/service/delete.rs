//! Deleting studies, series and instances: index rows first (one transaction, the
//! UIDs remembered so retrieval answers 410), then the blobs.

use super::retention::RetentionPolicy;
use super::{ServiceError, Services};
use crate::service::Scope;
use crate::store::BlobKey;

fn what(scope: &Scope) -> &'static str {
    match scope {
        Scope::Study { .. } => "study",
        Scope::Series { .. } => "series",
        Scope::Instance { .. } => "instance",
    }
}

/// Deletes everything under `scope`, unless a study it touches is under
/// retention or a legal hold (409, nothing deleted; see `service::retention`).
/// A blob whose removal fails is left for `kastell verify` to report as an
/// orphan; the index no longer points at it.
pub async fn delete(services: &Services, scope: Scope) -> Result<usize, ServiceError> {
    let kind = what(&scope);
    let lookup = scope.clone();
    let policy = RetentionPolicy::of(&services.settings.lifecycle, services.store.tenant());
    let blobs = services
        .with_index(move |index| index.delete(&scope, &|studies| policy.check(studies)))
        .await?;
    if blobs.instances.is_empty() {
        let deleted = services
            .with_index(move |index| index.was_deleted(&lookup))
            .await?;
        return Err(if deleted {
            ServiceError::Gone(kind)
        } else {
            ServiceError::NotFound(kind)
        });
    }
    super::events::changes_committed();
    let count = blobs.instances.len();
    for name in blobs.instances.into_iter().chain(blobs.derived) {
        match BlobKey::parse(&name) {
            Ok(key) => {
                if let Err(error) = services.store.delete(&key).await {
                    tracing::warn!(blob = %key, %error, "a deleted instance's blob could not be removed");
                }
            }
            Err(error) => tracing::warn!(%error, "unexpected blob key in the index"),
        }
    }
    Ok(count)
}
