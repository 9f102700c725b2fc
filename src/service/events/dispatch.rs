//! The loops behind the events: per tenant, one that announces studies gone
//! quiet, and one per sink that takes the sink's lease, reads the feed beyond
//! its cursor, delivers, and moves the cursor — retrying with backoff, or
//! dead-lettering where the sink gives up.
//!
//! The cursor in the index is a checkpoint: the loop moves it at most every
//! [`CHECKPOINT_EVERY`] while deliveries succeed (at once when one fails), so
//! that a busy feed costs the index one write per checkpoint rather than one
//! per batch. A process that dies loses the progress since its last
//! checkpoint: whoever takes the sink over delivers those changes again (at
//! least once; events carry their id for deduplication).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{EventStatus, Sink, SinkView, Stopped, TenantRef, CHANGED};
use crate::config::EventsConfig;
use crate::index::changes::epoch_ms;
use crate::service::tenants::Tenants;
use crate::telemetry::metrics;

/// How often at most a sink's cursor is written while deliveries succeed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How often the list of tenants is read again.
const TENANTS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    poll: Duration,
    batch: i64,
    lease: Duration,
    stable_after: Option<Duration>,
    /// Identifies this process's leases.
    owner: String,
}

impl Settings {
    pub(super) fn from_config(config: &EventsConfig) -> Self {
        Self {
            poll: Duration::from_millis(config.poll_interval_ms),
            batch: i64::from(config.batch),
            lease: Duration::from_secs(config.lease_secs),
            stable_after: (config.stable_after_secs > 0)
                .then(|| Duration::from_secs(config.stable_after_secs)),
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        }
    }
}

