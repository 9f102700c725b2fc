//! The one start-up every command goes through: the configuration with the
//! command-line overrides, then logging (or the server's telemetry), then, for a
//! command that writes, the jurisdiction policy.

use std::net::SocketAddr;

use anyhow::Context;
use kastell::config::{Config, Overrides};
use kastell::telemetry::Telemetry;

use super::CommonArgs;

/// What a command logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// Nothing: the command prints only its own output (`config`, `sovereignty report`).
    Off,
    /// Logs at the configured level on standard error.
    On,
    /// Like `On`, but `info` is lowered to `warn` (`import`: its summary says what
    /// happened to every file; per-file info lines would tear through the progress bar).
    Quiet,
    /// Logs, traces and metrics, exported over OTLP when configured (`serve`).
    Server,
}

/// How a command starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// `--listen` (`serve` and `config` only).
    pub listen: Option<SocketAddr>,
    pub logging: Logging,
    /// For a command that writes personal data or keys, what it does ("migrate
    /// the index"): the jurisdiction policy refuses it, naming every violation,
    /// before anything is opened. `serve` checks the policy itself; commands that
    /// only read, and the erasure paths (retire, shred), are not held back by it.
    pub writes: Option<&'static str>,
}

impl Start {
    /// Logs on standard error; no policy check.
    pub const LOGGED: Start = Start {
        listen: None,
        logging: Logging::On,
        writes: None,
    };

    /// Logs on standard error, and refuses to `what` against the policy.
    pub const fn writing(what: &'static str) -> Start {
        Start {
            writes: Some(what),
            ..Start::LOGGED
        }
    }
}

/// What a started command has: its configuration, and the server's telemetry to
/// flush at the end.
pub struct Started {
    pub config: Config,
    pub telemetry: Option<Telemetry>,
}

/// Loads the configuration (defaults → TOML → environment → `common` and
/// `listen`), starts logging as `how` says, and holds a writing command to the
/// jurisdiction policy.
pub fn start(common: &CommonArgs, how: Start) -> anyhow::Result<Started> {
    let overrides = Overrides {
        listen: how.listen,
        data_dir: common.data_dir.clone(),
        blob_url: common.blob_url.clone(),
        index_url: common.index_url.clone(),
    };
    let mut config = kastell::app::load_config(common.config.as_deref(), &overrides)
        .context("loading the configuration")?;
    let mut telemetry = None;
    match how.logging {
        Logging::Off => {}
        Logging::On => kastell::telemetry::init(&config.log),
        Logging::Quiet => {
            if config.log.level == "info" {
                config.log.level = "warn".into();
            }
            kastell::telemetry::init(&config.log);
        }
        Logging::Server => {
            telemetry = Some(kastell::telemetry::init_server(
                &config.log,
                &config.telemetry,
            )?)
        }
    }
    if let Some(what) = how.writes {
        kastell::app::enforce_sovereignty(&config)
            .map(drop)
            .with_context(|| format!("kastell refuses to {what}"))?;
    }
    Ok(Started { config, telemetry })
}

/// The runtime of a command that does async work.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
