//! The scheduled lifecycle work of one tenant (issue 15), as the jobs
//! `lifecycle-pass` and `restore-poll` run it (`events/jobs.rs`): on a
//! broker's work queue when one is configured (whichever worker takes the
//! job), in the server otherwise. A pass erases the studies whose retention
//! ended (where `erase_expired` is on) and moves what the tenant's rules ask
//! for, each audited; a poll checks the restores from offline tiers.

use async_trait::async_trait;

use super::retention::{erasure_note, expired_studies, RetentionPolicy};
use super::{ServiceError, Services};

/// What the scheduled lifecycle work did, one entry per action, for the audit
/// trail (which the composition root hands in as a [`LifecycleLog`]: the
/// service layer does not write it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEntry {
    pub tenant: String,
    pub action: LifecycleAction,
    pub study: Option<String>,
    pub success: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    /// A study erased after its retention ended.
    Erased,
    /// A pass of the move rules.
    Moved,
}

/// Where the scheduled lifecycle work records what it did.
#[async_trait]
pub trait LifecycleLog: Send + Sync {
    async fn record(&self, entry: LifecycleEntry);
}

/// One scheduled pass for `tenant`: erasure of expired studies (when the
/// tenant's retention says so), then one pass of its move rules. `owner`
/// names the process in its claims.
pub async fn scheduled_pass(
    services: &Services,
    tenant: &str,
    audit: Option<&dyn LifecycleLog>,
    owner: &str,
) -> Result<(), ServiceError> {
    let lifecycle = &services.settings.lifecycle;
    if lifecycle.retention_of(tenant).erase_expired {
        erase_expired(services, tenant, audit).await?;
    }
    let rules = lifecycle.moves_of(tenant);
    if rules.is_empty() {
        return Ok(());
    }
    let today = super::retention::today(lifecycle);
    let result = super::tiering::run_pass(services, rules, today, &lifecycle.pass, owner).await;
    let (success, detail) = match &result {
        Ok(report) => (
            report.failed.is_empty(),
            format!("scheduled lifecycle pass: {report}"),
        ),
        Err(error) => (false, format!("scheduled lifecycle pass failed: {error}")),
    };
    let quiet = matches!(&result, Ok(r) if r.moved == 0 && r.failed.is_empty()
        && r.recovered == 0 && r.held_back == 0 && r.restoring == 0);
    if !quiet {
        let entry = LifecycleEntry {
            tenant: tenant.to_string(),
            action: LifecycleAction::Moved,
            study: None,
            success,
            detail,
        };
        record(audit, entry).await;
    }
    result.map(|_| ())
}

/// Erases the tenant's studies whose retention has ended, each audited.
async fn erase_expired(
    services: &Services,
    tenant: &str,
    audit: Option<&dyn LifecycleLog>,
) -> Result<(), ServiceError> {
    let policy = RetentionPolicy::of(&services.settings.lifecycle, tenant);
    for (study, kept) in expired_studies(services, &policy).await? {
        let result = super::delete::delete(
            services,
            super::Scope::Study {
                study: study.clone(),
            },
        )
        .await;
        let entry = LifecycleEntry {
            tenant: tenant.to_string(),
            action: LifecycleAction::Erased,
            success: result.is_ok(),
            detail: erasure_note(&kept, &result),
            study: Some(study),
        };
        record(audit, entry).await;
    }
    Ok(())
}

async fn record(audit: Option<&dyn LifecycleLog>, entry: LifecycleEntry) {
    match audit {
        Some(audit) => audit.record(entry).await,
        None => tracing::error!(
            tenant = %entry.tenant, detail = %entry.detail,
            "a lifecycle action ran where no audit trail is open"
        ),
    }
}

/// One check of the tenant's restores from offline tiers.
pub async fn restore_poll(services: &Services, tenant: &str) -> Result<(), ServiceError> {
    let report = super::restore::poll(services).await?;
    if report.checked > 0 {
        tracing::info!(
            %tenant, checked = report.checked, ready = report.ready,
            waiting = report.waiting, failed = report.failed,
            "restores from offline tiers checked"
        );
    }
    Ok(())
}
