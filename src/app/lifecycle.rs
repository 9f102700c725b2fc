//! The server's lifecycle schedule (issue 15): every
//! `lifecycle.pass.interval_secs` a `lifecycle-pass` job per tenant (erasure
//! of expired studies where `erase_expired` is on, then one pass of its move
//! rules, each audited: `service::lifecycle`), and every
//! `lifecycle.restore.poll_secs`, when a store is an offline tier, a
//! `restore-poll` job per tenant. With a broker the jobs go to its work queue
//! (whichever worker takes one runs it; every server submits the same job id
//! for a period, so the queue's deduplication and `jobs_done` leave one run);
//! without one, the server runs them itself. Either way each object's move is
//! claimed in the tenant's index (`index/moves.rs`), so none is moved twice.
//! Also counts each tenant's objects per store for `/metrics`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::audit::{Action, ActorKind, AuditEvent, AuditLog, Outcome};
use crate::config::Config;
use crate::service::events::jobs::{self, Job, LIFECYCLE_PASS, RESTORE_POLL};
use crate::service::events::nats::Broker;
use crate::service::lifecycle::{LifecycleAction, LifecycleEntry, LifecycleLog};
use crate::service::tenants::Tenants;

/// The scheduled lifecycle work's entries, in the audit trail: the server's
/// own work (actor kind `system`).
pub struct AuditedLifecycle(pub AuditLog);

#[async_trait]
impl LifecycleLog for AuditedLifecycle {
    async fn record(&self, entry: LifecycleEntry) {
        let action = match entry.action {
            LifecycleAction::Erased => Action::Delete,
            LifecycleAction::Moved => Action::LifecycleMove,
        };
        let outcome = if entry.success {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut event = AuditEvent::new(
            "kastell lifecycle",
            ActorKind::System,
            entry.tenant.clone(),
            action,
            outcome,
        )
        .detail(entry.detail);
        event.study_uid = entry.study;
        if let Err(error) = self.0.record(event).await {
            tracing::error!(%error, tenant = %entry.tenant, "the audit record of a lifecycle action could not be written");
        }
    }
}

/// Every `every`, a job of `kind` per tenant: to the broker's queue, or run here.
fn schedule(
    kind: &'static str,
    every: Duration,
    tenants: Arc<Tenants>,
    broker: Option<Arc<Broker>>,
    audit: Arc<dyn LifecycleLog>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let period = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / every.as_secs().max(1));
            let all = match tenants.all().await {
                Ok(all) => all,
                Err(error) => {
                    tracing::warn!(%error, kind, "lifecycle: the tenants could not be listed");
                    continue;
                }
            };
            match &broker {
                Some(broker) => {
                    let due = all
                        .iter()
                        .map(|(tenant, _)| Job::scheduled(kind, tenant, period))
                        .collect();
                    if let Err(error) = jobs::submit(broker, due).await {
                        tracing::warn!(%error, kind, "lifecycle: jobs could not be submitted; next period");
                    }
                }
                None => {
                    for (tenant, services) in all {
                        let job = Job::scheduled(kind, &tenant, period);
                        if let Err(error) = jobs::run(&services, &job, 1, Some(&*audit)).await {
                            tracing::warn!(%error, %tenant, kind, "lifecycle: a scheduled job failed");
                        }
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

/// Starts the lifecycle schedule when the configuration asks for it, and the
/// counts of objects per store.
pub fn start(config: &Config, tenants: Arc<Tenants>, audit: AuditLog) {
    start_usage_counts(config, tenants.clone());
    let broker = super::events::broker(config);
    let audit: Arc<dyn LifecycleLog> = Arc::new(AuditedLifecycle(audit));
    if config.lifecycle.pass.interval_secs > 0 {
        schedule(
            LIFECYCLE_PASS,
            Duration::from_secs(config.lifecycle.pass.interval_secs),
            tenants.clone(),
            broker.clone(),
            audit.clone(),
        );
    }
    if config.storage.stores.values().any(|s| s.is_offline()) {
        schedule(
            RESTORE_POLL,
            Duration::from_secs(config.lifecycle.restore.poll_secs),
            tenants,
            broker,
            audit,
        );
    }
}
