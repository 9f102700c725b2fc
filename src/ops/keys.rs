//! Tenant key life cycle from the command line, each audited: rotation (new key
//! version, data keys re-wrapped), retirement of a superseded version, and
//! crypto-shredding (every key destroyed, the index erased down to UIDs).

use crate::app::build_tenants;
use crate::audit::{Action, AuditEvent, Outcome};
use crate::config::Config;
use crate::crypto::KeyId;
use crate::index::changes::ChangeAction;
use crate::service::Services;

use super::audit::audit_cli;

/// What `kastell keys rotate` did.
#[derive(Debug)]
pub struct RotationReport {
    pub new_key: KeyId,
    pub rewrapped: usize,
    pub already_current: usize,
    /// Metadata records in the index re-wrapped (see `store::record`).
    pub records_rewrapped: usize,
    /// De-identification project secrets re-wrapped.
    pub projects_rewrapped: usize,
    pub failed: Vec<(String, String)>,
}

/// Makes a new tenant key version and re-wraps the data key of every object of the
/// tenant under it (new headers, the same encrypted segments). Audited.
pub async fn rotate_tenant_key(config: &Config, tenant: &str) -> anyhow::Result<RotationReport> {
    let tenants = build_tenants(config)?;
    // The audit trail, like the keys, lives in the control index.
    let control = tenants.default_services().clone();
    let result = async {
        let services = tenants.get(tenant).await?;
        rotate_with(&services, &control, tenant).await
    }
    .await;
    let event = match &result {
        Ok(report) => {
            let (outcome, status) = if report.failed.is_empty() {
                (Outcome::Success, 0)
            } else {
                (Outcome::Failure, 1)
            };
            AuditEvent::cli(tenant, Action::KeyRotate, outcome)
                .status(status)
                .detail(format!(
                    "new key {}; {} data keys re-wrapped, {} already current, {} metadata records re-wrapped, {} de-identification project secrets re-wrapped, {} failed",
                    report.new_key,
                    report.rewrapped,
                    report.already_current,
                    report.records_rewrapped,
                    report.projects_rewrapped,
                    report.failed.len()
                ))
        }
        Err(error) => AuditEvent::cli(tenant, Action::KeyRotate, Outcome::Failure)
            .status(1)
            .detail(format!("{error:#}")),
    };
    audit_cli(config, &control.index, event, result)
}

async fn rotate_with(
    services: &Services,
    control: &Services,
    tenant: &str,
) -> anyhow::Result<RotationReport> {
    let store = services.store.for_tenant(tenant);
    let new_key = store.keys().rotate(tenant)?;
    let blobs = services.index.all_blobs()?;
    let mut report = RotationReport {
        new_key,
        rewrapped: 0,
        already_current: 0,
        records_rewrapped: 0,
        projects_rewrapped: 0,
        failed: Vec::new(),
    };
    for (name, _) in blobs {
        let outcome = match crate::store::BlobKey::parse(&name) {
            Ok(key) => store.rewrap(&key).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(true) => report.rewrapped += 1,
            Ok(false) => report.already_current += 1,
            Err(error) => report.failed.push((name, error)),
        }
    }
    rewrap_metadata_records(services, &store, &mut report).await?;
    // De-identification project secrets are wrapped by the tenant key too.
    report.projects_rewrapped =
        crate::service::deid::rewrap_projects(services, &report.new_key).await?;
    // And in the tenant's change feed, for the systems that follow it.
    services.index.record_tenant_change(
        ChangeAction::KeyRotated,
        Some(serde_json::json!({
            "keyVersion": report.new_key.version,
            "dataKeysRewrapped": report.rewrapped,
            "failed": report.failed.len(),
        })),
    )?;
    // Key events live with the keys, in the control index.
    control.index.record_key_event(
        tenant,
        "data-keys-rewrapped",
        Some(format!(
            "{} re-wrapped under {}, {} failed",
            report.rewrapped,
            report.new_key,
            report.failed.len()
        )),
    )?;
    Ok(report)
}

/// Re-wraps the data key of every metadata record in the index (see
/// `store::record`), a page at a time.
async fn rewrap_metadata_records(
    services: &Services,
    store: &crate::store::BlobStore,
    report: &mut RotationReport,
) -> anyhow::Result<()> {
    for page in metadata_record_pages(services) {
        for record in page? {
            let outcome = match crate::store::BlobKey::parse(&record.blob_key) {
                Ok(key) => store
                    .rewrap_record(&key, &record.sealed)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(Some(sealed)) => {
                    services.index.replace_metadata_record(
                        record.instance_pk,
                        &record.blob_key,
                        sealed,
                    )?;
                    report.records_rewrapped += 1;
                }
                Ok(None) => {}
                Err(error) => report
                    .failed
                    .push((format!("metadata record of {}", record.blob_key), error)),
            }
        }
    }
    Ok(())
}

/// Every metadata record in the index, a page of 500 at a time (never all of
/// them in memory), in key order.
fn metadata_record_pages(
    services: &Services,
) -> impl Iterator<Item = anyhow::Result<Vec<crate::index::MetadataRecord>>> + '_ {
    let mut after = Some(0);
    std::iter::from_fn(move || {
        let from = after?;
        match services.index.metadata_records_after(from, 500) {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                after = page.last().map(|last| last.instance_pk);
                Some(Ok(page))
            }
            Err(error) => {
                after = None;
                Some(Err(error.into()))
            }
        }
    })
}

