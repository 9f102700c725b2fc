//! Retrieval from offline tiers (issue 15). An instance whose object sits in an
//! offline tier (S3 Glacier Flexible Retrieval, Deep Archive) is read only once
//! restored. A retrieval that needs one that is not asks for the restore of its
//! whole study (a viewer opens studies, not instances) and is answered 503 with
//! `Retry-After` and a `Warning`; the restores proceed in the background (the
//! store's work), the server's poll ([`poll`]) notices when each is done, and
//! retrieval serves the study as if it had never left. Search, metadata (kept
//! in the index) and thumbnails (built in the hot store before an instance
//! goes offline, see `tiering`) never wait for a restore.
//!
//! The journal (`index/restores.rs`) is what retrieval reads: one lookup per
//! request, no request to the store. Restores cost money, so one tenant has at
//! most `lifecycle.restore.max_pending_objects` objects waiting.
//!
//! This module also notes the day each study was last retrieved, for move
//! rules on the time since (only when such a rule exists).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use super::{ServiceError, Services, StoredInstance};
use crate::index::restores::BlobRestore;
use crate::store::{BlobKey, RestoreState};
use crate::telemetry::metrics;

/// Restores checked per poll, at most.
const CHECKS_PER_POLL: i64 = 10_000;

/// Where the restore a retrieval waits for stands, for the answer's Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// This request started it.
    Started,
    /// Started before, still under way.
    InProgress,
    /// The tenant has as many objects waiting as it may: none was started.
    QueueFull,
}

/// Now, in ms since the epoch: the lifecycle clock (`lifecycle.now`, which
/// tests move) or the system's.
pub(super) fn now_ms(services: &Services) -> i64 {
    let now = services
        .settings
        .lifecycle
        .fixed_now()
        .unwrap_or_else(SystemTime::now);
    to_ms(now).unwrap_or(0)
}

fn to_ms(time: SystemTime) -> Option<i64> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// The offline objects among `instances`, with their study.
fn offline_objects(services: &Services, instances: &[StoredInstance]) -> Vec<(String, String)> {
    if !services.store.has_offline_stores() {
        return Vec::new();
    }
    instances
        .iter()
        .filter(|i| BlobKey::parse(&i.blob_key).is_ok_and(|key| services.store.is_offline(&key)))
        .map(|i| (i.blob_key.clone(), i.study_instance_uid.clone()))
        .collect()
}

/// What a retrieval of `keys` waiting for restores is told to wait, in seconds.
fn retry_after_secs(services: &Services, keys: &[&String]) -> u64 {
    keys.iter()
        .filter_map(|k| BlobKey::parse(k).ok())
        .filter_map(|k| services.store.restore_retry_after(&k))
        .max()
        .unwrap_or(Duration::from_secs(super::OUTAGE_RETRY_AFTER_SECS))
        .as_secs()
        .max(1)
}

/// Ok when every instance of `instances` can be read now; else asks for the
/// restore of their studies (unless it is under way) and says how long to wait.
pub async fn ensure_readable(
    services: &Services,
    instances: &[StoredInstance],
) -> Result<(), ServiceError> {
    let offline = offline_objects(services, instances);
    if offline.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = offline.iter().map(|(k, _)| k.clone()).collect();
    let rows = services
        .with_index(move |index| index.restores_of(&keys))
        .await?;
    let now = now_ms(services);
    let rows: BTreeMap<&str, &BlobRestore> =
        rows.iter().map(|r| (r.blob_key.as_str(), r)).collect();
    let waiting: Vec<&(String, String)> = offline
        .iter()
        .filter(|(key, _)| !rows.get(key.as_str()).is_some_and(|r| r.is_ready(now)))
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    // Never asked for, or restored and expired since.
    let unrequested = waiting
        .iter()
        .any(|(key, _)| rows.get(key.as_str()).is_none_or(|r| r.state == "ready"));
    let retry_after_secs = retry_after_secs(
        services,
        &waiting.iter().map(|(k, _)| k).collect::<Vec<_>>(),
    );
    let mut state = Waiting::InProgress;
    if unrequested {
        let studies: BTreeSet<String> = waiting.iter().map(|(_, s)| s.clone()).collect();
        for study in studies {
            let asked = request_study(services, &study, false).await?;
            if asked.queue_full {
                state = Waiting::QueueFull;
            } else if asked.journaled > 0 && state != Waiting::QueueFull {
                state = Waiting::Started;
            }
        }
    }
    Err(ServiceError::Archived {
        retry_after_secs,
        state,
    })
}

