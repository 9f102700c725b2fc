//! The event sinks of the configuration (`[events]`), built for the server's
//! dispatchers: the NATS JetStream publisher and job queue when a broker is
//! configured, each webhook subscription, and the in-process job runner when
//! no broker is; and the workers that take jobs from the broker's queue, in
//! `kastell serve` (`events.jobs.worker_in_serve`) or `kastell worker`.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::service::events::jobs::JobsSink;
use crate::service::events::nats::{Broker, NatsSink};
use crate::service::events::webhook::WebhookSink;
use crate::service::events::{self, EventStatus, Sink};
use crate::service::tenants::Tenants;

/// The broker the configuration names (`events.nats.url`), if any.
pub fn broker(config: &Config) -> Option<Arc<Broker>> {
    (!config.events.nats.url.is_empty()).then(|| Arc::new(Broker::new(&config.events.nats)))
}

/// Every sink `config` asks for, on `broker` (see [`broker`]).
pub fn build_sinks(
    config: &Config,
    broker: Option<&Arc<Broker>>,
) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(broker) = broker {
        sinks.push(Arc::new(NatsSink::new(broker.clone())));
    }
    sinks.push(Arc::new(JobsSink::new(
        broker.cloned(),
        &config.events.jobs,
    )));
    sinks.extend(webhook_sinks(config)?);
    Ok(sinks)
}

/// One sink per `[[events.webhooks]]` subscription; refuses to start on a
/// secret file that cannot be read, a key shorter than 16 bytes or a CA file
/// without certificates.
pub fn webhook_sinks(config: &Config) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    config
        .events
        .webhooks
        .iter()
        .map(|hook| {
            let sink = WebhookSink::new(hook).context("a webhook subscription cannot start")?;
            Ok(Arc::new(sink) as Arc<dyn Sink>)
        })
        .collect()
}

/// Starts the server's events: the dispatchers of every sink and, with a
/// broker and `events.jobs.worker_in_serve`, a worker (whose lifecycle jobs
/// are audited in `audit`).
pub fn start(
    config: &Config,
    tenants: Arc<Tenants>,
    audit: &crate::audit::AuditLog,
) -> anyhow::Result<EventStatus> {
    let broker = broker(config);
    let sinks = build_sinks(config, broker.as_ref())?;
    let status = events::start(tenants.clone(), &config.events, sinks);
    if let Some(broker) = broker {
        if config.events.jobs.worker_in_serve {
            tokio::spawn(events::worker::run(
                broker,
                tenants,
                config.events.jobs.clone(),
                Some(Arc::new(super::lifecycle::AuditedLifecycle(audit.clone()))),
            ));
        }
    }
    Ok(status)
}

/// `kastell worker`: runs jobs from the broker's queue until SIGTERM or
/// SIGINT. Refuses to start without a broker, and against the jurisdiction
/// policy (jobs write derived objects of the tenants' data).
pub async fn run_worker(config: Config) -> anyhow::Result<()> {
    let Some(broker) = broker(&config) else {
        anyhow::bail!(
            "kastell worker takes jobs from a broker: set events.nats.url \
             (without one, `kastell serve` runs the jobs itself)"
        );
    };
    super::enforce_sovereignty(&config).context("kastell worker refuses to start")?;
    let services = super::build_services(&config)?;
    // Lifecycle jobs are audited, in the control index's chained trail.
    let chain_key =
        crate::audit::ChainKey::load_or_create(&services.index, services.store.keys().masters())?;
    let audit = crate::audit::AuditLog::start(services.index.clone(), chain_key);
    let tenants = Arc::new(Tenants::new(
        services,
        &config.keys.default_tenant,
        &config.effective_index_url(),
        super::index_options(config.index.pool_size, &config),
    ));
    tracing::info!(
        broker = %crate::redact::redact_url(&config.events.nats.url),
        concurrency = config.events.jobs.concurrency,
        "kastell worker is taking jobs"
    );
    let worker = tokio::spawn(events::worker::run(
        broker,
        tenants,
        config.events.jobs.clone(),
        Some(Arc::new(super::lifecycle::AuditedLifecycle(audit.clone()))),
    ));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Jobs in flight are not acknowledged: the broker gives them to another
    // worker after ack_wait.
    worker.abort();
    if let Err(error) = audit.flush().await {
        tracing::error!(%error, "the audit trail could not be flushed at exit");
    }
    tracing::info!("kastell worker stopped");
    Ok(())
}