/// Starts the loops of every tenant, and of tenants registered later.
pub(super) async fn run(
    tenants: Arc<Tenants>,
    settings: Settings,
    sinks: Vec<Arc<dyn Sink>>,
    status: EventStatus,
) {
    let mut started = HashSet::new();
    loop {
        match tenants.all().await {
            Ok(all) => {
                for (name, services) in all {
                    if !started.insert(name.clone()) {
                        continue;
                    }
                    let tenant = TenantRef { name, services };
                    match settings.stable_after {
                        Some(quiet) => {
                            tokio::spawn(announce_stable(tenant.clone(), quiet, settings.poll));
                        }
                        None => {
                            tokio::spawn(forget_settling(tenant.clone()));
                        }
                    }
                    for sink in sinks.iter().filter(|s| s.serves(&tenant.name)) {
                        tokio::spawn(deliver(
                            tenant.clone(),
                            sink.clone(),
                            settings.clone(),
                            status.clone(),
                        ));
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "events: the tenants could not be listed"),
        }
        tokio::time::sleep(TENANTS_EVERY).await;
    }
}

/// Writes a "study-stable" change for each study of `tenant` quiet for `quiet`.
async fn announce_stable(tenant: TenantRef, quiet: Duration, poll: Duration) {
    // Quiet times are seconds: looking more often than every quarter second
    // would only load the index.
    let every = poll.max(Duration::from_millis(250));
    loop {
        let quiet_since = epoch_ms() - quiet.as_millis() as i64;
        match tenant
            .services
            .with_index(move |index| index.announce_stable_studies(quiet_since, 100))
            .await
        {
            Ok(0) => tokio::time::sleep(every).await,
            // More may be due: look again at once.
            Ok(_) => super::changes_committed(),
            Err(error) => {
                tracing::warn!(tenant = %tenant.name, %error, "events: stable studies could not be announced");
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// With stable-study announcements off, forgets the studies STOW marked as
/// settling, every minute.
async fn forget_settling(tenant: TenantRef) {
    loop {
        let before = epoch_ms();
        if let Err(error) = tenant
            .services
            .with_index(move |index| index.forget_settling_before(before))
            .await
        {
            tracing::warn!(tenant = %tenant.name, %error, "events: settling studies could not be forgotten");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// Delivers `tenant`'s changes to `sink`, for as long as the process runs.
async fn deliver(tenant: TenantRef, sink: Arc<dyn Sink>, settings: Settings, status: EventStatus) {
    let name = sink.name().to_string();
    // Failed attempts of the change at the head of the cursor.
    let mut attempts: HashMap<i64, u32> = HashMap::new();
    let mut last_error: Option<String> = None;
    // The lease this loop holds and the cursor it moved, while it holds one.
    let mut held: Option<Held> = None;
    loop {
        // Registered before the feed is read: a commit after the read still wakes us.
        let woken = CHANGED.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let step = step(
            &tenant,
            sink.as_ref(),
            &settings,
            &mut attempts,
            &mut last_error,
            &mut held,
        )
        .await;
        if !matches!(step, Ok(Step::Idle { .. } | Step::Progress { .. })) {
            // Read the cursor again (and take the lease) before the next batch.
            held = None;
        }
        match step {
            Ok(Step::Idle { backlog }) => {
                status.set(
                    &tenant.name,
                    &name,
                    SinkView {
                        backlog,
                        error: last_error.clone(),
                    },
                );
                let _ = tokio::time::timeout(settings.poll, woken).await;
            }
            Ok(Step::Progress { backlog }) => {
                status.set(
                    &tenant.name,
                    &name,
                    SinkView {
                        backlog,
                        error: last_error.clone(),
                    },
                );
            }
            Ok(Step::Failed { backlog, wait }) => {
                status.set(
                    &tenant.name,
                    &name,
                    SinkView {
                        backlog,
                        error: last_error.clone(),
                    },
                );
                // Keep the lease while waiting, so that another process does
                // not start over in the middle of the backoff.
                sleep_holding_lease(&tenant, &name, &settings, wait).await;
            }
            Ok(Step::NotOurs) => {
                // Another process delivers; look again when its lease may have run out.
                tokio::time::sleep(settings.lease / 2).await;
            }
            Err(error) => {
                tracing::warn!(tenant = %tenant.name, sink = %name, %error, "events: the feed could not be read");
                tokio::time::sleep(settings.poll.max(Duration::from_secs(1))).await;
            }
        }
    }
}

/// A lease of this process on the sink, as last taken or renewed, the
/// sink's cursor as delivered (`cursor`) and as last written to the index
/// (`saved`): while more than half the lease is left, a step reads the feed
/// without writing to the index first.
#[derive(Debug, Clone, Copy)]
struct Held {
    cursor: i64,
    saved: i64,
    saved_at: std::time::Instant,
    until_ms: i64,
}

enum Step {
    /// Nothing beyond the cursor.
    Idle { backlog: u64 },
    /// A batch went out.
    Progress { backlog: u64 },
    /// A delivery failed: try again after `wait`.
    Failed { backlog: u64, wait: Duration },
    /// Another process holds the lease.
    NotOurs,
}

async fn step(
    tenant: &TenantRef,
    sink: &dyn Sink,
    settings: &Settings,
    attempts: &mut HashMap<i64, u32>,
    last_error: &mut Option<String>,
    held: &mut Option<Held>,
) -> Result<Step, crate::service::ServiceError> {
    let name = sink.name().to_string();
    let owner = settings.owner.clone();
    let start = sink.start();
    let lease_ms = settings.lease.as_millis() as i64;
    let batch = settings.batch;
    let lookup = (name.clone(), owner.clone());
    let before = *held;
    let still_held = before.filter(|h| h.until_ms - epoch_ms() > lease_ms / 2);
    let read = tenant
        .services
        .with_index(move |index| {
            let lease = match still_held {
                Some(held) => held,
                None => {
                    let now = epoch_ms();
                    let Some(saved) =
                        index.take_sink_lease(&lookup.0, &lookup.1, now, now + lease_ms, start)?
                    else {
                        return Ok(None);
                    };
                    // Renewed: what was delivered since the checkpoint stays
                    // delivered, unless someone else moved the cursor.
                    let cursor = match before {
                        Some(held) if held.saved == saved => held.cursor,
                        _ => saved,
                    };
                    Held {
                        cursor,
                        saved,
                        saved_at: before.map_or_else(std::time::Instant::now, |h| h.saved_at),
                        until_ms: now + lease_ms,
                    }
                }
            };
            let changes = index.changes_after(lease.cursor, batch)?;
            let latest = index.latest_change()?;
            Ok(Some((lease, changes, latest)))
        })
        .await?;
    let Some((lease, changes, latest)) = read else {
        return Ok(Step::NotOurs);
    };
    let cursor = lease.cursor;
    *held = Some(lease);
    let Some(last) = changes.last().map(|c| c.seq) else {
        if lease.cursor > lease.saved
            && lease.saved_at.elapsed() >= CHECKPOINT_EVERY
            && !checkpoint(tenant, &name, &owner, held).await?
        {
            return Ok(Step::NotOurs);
        }
        return Ok(Step::Idle { backlog: 0 });
    };
    // A delivery may outlast the lease (a slow webhook receiver, up to its
    // timeout per event): renewed meanwhile, so that no other process starts
    // delivering the same changes.
    let result = holding_lease(tenant, &name, settings, sink.deliver(tenant, &changes)).await;
    let (delivered_to, failure) = match result {
        Ok(()) => (last, None),
        Err(Stopped { delivered, error }) => {
            let delivered = delivered.min(changes.len());
            let to = if delivered == 0 {
                cursor
            } else {
                changes[delivered - 1].seq
            };
            (
                to,
                Some((changes[delivered.min(changes.len() - 1)].seq, error)),
            )
        }
    };
    metrics::events_delivered(&name, "delivered", (delivered_to - cursor) as u64);
    *held = Some(Held {
        cursor: delivered_to,
        ..lease
    });
    // A failure is written at once (dead letters start from the cursor).
    if (failure.is_some() || lease.saved_at.elapsed() >= CHECKPOINT_EVERY)
        && !checkpoint(tenant, &name, &owner, held).await?
    {
        // The lease went to another process meanwhile: it repeats what we did.
        return Ok(Step::NotOurs);
    }
    let Some((failed_seq, error)) = failure else {
        attempts.clear();
        *last_error = None;
        return Ok(Step::Progress {
            backlog: (latest - delivered_to).max(0) as u64,
        });
    };
    metrics::events_delivered(&name, "failed", 1);
    tracing::warn!(tenant = %tenant.name, sink = %name, seq = failed_seq, %error, "events: a delivery failed");
    let count = {
        let count = attempts.entry(failed_seq).or_insert(0);
        *count += 1;
        *count
    };
    attempts.retain(|seq, _| *seq == failed_seq);
    *last_error = Some(error.clone());
    if sink.max_attempts().is_some_and(|max| count >= max) {
        let (name, owner, reason) = (name.clone(), owner.clone(), error.clone());
        let dead = tenant
            .services
            .with_index(move |index| {
                index.dead_letter(&name, &owner, failed_seq, count as i32, &reason)
            })
            .await?;
        if dead {
            metrics::events_delivered(sink.name(), "dead_lettered", 1);
            tracing::error!(tenant = %tenant.name, sink = %sink.name(), seq = failed_seq, attempts = count, %error,
                "events: gave up on an event (dead letter; see `kastell events status`)");
        }
        attempts.clear();
        // The cursor moved past the dead letter (or another process has the
        // sink): read it again.
        *held = None;
        return Ok(Step::Progress {
            backlog: (latest - failed_seq).max(0) as u64,
        });
    }
    let (name, reason) = (name.clone(), error);
    tenant
        .services
        .with_index(move |index| index.sink_failed(&name, &reason))
        .await?;
    Ok(Step::Failed {
        backlog: (latest - delivered_to).max(0) as u64,
        wait: sink.backoff(count),
    })
}

/// Writes the delivered cursor of `held` to the index, if it moved; `false`
/// when the sink is no longer this process's.
async fn checkpoint(
    tenant: &TenantRef,
    name: &str,
    owner: &str,
    held: &mut Option<Held>,
) -> Result<bool, crate::service::ServiceError> {
    let Some(lease) = *held else {
        return Ok(true);
    };
    if lease.cursor == lease.saved {
        return Ok(true);
    }
    let (name, owner) = (name.to_string(), owner.to_string());
    let moved = tenant
        .services
        .with_index(move |index| index.advance_sink(&name, &owner, lease.saved, lease.cursor))
        .await?;
    *held = moved.then(|| Held {
        saved: lease.cursor,
        saved_at: std::time::Instant::now(),
        ..lease
    });
    Ok(moved)
}

/// Sleeps `wait`, renewing the sink's lease every third of it.
async fn sleep_holding_lease(tenant: &TenantRef, sink: &str, settings: &Settings, wait: Duration) {
    holding_lease(tenant, sink, settings, tokio::time::sleep(wait)).await;
}

/// Runs `work`, renewing the sink's lease every third of it meanwhile (renewals
/// stop once the lease went to another process: `advance_sink` then refuses).
async fn holding_lease<T>(
    tenant: &TenantRef,
    sink: &str,
    settings: &Settings,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut held = true;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(settings.lease / 3), if held => {
                held = renew_lease(tenant, sink, settings).await;
            }
        }
    }
}

/// Renews the sink's lease; `false` when another process holds it now.
async fn renew_lease(tenant: &TenantRef, sink: &str, settings: &Settings) -> bool {
    let (name, owner) = (sink.to_string(), settings.owner.clone());
    let lease_ms = settings.lease.as_millis() as i64;
    let renewed = tenant
        .services
        .with_index(move |index| {
            let now = epoch_ms();
            index.take_sink_lease(
                &name,
                &owner,
                now,
                now + lease_ms,
                crate::index::changes::SinkStart::Beginning,
            )
        })
        .await;
    matches!(renewed, Ok(Some(_)))
}