/// `result`, unless it failed on an object in an offline tier that was not
/// restored: then the restore of its study is asked for (as by
/// [`ensure_readable`]) and the answer says so.
pub async fn when_archived<T>(
    services: &Services,
    instances: &[StoredInstance],
    result: Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    match result {
        Err(ServiceError::Store(crate::store::StoreError::Archived)) => {
            // A journal that says "ready" for an object the store says is not
            // is stale (the restored copy expired early): forgotten, asked again.
            let offline = offline_objects(services, instances);
            let keys: Vec<String> = offline.into_iter().map(|(k, _)| k).collect();
            services
                .with_index(move |index| keys.iter().try_for_each(|key| index.forget_restore(key)))
                .await?;
            ensure_readable(services, instances).await?;
            Err(ServiceError::Store(crate::store::StoreError::Archived))
        }
        other => other,
    }
}

/// What asking for a study's restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StudyRestore {
    /// The study's instances in offline tiers.
    pub offline: usize,
    /// Restores journaled now (the others were journaled before).
    pub journaled: usize,
    /// None journaled: the tenant's queue of waiting restores is full.
    pub queue_full: bool,
}

/// Asks for the restore of every instance of `study` in an offline tier that
/// is not restored or being restored. The requests to the store are sent in
/// the background, or before returning when `wait`.
pub async fn request_study(
    services: &Services,
    study: &str,
    wait: bool,
) -> Result<StudyRestore, ServiceError> {
    let scope = super::Scope::Study {
        study: study.to_string(),
    };
    let instances = services
        .with_index(move |index| index.instances(&scope))
        .await?;
    let offline = offline_objects(services, &instances);
    let mut result = StudyRestore {
        offline: offline.len(),
        ..Default::default()
    };
    if offline.is_empty() {
        return Ok(result);
    }
    let limit = services.settings.lifecycle.restore.max_pending_objects;
    let waiting = services
        .with_index(|index| index.restores_waiting())
        .await?;
    if u64::try_from(waiting).unwrap_or(0) + offline.len() as u64 > limit {
        result.queue_full = true;
        tracing::warn!(
            %study, waiting, limit,
            "a restore was not started: lifecycle.restore.max_pending_objects reached"
        );
        return Ok(result);
    }
    let now = now_ms(services);
    let journaled = services
        .with_index(move |index| index.journal_restores(&offline, now))
        .await?;
    result.journaled = journaled.len();
    let tenant = services.store.tenant().to_string();
    metrics::restores_requested(&tenant, journaled.len() as u64);
    let send = send_requests(services.clone(), journaled);
    if wait {
        send.await;
    } else {
        tokio::spawn(send);
    }
    Ok(result)
}

/// Asks the store for each journaled restore of `keys` and records what it
/// says; a request that fails stays `requested` for the next poll to send.
async fn send_requests(services: Services, keys: Vec<String>) {
    let concurrency = services.settings.lifecycle.restore.concurrency.max(1);
    futures_util::stream::iter(keys)
        .for_each_concurrent(concurrency, |key| {
            let services = services.clone();
            async move {
                let Ok(blob) = BlobKey::parse(&key) else {
                    return;
                };
                let result = services.store.request_restore(&blob).await;
                record(&services, &key, result).await;
            }
        })
        .await;
}

/// Records where a restore stands after the store answered.
async fn record(
    services: &Services,
    key: &str,
    answer: Result<RestoreState, crate::store::StoreError>,
) -> Outcome {
    let now = now_ms(services);
    let key_owned = key.to_string();
    let (update, outcome) = match answer {
        Ok(RestoreState::Restored { until }) => {
            (Some(("ready", until.and_then(to_ms))), Outcome::Ready)
        }
        Ok(RestoreState::InProgress) => (Some(("pending", None)), Outcome::Waiting),
        // Readable without a restore (not in an archive class: a move in
        // place not finished yet): readable as long as the row stands.
        Ok(RestoreState::Online) => (Some(("ready", None)), Outcome::Ready),
        // Gone: nothing to wait for.
        Err(crate::store::StoreError::NotFound) => (None, Outcome::Ready),
        // The restore was lost (or its copy expired): asked again by the poll.
        Ok(RestoreState::Archived) => (Some(("requested", None)), Outcome::Waiting),
        Err(error) => {
            tracing::warn!(blob = %key, %error, "a restore could not be asked for or checked; the next poll tries again");
            (Some(("requested", None)), Outcome::Failed)
        }
    };
    let written = services
        .with_index(move |index| match update {
            Some((state, until)) => index.set_restore_state(&key_owned, state, until, now),
            None => index.forget_restore(&key_owned),
        })
        .await;
    if let Err(error) = written {
        tracing::warn!(blob = %key, %error, "a restore's state could not be recorded");
    }
    outcome
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ready,
    Waiting,
    Failed,
}

/// What one poll found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollReport {
    pub checked: u64,
    pub ready: u64,
    pub waiting: u64,
    pub failed: u64,
    /// Journal rows removed: restored copies expired, objects gone.
    pub pruned: u64,
}

