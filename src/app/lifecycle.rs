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

/// Polls every tenant's restores from offline tiers, every
/// `lifecycle.restore.poll_secs`, when a store is an offline tier.
fn start_restore_polls(config: &Config, tenants: Arc<Tenants>) {
    if !config.storage.stores.values().any(|s| s.is_offline()) {
        return;
    }
    let every = Duration::from_secs(config.lifecycle.restore.poll_secs);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Ok(all) = tenants.all().await else {
                continue;
            };
            for (tenant, services) in all {
                match crate::service::restore::poll(&services).await {
                    Ok(report) if report.checked > 0 => tracing::info!(
                        %tenant, checked = report.checked, ready = report.ready,
                        waiting = report.waiting, failed = report.failed,
                        "restores from offline tiers checked"
                    ),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%tenant, %error, "restores from offline tiers could not be checked")
                    }
                }
            }
        }
    });
}

/// Counts every tenant's objects and bytes per store for `/metrics`, every
/// `lifecycle.usage_interval_secs`.
fn start_usage_counts(config: &Config, tenants: Arc<Tenants>) {
    let interval = config.lifecycle.usage_interval_secs;
    if interval == 0 {
        return;
    }
    let classes: std::collections::BTreeMap<String, String> = config
        .storage
        .stores
        .iter()
        .map(|(name, store)| (name.clone(), store.storage_class.clone()))
        .collect();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(interval));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Ok(all) = tenants.all().await else {
                continue;
            };
            for (tenant, services) in all {
                let usage = services.with_index(|index| index.usage_by_store()).await;
                match usage {
                    Ok(usage) => {
                        for store in usage {
                            let class = classes.get(&store.store).map_or("", String::as_str);
                            crate::telemetry::metrics::store_usage(
                                &tenant,
                                &store.store,
                                class,
                                store.objects,
                                store.bytes,
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%tenant, %error, "the objects per store could not be counted")
                    }
                }
            }
        }
    });
}

/// Starts the passes when the configuration asks for them, the polls of
/// restores from offline tiers and the counts of objects per store.
pub fn start(config: &Config, tenants: Arc<Tenants>, audit: AuditLog) {
    start_restore_polls(config, tenants.clone());
    start_usage_counts(config, tenants.clone());
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
