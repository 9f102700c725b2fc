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

/// Adds to `report`, for each tenant (registered, the default one, or with
/// keys), who holds the master key wrapping its keys: the holder as it
/// describes itself (the HSM and KMS are asked), under the jurisdiction the
/// report found for that master, and how many of its keys each master wraps
/// now. Opens the control index and every key holder, but makes nothing: with
/// no SQLite index yet, or a development key not generated yet, there is no
/// tenant key to tell of and nothing is added.
pub fn add_tenant_keys(config: &Config, report: &mut sovereignty::Report) -> anyhow::Result<()> {
    use std::collections::BTreeSet;

    use crate::crypto::KeyProvider;

    if let Some(path) = config.effective_index_url().strip_prefix("sqlite://") {
        if !std::path::Path::new(path).exists() {
            return Ok(());
        }
    }
    if let crate::config::MasterKeySource::Development(path) = config.master_key_source() {
        if !path.exists() {
            return Ok(());
        }
    }
    let index = super::open_index(config)?;
    let custodians = super::custodians(config)?;
    let counts = index.tenant_key_masters()?;
    let mut tenants: BTreeSet<String> = index.tenants()?.into_iter().map(|t| t.name).collect();
    tenants.insert(config.keys.default_tenant.clone());
    tenants.extend(counts.iter().map(|c| c.tenant.clone()));
    for tenant in tenants {
        let master = config
            .keys
            .tenant_masters
            .get(&tenant)
            .unwrap_or(&config.keys.active_master)
            .clone();
        let section = if master == crate::crypto::LOCAL_MASTER {
            "[keys]".to_string()
        } else {
            format!("[keys.masters.{master}]")
        };
        let jurisdiction = report
            .backends
            .iter()
            .find(|b| b.kind == sovereignty::BackendKind::Keys && b.section == section)
            .map(|b| b.jurisdiction.clone())
            .unwrap_or_else(|| {
                report
                    .backend(sovereignty::BackendKind::Keys)
                    .jurisdiction
                    .clone()
            });
        let (provider, holder, extractable) = match custodians.get(&master) {
            Some(custodian) => match custodian.facts() {
                Ok(facts) => (
                    custodian.kind().to_string(),
                    facts.holder,
                    match facts.extractable {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "not stated",
                    }
                    .to_string(),
                ),
                Err(error) => (
                    custodian.kind().to_string(),
                    format!("{} (cannot be asked now: {error})", custodian.describe()),
                    "not stated".to_string(),
                ),
            },
            None => ("?".into(), "not configured".into(), "not stated".into()),
        };
        report.tenant_keys.push(sovereignty::TenantKeyCustody {
            held_by: if config.keys.tenant_masters.contains_key(&tenant) {
                "tenant (its own key: bring your own key)".into()
            } else {
                "operator".into()
            },
            wrapped_keys: counts
                .iter()
                .filter(|c| c.tenant == tenant)
                .map(|c| (c.master_key.clone(), c.keys))
                .collect(),
            tenant,
            master,
            provider,
            holder,
            jurisdiction,
            extractable,
        });
    }
    Ok(())
}
