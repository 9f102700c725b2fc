//! `kastell worker`: takes jobs from the broker's work queue (precomputing a
//! stable study's metadata and thumbnails…) until SIGTERM or SIGINT. Same
//! configuration and flags as `serve`; start as many as the work needs.

use super::startup::{start, Logging, Start};
use super::CommonArgs;

pub fn worker(common: &CommonArgs) -> anyhow::Result<()> {
    let started = start(
        common,
        Start {
            listen: None,
            logging: Logging::Server,
            writes: None,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let worked = runtime.block_on(kastell::app::events::run_worker(started.config));
    drop(runtime);
    // After the runtime: flushing blocks until the exporters' threads are done.
    if let Some(telemetry) = started.telemetry {
        telemetry.shutdown();
    }
    worked
}
