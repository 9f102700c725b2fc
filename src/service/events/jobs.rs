//! The jobs, and the sink that hands out those that follow changes (sink
//! `jobs`). Kinds: `precompute`, asked for by each "study-stable" change,
//! which builds the study's series metadata and its study and series
//! thumbnails into the derived-object cache, so that the first viewer to open
//! the study finds them ready; and the scheduled lifecycle work of a tenant
//! (issue 15, `service::lifecycle`), `lifecycle-pass` and `restore-poll`,
//! which every server submits once per period under the same id, so that the
//! queue's deduplication and `jobs_done` leave one run per period.
//!
//! With a broker, each job is published to the work-queue stream
//! (`events.nats.jobs_stream`, subject `{jobs_subject_prefix}.{kind}`) and run
//! by whichever worker takes it (`worker.rs`); without one, the sink runs it
//! in-process, right there. Either way a job is recorded in the tenant's
//! `jobs_done` under its id (the change's event id) when finished, so that a
//! redelivery after a worker died acknowledges it without running it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::cloudevent::event_id;
use super::nats::Broker;
use super::{exponential_backoff, Sink, Stopped, TenantRef};
use crate::config::JobsConfig;
use crate::dicom::render::ImageFormat;
use crate::index::changes::{Change, ChangeAction};
use crate::service::{render, wado, Scope, ServiceError, Services};
use crate::telemetry::metrics;

/// The kind of the job a stable study asks for.
pub const PRECOMPUTE: &str = "precompute";
/// A tenant's scheduled lifecycle pass (erasure of expired studies, moves).
pub const LIFECYCLE_PASS: &str = "lifecycle-pass";
/// A tenant's scheduled check of its restores from offline tiers. Not
/// recorded in `jobs_done` (a poll run twice does no harm; one a minute would
/// fill the table).
pub const RESTORE_POLL: &str = "restore-poll";

/// One job, as it travels through the work queue (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub kind: String,
    pub tenant: String,
    pub study: String,
    /// `{tenant}:{seq}` of the change that asked for it: the deduplication id
    /// in the queue and the key of `jobs_done`.
    pub id: String,
}

impl Job {
    /// The job `change` of `tenant` asks for, if any.
    pub fn for_change(tenant: &str, change: &Change, config: &JobsConfig) -> Option<Job> {
        let stable = ChangeAction::parse(&change.action) == Some(ChangeAction::StudyStable);
        if !(stable && config.precompute_on_stable) {
            return None;
        }
        Some(Job {
            kind: PRECOMPUTE.into(),
            tenant: tenant.into(),
            study: change.study_instance_uid.clone()?,
            id: event_id(tenant, change.seq),
        })
    }

    /// The scheduled lifecycle job `kind` of `tenant` for period `period`
    /// (the time divided by the schedule's interval): the same id whichever
    /// server submits it.
    pub fn scheduled(kind: &'static str, tenant: &str, period: u64) -> Job {
        Job {
            kind: kind.into(),
            tenant: tenant.into(),
            study: String::new(),
            id: format!("{tenant}:{kind}:{period}"),
        }
    }

    /// The metrics label of the job's kind.
    pub fn kind_label(&self) -> &'static str {
        [PRECOMPUTE, LIFECYCLE_PASS, RESTORE_POLL]
            .into_iter()
            .find(|kind| *kind == self.kind)
            .unwrap_or("unknown")
    }
}

/// What running a job came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Run and recorded.
    Done,
    /// Recorded before: not run again.
    AlreadyDone,
}

/// Runs `job` on its tenant's `services` unless it was done before, and
/// records it done with its `delivery` count (the how-manyth delivery this
/// is). The caller acknowledges the job once this returns `Ok`. Lifecycle
/// jobs record what they did in `audit`.
pub async fn run(
    services: &Services,
    job: &Job,
    delivery: i64,
    audit: Option<&dyn crate::service::lifecycle::LifecycleLog>,
) -> Result<Outcome, ServiceError> {
    if job.kind == RESTORE_POLL {
        let result = crate::service::lifecycle::restore_poll(services, &job.tenant).await;
        metrics::job_ran(
            job.kind_label(),
            if result.is_ok() { "done" } else { "failed" },
        );
        return result.map(|()| Outcome::Done);
    }
    let id = job.id.clone();
    if services
        .with_index(move |index| index.job_done(&id))
        .await?
    {
        metrics::job_ran(job.kind_label(), "skipped");
        return Ok(Outcome::AlreadyDone);
    }
    let result = match job.kind.as_str() {
        PRECOMPUTE => precompute(services, &job.study).await,
        LIFECYCLE_PASS => {
            let owner = format!("job:{}:{}", std::process::id(), job.id);
            crate::service::lifecycle::scheduled_pass(services, &job.tenant, audit, &owner).await
        }
        other => Err(ServiceError::Task(format!("unknown job kind {other:?}"))),
    };
    if let Err(error) = result {
        metrics::job_ran(job.kind_label(), "failed");
        return Err(error);
    }
    let (id, kind) = (job.id.clone(), job.kind.clone());
    let first = services
        .with_index(move |index| index.record_job_done(&id, &kind, delivery))
        .await?;
    if !first {
        // Two workers ran it at once (one whose ack deadline had passed).
        tracing::info!(job = %job.id, "events: a job was finished twice");
    }
    metrics::job_ran(job.kind_label(), "done");
    Ok(Outcome::Done)
}

