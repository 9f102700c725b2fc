//! The scheduled lifecycle work of one tenant (issue 15), as the jobs
//! `lifecycle-pass` and `restore-poll` run it (`events/jobs.rs`): on a
//! broker's work queue when one is configured (whichever worker takes the
//! job), in the server otherwise. A pass erases the studies whose retention
//! ended (where `erase_expired` is on) and moves what the tenant's rules ask
//! for, each audited; a poll checks the restores from offline tiers.

use crate::audit::{Action, ActorKind, AuditEvent, AuditLog, Outcome};

use super::retention::{erasure_note, expired_studies, RetentionPolicy};
use super::{ServiceError, Services};

/// The actor of the server's own lifecycle work in the audit trail.
const ACTOR: &str = "kastell lifecycle";

/// One scheduled pass for `tenant`: erasure of expired studies (when the
/// tenant's retention says so), then one pass of its move rules. `owner`
/// names the process in its claims.
pub async fn scheduled_pass(
    services: &Services,
    tenant: &str,
    audit: Option<&AuditLog>,
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
    let (outcome, detail) = match &result {
        Ok(report) if report.failed.is_empty() => (
            Outcome::Success,
            format!("scheduled lifecycle pass: {report}"),
        ),
        Ok(report) => (
            Outcome::Failure,
            format!("scheduled lifecycle pass: {report}"),
        ),
        Err(error) => (
            Outcome::Failure,
            format!("scheduled lifecycle pass failed: {error}"),
        ),
    };
    let quiet = matches!(&result, Ok(r) if r.moved == 0 && r.failed.is_empty()
        && r.recovered == 0 && r.held_back == 0 && r.restoring == 0);
    if !quiet {
        let event = AuditEvent::new(
            ACTOR,
            ActorKind::System,
            tenant,
            Action::LifecycleMove,
            outcome,
        )
        .detail(detail);
        record(audit, event, tenant).await;
    }
    result.map(|_| ())
}

/// Erases the tenant's studies whose retention has ended, each audited.
async fn erase_expired(
    services: &Services,
    tenant: &str,
    audit: Option<&AuditLog>,
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
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut event = AuditEvent::new(ACTOR, ActorKind::System, tenant, Action::Delete, outcome)
            .detail(erasure_note(&kept, &result));
        event.study_uid = Some(study);
        record(audit, event, tenant).await;
    }
    Ok(())
}

async fn record(audit: Option<&AuditLog>, event: AuditEvent, tenant: &str) {
    let Some(audit) = audit else {
        tracing::error!(%tenant, detail = ?event.detail, "a lifecycle action ran where no audit trail is open");
        return;
    };
    if let Err(error) = audit.record(event).await {
        tracing::error!(%error, %tenant, "the audit record of a lifecycle action could not be written");
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
