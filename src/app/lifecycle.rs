//! The server's scheduled lifecycle passes (issue 15): every
//! `lifecycle.pass.interval_secs`, per tenant, the erasure of studies whose
//! retention ended (where `erase_expired` is on) and one pass of its move
//! rules, each audited. Several servers may run them at once: each object's move is claimed
//! in the tenant's index (`index/moves.rs`), so none is moved twice.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Action, ActorKind, AuditEvent, AuditLog, Outcome};
use crate::config::Config;
use crate::service::tenants::Tenants;

/// Erases the tenant's studies whose retention has ended, each audited.
async fn erase_expired(
    services: &crate::service::Services,
    tenant: &str,
    lifecycle: &crate::config::LifecycleConfig,
    audit: &AuditLog,
) {
    use crate::service::retention::{erasure_note, expired_studies, RetentionPolicy};
    let policy = RetentionPolicy::of(lifecycle, tenant);
    let expired = match expired_studies(services, &policy).await {
        Ok(expired) => expired,
        Err(error) => {
            tracing::warn!(%error, %tenant, "the studies whose retention ended could not be listed");
            return;
        }
    };
    for (study, kept) in expired {
        let result = crate::service::delete::delete(
            services,
            crate::service::Scope::Study {
                study: study.clone(),
            },
        )
        .await;
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut event = AuditEvent::new(
            "kastell lifecycle",
            ActorKind::System,
            tenant,
            Action::Delete,
            outcome,
        )
        .detail(erasure_note(&kept, &result));
        event.study_uid = Some(study);
        if let Err(error) = audit.record(event).await {
            tracing::error!(%error, %tenant, "the audit record of an erasure could not be written");
        }
    }
}

/// Starts the passes when the configuration asks for them.
pub fn start(config: &Config, tenants: Arc<Tenants>, audit: AuditLog) {
    let interval = config.lifecycle.pass.interval_secs;
    if interval == 0 {
        return;
    }
    let lifecycle = config.lifecycle.clone();
    let owner = format!(
        "server:{}:{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(interval));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let all = match tenants.all().await {
                Ok(all) => all,
                Err(error) => {
                    tracing::warn!(%error, "lifecycle pass: the tenants could not be listed");
                    continue;
                }
            };
            for (tenant, services) in all {
                if lifecycle.retention_of(&tenant).erase_expired {
                    erase_expired(&services, &tenant, &lifecycle, &audit).await;
                }
                let rules = lifecycle.moves_of(&tenant);
                if rules.is_empty() {
                    continue;
                }
                let today = crate::service::retention::today(&lifecycle);
                let result = crate::service::tiering::run_pass(
                    &services,
                    rules,
                    today,
                    &lifecycle.pass,
                    &owner,
                )
                .await;
                let (outcome, detail) = match &result {
                    Ok(report) => (
                        if report.failed.is_empty() {
                            Outcome::Success
                        } else {
                            Outcome::Failure
                        },
                        format!("scheduled lifecycle pass: {report}"),
                    ),
                    Err(error) => (
                        Outcome::Failure,
                        format!("scheduled lifecycle pass failed: {error}"),
                    ),
                };
                let quiet = matches!(&result, Ok(r) if r.moved == 0 && r.failed.is_empty() && r.recovered == 0);
                if quiet {
                    continue;
                }
                let event = AuditEvent::new(
                    "kastell lifecycle",
                    ActorKind::System,
                    tenant.clone(),
                    Action::LifecycleMove,
                    outcome,
                )
                .detail(detail);
                if let Err(error) = audit.record(event).await {
                    tracing::error!(%error, %tenant, "the audit record of a lifecycle pass could not be written");
                }
            }
        }
    });
}
