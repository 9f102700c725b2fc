//! Events (issue 14): the change feed every tenant's index keeps (see
//! `index::changes`) delivered to sinks — the NATS JetStream publisher
//! (`nats.rs`), webhook subscriptions (`webhook.rs`), the job dispatcher
//! (`jobs.rs`) — and the "study stable" announcements.
//!
//! The feed is the transactional outbox: a change is numbered and written in
//! the transaction of the change itself, so nothing is announced before it
//! committed, and nothing committed is lost. Each sink keeps a cursor in the
//! tenant's index and a lease, so that one process at a time delivers for it
//! (`dispatch.rs`); a delivery is repeated until it succeeds (at least once:
//! events carry their feed number as id for deduplication), or for sinks that
//! give up, dead-lettered. While a sink cannot deliver (the broker is down),
//! stores go on and its backlog grows, visible in `/readyz` and `/metrics`.

pub mod cloudevent;
mod dispatch;
pub mod jobs;
pub mod nats;
pub mod webhook;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::tenants::Tenants;
use super::Services;
use crate::config::EventsConfig;
use crate::index::changes::{Change, SinkStart};

/// Wakes the sinks of this process when a change was just committed here
/// (other processes' changes are found by polling).
static CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Tells this process's sinks that new changes were committed (STOW, DELETE).
pub fn changes_committed() {
    CHANGED.notify_waiters();
}

/// A tenant as a sink sees it.
#[derive(Clone)]
pub struct TenantRef {
    pub name: String,
    pub services: Services,
}

/// Why a delivery stopped before the end of its batch.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// How many changes at the head of the batch were delivered.
    pub delivered: usize,
    pub error: String,
}

/// Somewhere the changes of the feed go.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The sink's cursor in each tenant's `event_sinks`, and its metrics label.
    fn name(&self) -> &str;
    /// Where the sink starts in a tenant's feed the first time it sees it.
    fn start(&self) -> SinkStart {
        SinkStart::Beginning
    }
    /// Whether the sink takes `tenant`'s changes at all.
    fn serves(&self, _tenant: &str) -> bool {
        true
    }
    /// Deliveries of one change before it is dead-lettered; `None`: retried
    /// until delivered (the backlog grows meanwhile).
    fn max_attempts(&self) -> Option<u32> {
        None
    }
    /// The wait before attempt `attempt + 1` of a change that failed `attempt`
    /// times.
    fn backoff(&self, attempt: u32) -> Duration {
        exponential_backoff(attempt, Duration::from_millis(500), Duration::from_secs(30))
    }
    /// Delivers `changes` of `tenant`, in order (a sink that has nothing to do
    /// for some of them delivers them by skipping them).
    async fn deliver(&self, tenant: &TenantRef, changes: &[Change]) -> Result<(), Stopped>;
}

/// `initial`, doubled for each failed attempt after the first, at most `max`.
pub fn exponential_backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    initial.saturating_mul(factor).min(max)
}

/// What the dispatchers last saw of each (tenant, sink): for `/readyz`.
#[derive(Clone, Default)]
pub struct EventStatus {
    sinks: Arc<Mutex<BTreeMap<(String, String), SinkView>>>,
}

/// One sink of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkView {
    /// Changes after the sink's cursor.
    pub backlog: u64,
    /// Why the last delivery failed, until one succeeds.
    pub error: Option<String>,
}

impl EventStatus {
    fn set(&self, tenant: &str, sink: &str, view: SinkView) {
        crate::telemetry::metrics::events_backlog(tenant, sink, view.backlog);
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.insert((tenant.to_string(), sink.to_string()), view);
    }

    /// Every (tenant, sink) this process delivers for, with its view.
    pub fn snapshot(&self) -> Vec<((String, String), SinkView)> {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Starts the stable-study announcements and a dispatcher per sink for every
/// tenant (tenants registered later are picked up within seconds). Returns
/// the status the dispatchers keep up to date.
pub fn start(
    tenants: Arc<Tenants>,
    config: &EventsConfig,
    sinks: Vec<Arc<dyn Sink>>,
) -> EventStatus {
    let status = EventStatus::default();
    if !config.dispatch {
        return status;
    }
    let settings = dispatch::Settings::from_config(config);
    tokio::spawn(dispatch::run(tenants, settings, sinks, status.clone()));
    status
}

/// One entry of the change feed, as `GET …/changefeed` shows it.
pub use crate::index::changes::Change as FeedEntry;

/// Up to `limit` entries of the tenant's change feed after `after`.
pub async fn changefeed(
    services: &Services,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedEntry>, super::ServiceError> {
    services
        .with_index(move |index| index.changes_after(after, limit))
        .await
}

/// The tenant's latest entry of the change feed (`None` before the first).
pub async fn latest_change(services: &Services) -> Result<Option<FeedEntry>, super::ServiceError> {
    services
        .with_index(|index| {
            let latest = index.latest_change()?;
            Ok(index.changes_after(latest - 1, 1)?.into_iter().next())
        })
        .await
}