/// Checks the tenant's restores not ready yet (asks again for those the store
/// lost), archives again what was restored and whose time is up, and prunes
/// the journal.
pub async fn poll(services: &Services) -> Result<PollReport, ServiceError> {
    let now = now_ms(services);
    // Restored copies whose time is up go back to the archive (Azure; S3
    // expires them itself), then their rows are pruned.
    let expired = services
        .with_index(move |index| index.expired_restores(now, CHECKS_PER_POLL))
        .await?;
    let mut pruned = 0;
    for row in expired {
        let Ok(key) = BlobKey::parse(&row.blob_key) else {
            continue;
        };
        match services.store.rearchive(&key).await {
            Ok(()) | Err(crate::store::StoreError::NotFound) => {
                let key = row.blob_key.clone();
                services
                    .with_index(move |index| index.forget_restore(&key))
                    .await?;
                pruned += 1;
            }
            Err(error) => {
                tracing::warn!(blob = %key, %error, "a restored object could not be archived again; the next poll tries again")
            }
        }
    }
    pruned += services.with_index(|index| index.prune_restores()).await?;
    let rows = services
        // Every restore not ready, the least recently checked first (not by the
        // lifecycle clock, which tests move).
        .with_index(move |index| index.restores_to_check(i64::MAX, CHECKS_PER_POLL))
        .await?;
    let mut report = PollReport {
        pruned: pruned as u64,
        checked: rows.len() as u64,
        ..Default::default()
    };
    let concurrency = services.settings.lifecycle.restore.concurrency.max(1);
    let outcomes: Vec<Outcome> = futures_util::stream::iter(rows)
        .map(|row| {
            let services = services.clone();
            async move {
                let Ok(blob) = BlobKey::parse(&row.blob_key) else {
                    return Outcome::Failed;
                };
                let answer = if row.state == "requested" {
                    services.store.request_restore(&blob).await
                } else {
                    match services.store.restore_state(&blob).await {
                        Ok(RestoreState::Archived) => services.store.request_restore(&blob).await,
                        other => other,
                    }
                };
                record(&services, &row.blob_key, answer).await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for outcome in outcomes {
        match outcome {
            Outcome::Ready => report.ready += 1,
            Outcome::Waiting => report.waiting += 1,
            Outcome::Failed => report.failed += 1,
        }
    }
    let waiting = services
        .with_index(|index| index.restores_waiting())
        .await?;
    metrics::restores_waiting(services.store.tenant(), waiting);
    Ok(report)
}

/// Notes that the studies of `instances` were retrieved today, when a move
/// rule looks at the time since (at most one write per study and day: the
/// days already noted are remembered). Done before the answer, so that a pass
/// started right after it sees it; a failure is logged, not the request's.
pub async fn note_retrieved(services: &Services, instances: &[StoredInstance]) {
    if !services.settings.lifecycle_uses_retrieval {
        return;
    }
    let today = super::retention::today(&services.settings.lifecycle)
        .format("%Y%m%d")
        .to_string();
    let tenant = services.store.tenant().to_string();
    let studies: BTreeSet<&str> = instances
        .iter()
        .map(|i| i.study_instance_uid.as_str())
        .collect();
    let fresh: Vec<String> = studies
        .into_iter()
        .filter(|study| {
            services
                .settings
                .retrievals
                .first_today(&tenant, study, &today)
        })
        .map(str::to_string)
        .collect();
    if fresh.is_empty() {
        return;
    }
    if let Err(error) = services
        .with_index(move |index| index.mark_retrieved(&fresh, &today))
        .await
    {
        tracing::warn!(%error, "the day of a study's retrieval could not be noted");
    }
}

/// The studies noted as retrieved on a day, per tenant, so that retrievals
/// write each at most once a day. Bounded: forgotten whole when full (a
/// forgotten study costs one more conditional UPDATE that changes nothing).
#[derive(Debug, Default)]
pub struct RetrievalMarks {
    noted: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

/// Studies remembered, at most.
const MAX_MARKS: usize = 100_000;

impl RetrievalMarks {
    /// Whether `study` of `tenant` was not noted on `day` yet (and notes it).
    fn first_today(&self, tenant: &str, study: &str, day: &str) -> bool {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_string(), study.to_string());
        if noted.get(&key).is_some_and(|d| d == day) {
            return false;
        }
        if noted.len() >= MAX_MARKS {
            noted.clear();
        }
        noted.insert(key, day.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_study_is_noted_once_a_day() {
        let marks = RetrievalMarks::default();
        assert!(marks.first_today("t", "1.2", "20261204"));
        assert!(!marks.first_today("t", "1.2", "20261204"));
        assert!(marks.first_today("u", "1.2", "20261204"));
        assert!(marks.first_today("t", "1.2", "20261205"));
    }
}