/// Builds what a viewer opening `study` asks for first: each series' metadata
/// (as the metadata warmer does) and the default thumbnail of the study and of
/// each series (what `GET …/thumbnail` without parameters or with
/// `Accept: image/*` reads back). A study deleted since has nothing to build.
pub async fn precompute(services: &Services, study: &str) -> Result<(), ServiceError> {
    let scope = Scope::Study {
        study: study.to_string(),
    };
    let instances = services
        .with_index(move |index| index.instances(&scope))
        .await?;
    let series: BTreeMap<String, ()> = instances
        .iter()
        .map(|i| (i.series_instance_uid.clone(), ()))
        .collect();
    for series in series.into_keys() {
        // The instances as the series' own requests find them (their order
        // makes the metadata's etag and picks the thumbnail's image).
        let scope = Scope::Series {
            study: study.to_string(),
            series: series.clone(),
        };
        let lookup = scope.clone();
        let in_series = services
            .with_index(move |index| index.instances(&lookup))
            .await?;
        wado::warm_series(services, in_series.clone()).await?;
        thumbnail(services, &scope, &in_series).await;
    }
    let scope = Scope::Study {
        study: study.to_string(),
    };
    thumbnail(services, &scope, &instances).await;
    Ok(())
}

/// The default thumbnail of `scope`, if it has an image: one that cannot be
/// rendered is left to its first request (which will say why).
async fn thumbnail(services: &Services, scope: &Scope, instances: &[crate::index::StoredInstance]) {
    if render::representative(instances).is_none() {
        return;
    }
    if let Err(error) =
        render::thumbnail(services, scope, instances, None, ImageFormat::Jpeg, None).await
    {
        tracing::info!(?scope, %error, "events: a thumbnail could not be made ahead");
    }
}

/// Hands out the jobs changes ask for (sink `jobs`): to the broker's work
/// queue, or without one, runs them here.
pub struct JobsSink {
    broker: Option<Arc<Broker>>,
    config: JobsConfig,
}

impl JobsSink {
    pub fn new(broker: Option<Arc<Broker>>, config: &JobsConfig) -> Self {
        Self {
            broker,
            config: config.clone(),
        }
    }
}

#[async_trait]
impl Sink for JobsSink {
    fn name(&self) -> &str {
        "jobs"
    }

    /// In-process, a job that keeps failing is given up after
    /// `events.jobs.max_deliver` runs (a dead letter); the queue is published
    /// to until the broker takes it.
    fn max_attempts(&self) -> Option<u32> {
        match self.broker {
            Some(_) => None,
            None => Some(u32::try_from(self.config.max_deliver).unwrap_or(u32::MAX)),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        exponential_backoff(attempt, Duration::from_millis(250), Duration::from_secs(5))
    }

    async fn deliver(&self, tenant: &TenantRef, changes: &[Change]) -> Result<(), Stopped> {
        // Each job with the position of the change that asked for it.
        let jobs: Vec<(usize, Job)> = changes
            .iter()
            .enumerate()
            .filter_map(|(at, change)| {
                Job::for_change(&tenant.name, change, &self.config).map(|job| (at, job))
            })
            .collect();
        match &self.broker {
            Some(broker) => publish(broker, &jobs).await,
            None => {
                for (at, job) in &jobs {
                    if let Err(error) = run(&tenant.services, job, 1, None).await {
                        return Err(Stopped {
                            delivered: *at,
                            error: format!("job {} failed: {error}", job.id),
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

/// Submits `jobs` to the broker's work queue.
pub async fn submit(broker: &Broker, jobs: Vec<Job>) -> Result<(), String> {
    let jobs: Vec<(usize, Job)> = jobs.into_iter().enumerate().collect();
    publish(broker, &jobs)
        .await
        .map_err(|stopped| stopped.error)
}

/// Publishes `jobs` to the work queue; on a failure, the changes delivered are
/// those before the first job not acknowledged.
async fn publish(broker: &Broker, jobs: &[(usize, Job)]) -> Result<(), Stopped> {
    if jobs.is_empty() {
        return Ok(());
    }
    let prefix = &broker.config().jobs_subject_prefix;
    let mut messages = Vec::with_capacity(jobs.len());
    for (_, job) in jobs {
        let payload = serde_json::to_vec(job).map_err(|e| Stopped {
            delivered: 0,
            error: format!("encoding a job: {e}"),
        })?;
        messages.push((
            format!("{prefix}.{}", job.kind),
            job.id.clone(),
            Bytes::from(payload),
        ));
    }
    broker
        .publish_all(&broker.jobs_stream(), messages)
        .await
        .map_err(|stopped| Stopped {
            delivered: jobs
                .get(stopped.delivered)
                .map_or(usize::MAX, |(at, _)| *at),
            error: stopped.error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: &str, seq: i64) -> Change {
        Change {
            seq,
            occurred_at: "2026-12-04T08:00:00.000000Z".into(),
            action: action.into(),
            study_instance_uid: Some("1.2".into()),
            series_instance_uid: None,
            sop_instance_uid: None,
            sop_class_uid: None,
            detail: None,
        }
    }

    #[test]
    fn a_stable_study_asks_for_a_precompute_job_named_after_its_change() {
        let config = JobsConfig::default();
        let job = Job::for_change("north", &change("study-stable", 7), &config).unwrap();
        assert_eq!(
            job,
            Job {
                kind: "precompute".into(),
                tenant: "north".into(),
                study: "1.2".into(),
                id: "north:7".into(),
            }
        );
        let json: serde_json::Value = serde_json::to_value(&job).unwrap();
        assert_eq!(json["id"], "north:7");
        for action in ["created", "replaced", "deleted"] {
            assert_eq!(Job::for_change("north", &change(action, 8), &config), None);
        }
        let off = JobsConfig {
            precompute_on_stable: false,
            ..JobsConfig::default()
        };
        assert_eq!(
            Job::for_change("north", &change("study-stable", 9), &off),
            None
        );
    }
}
