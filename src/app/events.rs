//! The event sinks of the configuration (`[events]`), built for the server's
//! dispatchers: the NATS JetStream publisher and job queue when a broker is
//! configured, each webhook subscription, and the in-process job runner when
//! no broker is.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::service::events::webhook::WebhookSink;
use crate::service::events::Sink;

/// Every sink `config` asks for.
pub fn build_sinks(config: &Config) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
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
