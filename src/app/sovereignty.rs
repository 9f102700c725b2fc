//! The jurisdiction policy at start-up: the report of this configuration in this
//! environment, and the refusal of one that breaks the policy.

use crate::config::Config;
use crate::sovereignty;

/// What the backends' libraries read from the environment to pick their endpoints
/// (object_store's `AWS_*` / `AZURE_*` variables and emulator URL, libpq's `PGHOST`),
/// so that the pure sovereignty check sees the endpoints the backends will use.
fn sovereignty_environment() -> sovereignty::Environment {
    sovereignty::Environment {
        blob_settings: crate::store::environment_settings(),
        azurite_url: std::env::var("AZURITE_BLOB_STORAGE_URL").ok(),
        pg_host: std::env::var("PGHOST").ok(),
    }
}

/// The sovereignty report of this configuration in this environment, violations
/// included (`kastell sovereignty report`).
pub fn sovereignty_report(config: &Config) -> sovereignty::Report {
    sovereignty::assess(config, &sovereignty_environment())
}

/// Holds the configuration to the jurisdiction policy: logs what is undeclared but
/// allowed, and refuses with every violation at once.
pub fn enforce_sovereignty(config: &Config) -> Result<sovereignty::Report, sovereignty::Refusal> {
    let report = sovereignty_report(config);
    let host = report
        .backend(sovereignty::BackendKind::Server)
        .name
        .clone();
    for warning in &report.warnings {
        if warning.backend == host {
            // The embedded default runs here: say it at every start, like the
            // development key, so that nobody mistakes it for a declared setup.
            tracing::warn!(
                "!!! THE LOCATION OF THIS HOST IS UNDECLARED: {}. \
                 `kastell sovereignty report` shows the control chain. !!!",
                warning.message
            );
        } else {
            tracing::warn!(backend = %warning.backend, "{}", warning.message);
        }
    }
    report.into_result().map_err(sovereignty::Refusal)
}