/// Destroys a superseded key version after checking that no indexed object's header
/// still names it (a rotation re-wraps them all). Returns how many objects were
/// checked. Audited.
pub async fn retire_tenant_key(
    config: &Config,
    tenant: &str,
    version: u32,
) -> anyhow::Result<usize> {
    let tenants = build_tenants(config)?;
    let result = async {
        let services = tenants.get(tenant).await?;
        retire_with(&services, tenant, version).await
    }
    .await;
    let event = match &result {
        Ok(checked) => AuditEvent::cli(tenant, Action::KeyRetire, Outcome::Success)
            .status(0)
            .detail(format!(
                "key version {version} destroyed; {checked} objects checked"
            )),
        Err(error) => AuditEvent::cli(tenant, Action::KeyRetire, Outcome::Failure)
            .status(1)
            .detail(format!("key version {version}: {error:#}")),
    };
    audit_cli(config, &tenants.default_services().index, event, result)
}

async fn retire_with(services: &Services, tenant: &str, version: u32) -> anyhow::Result<usize> {
    let id = KeyId {
        tenant: tenant.to_string(),
        version,
    };
    let mut checked = 0;
    for (name, _) in services.index.all_blobs()? {
        let key = crate::store::BlobKey::parse(&name)?;
        if services.store.key_id_of(&key).await? == id {
            anyhow::bail!(
                "blob {name} is still encrypted under {id}; run `kastell keys rotate` first"
            );
        }
        checked += 1;
    }
    for page in metadata_record_pages(services) {
        for record in page? {
            if crate::store::BlobStore::record_key_id(&record.sealed)? == id {
                anyhow::bail!(
                    "the metadata record of blob {} is still encrypted under {id}; run `kastell keys rotate` first",
                    record.blob_key
                );
            }
            checked += 1;
        }
    }
    for project in services.with_index(|index| index.deid_projects()).await? {
        if project.key_version == i64::from(version) {
            anyhow::bail!(
                "the secret of de-identification project {} is still wrapped under {id}; run `kastell keys rotate` first",
                project.name
            );
        }
        checked += 1;
    }
    services.store.keys().retire(&id)?;
    services.index.record_tenant_change(
        ChangeAction::KeyRetired,
        Some(serde_json::json!({ "keyVersion": version })),
    )?;
    Ok(checked)
}

/// What crypto-shredding a tenant erased.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShredReport {
    pub studies: usize,
    pub instances: usize,
}

/// Crypto-shredding, the erasure path: destroys every key of a tenant, so that
/// its objects (and every copy of them in blob backups) can never be read again,
/// then erases what the index still knew of them — the studies' attributes,
/// patient data included — keeping only their UIDs so that retrieval answers
/// 410 Gone, and removes the unreadable blobs. Running it again finishes an
/// erasure that was interrupted. Refused while any study of the tenant is
/// under retention or a legal hold. Audited.
/// Why tenant `tenant` cannot be shredded now (no such tenant, studies under
/// retention or a legal hold), if it cannot: asked before a dual-control
/// approval is spent on a shredding that would be refused.
pub async fn shred_blocked(config: &Config, tenant: &str) -> anyhow::Result<Option<String>> {
    let tenants = build_tenants(config)?;
    let Some(services) = tenants
        .all()
        .await?
        .into_iter()
        .find_map(|(name, services)| (name == tenant).then_some(services))
    else {
        return Ok(Some(format!("there is no tenant {tenant}")));
    };
    super::lifecycle::shred_refusal(&services, config, tenant).await
}

/// `approved_by` names the second administrator when dual control applied; the
/// event is theirs then.
pub async fn shred_tenant(
    config: &Config,
    tenant: &str,
    approved_by: Option<&str>,
) -> anyhow::Result<ShredReport> {
    let tenants = build_tenants(config)?;
    let result = async {
        let services = tenants
            .all()
            .await?
            .into_iter()
            .find_map(|(name, services)| (name == tenant).then_some(services))
            .ok_or_else(|| anyhow::anyhow!("there is no tenant {tenant}"))?;
        // Retention and legal holds protect studies from shredding as from
        // DELETE: shredding erases them all, so every one must be deletable.
        if let Some(refusal) = super::lifecycle::shred_refusal(&services, config, tenant).await? {
            anyhow::bail!(refusal);
        }
        services.store.keys().shred(tenant)?;
        services.with_index(|index| index.erase_deid()).await?;
        services
            .with_index(|index| index.record_tenant_change(ChangeAction::KeyShredded, None))
            .await?;
        let mut report = ShredReport::default();
        let studies = services.with_index(|index| index.study_uids()).await?;
        for study in studies {
            report.instances +=
                crate::service::delete::delete(&services, crate::service::Scope::Study { study })
                    .await?;
            report.studies += 1;
        }
        anyhow::Ok(report)
    }
    .await;
    let event = |outcome| match approved_by {
        Some(actor) => AuditEvent::new(
            actor.to_string(),
            crate::audit::ActorKind::ApiKey,
            tenant,
            Action::KeyShred,
            outcome,
        ),
        None => AuditEvent::cli(tenant, Action::KeyShred, outcome),
    };
    let event = match &result {
        Ok(report) => event(Outcome::Success).status(0).detail(format!(
            "every key version destroyed; {} studies ({} instances) erased from the index",
            report.studies, report.instances
        )),
        Err(error) => event(Outcome::Failure)
            .status(1)
            .detail(format!("{error:#}")),
    };
    audit_cli(config, &tenants.default_services().index, event, result)
}
