//! `kastell serve` (the default) and `kastell config`, which prints the
//! configuration `serve` would run with.

use std::net::SocketAddr;

use super::startup::{start, Logging, Start};
use super::CommonArgs;

pub fn serve(common: &CommonArgs, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let started = start(
        common,
        Start {
            listen,
            logging: Logging::Server,
            writes: None,
        },
    )?;
    let served = actix_web::rt::System::new().block_on(kastell::app::run(started.config));
    // After the runtime: flushing blocks until the exporters' threads are done.
    if let Some(telemetry) = started.telemetry {
        telemetry.shutdown();
    }
    served
}

pub fn print_config(common: &CommonArgs, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let started = start(
        common,
        Start {
            listen,
            logging: Logging::Off,
            writes: None,
        },
    )?;
    print!("{}", started.config.to_redacted_toml());
    Ok(())
}
