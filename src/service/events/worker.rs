//! The workers: jobs taken from the broker's work queue through one durable
//! pull consumer all workers share (`events.nats.jobs_consumer`), so that the
//! work spreads over every worker process started (`kastell worker`, and
//! `kastell serve` unless `events.jobs.worker_in_serve` is off).
//!
//! A worker asks for a job only when one of its `events.jobs.concurrency`
//! slots is free, acknowledges a job only once it is done (and recorded in the
//! tenant's `jobs_done`), tells the broker it is still working on a long one
//! (in-progress acknowledgements, every half `ack_wait`), and answers a failed
//! one with a delayed negative acknowledgement: it is delivered again, to this
//! worker or another. A worker that dies holds its jobs unacknowledged; the
//! broker gives them to another worker after `ack_wait`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::jobs::{self, Job};
use super::nats::Broker;
use crate::config::JobsConfig;
use crate::service::lifecycle::LifecycleLog;
use crate::service::tenants::Tenants;
use crate::telemetry::metrics;

/// How long one request for a job waits for one before asking again (a
/// waiting request costs the broker nothing; a lost connection shows sooner,
/// as missing heartbeats).
const PULL_EXPIRES: Duration = Duration::from_secs(120);
/// The broker's heartbeat while a request for a job waits.
const PULL_HEARTBEAT: Duration = Duration::from_secs(15);

/// Runs jobs from the work queue for as long as the process runs, reconnecting
/// (and creating the stream and consumer when missing) after a failure.
/// Lifecycle jobs record what they did in `audit`.
pub async fn run(
    broker: Arc<Broker>,
    tenants: Arc<Tenants>,
    config: JobsConfig,
    audit: Option<Arc<dyn LifecycleLog>>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    loop {
        let error = match consumer(&broker, &config).await {
            Ok(consumer) => take_jobs(&consumer, &tenants, &config, &slots, &audit).await,
            Err(error) => error,
        };
        broker.forget_streams().await;
        tracing::warn!(%error, "events: the job queue is not reachable; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The workers' durable consumer, created (with its stream) when missing.
async fn consumer(broker: &Broker, config: &JobsConfig) -> Result<PullConsumer, String> {
    let js = broker.jetstream().await?;
    let spec = broker.jobs_stream();
    broker.ensure_stream(&js, &spec).await?;
    let stream = js
        .get_stream(&spec.name)
        .await
        .map_err(|e| format!("NATS stream {}: {e}", spec.name))?;
    let name = broker.config().jobs_consumer.clone();
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(config.ack_wait_secs),
                max_deliver: config.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("NATS consumer {name}: {e}"))
}

/// Asks for one job whenever a slot is free and runs it in the slot; returns
/// why it stopped (the connection failed).
async fn take_jobs(
    consumer: &PullConsumer,
    tenants: &Arc<Tenants>,
    config: &JobsConfig,
    slots: &Arc<Semaphore>,
    audit: &Option<Arc<dyn LifecycleLog>>,
) -> String {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return "the worker's slots were closed".into();
        };
        let mut batch = match consumer
            .batch()
            .max_messages(1)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(error) => return format!("asking for a job: {error}"),
        };
        let mut slot = Some(slot);
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => {
                    let Some(slot) = slot.take() else {
                        // More than asked for: leave it to its redelivery.
                        continue;
                    };
                    let (tenants, config) = (tenants.clone(), config.clone());
                    let audit = audit.clone();
                    tokio::spawn(async move {
                        handle(message, &tenants, &config, audit.as_deref()).await;
                        drop(slot);
                    });
                }
                Err(error) => return format!("receiving a job: {error}"),
            }
        }
    }
}

/// Runs one job and answers the broker.
async fn handle(
    message: async_nats::jetstream::Message,
    tenants: &Tenants,
    config: &JobsConfig,
    audit: Option<&dyn LifecycleLog>,
) {
    let delivery = message.info().map(|info| info.delivered).unwrap_or(1);
    let job: Job = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(%error, subject = %message.subject, "events: a job that is not one; dropped");
            metrics::job_ran("unknown", "invalid");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let services = match tenants.get(&job.tenant).await {
        Ok(services) => services,
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "events: the job's tenant is not available");
            let _ = message
                .ack_with(AckKind::Nak(Some(retry_delay(delivery))))
                .await;
            return;
        }
    };
    // Tell the broker, every half ack_wait, that the job is still running.
    let every = Duration::from_secs(config.ack_wait_secs).max(Duration::from_secs(1)) / 2;
    let outcome = {
        let work = jobs::run(&services, &job, delivery, audit);
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                _ = ticker.tick() => {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%error, "events: an in-progress acknowledgement failed");
                    }
                }
            }
        }
    };
    match outcome {
        Ok(outcome) => {
            tracing::debug!(job = %job.id, ?outcome, delivery, "events: job finished");
            // Double ack: the broker confirms it, so a lost ack is retried
            // here rather than after ack_wait on another worker.
            if let Err(error) = message.double_ack().await {
                tracing::warn!(job = %job.id, %error, "events: a finished job could not be acknowledged (it will be delivered again and skipped)");
            }
        }
        Err(error) => {
            tracing::warn!(job = %job.id, delivery, %error, "events: a job failed; it will be delivered again");
            let _ = message
                .ack_with(AckKind::Nak(Some(retry_delay(delivery))))
                .await;
        }
    }
}

/// The wait before a failed job is delivered again: 5 s, doubled each time,
/// at most 5 minutes.
fn retry_delay(delivery: i64) -> Duration {
    super::exponential_backoff(
        u32::try_from(delivery).unwrap_or(u32::MAX),
        Duration::from_secs(5),
        Duration::from_secs(300),
    )
}
