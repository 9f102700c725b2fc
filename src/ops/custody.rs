//! Master keys from the command line, each audited: making one in its HSM or
//! file (`create-master`), moving every wrapped key to the master the
//! configuration assigns it (`rotate-master`: resumable, one row at a time, a
//! file → HSM migration included), listing what each holder says of its key
//! (`masters`), and retiring a master nothing references (`retire-master`).

use std::time::{Duration, Instant};

use crate::app::{custodians, master_keys, open_index};
use crate::audit::{Action, AuditEvent, Outcome};
use crate::config::Config;
use crate::crypto::KeyId;
use crate::custody::{Holder, KeyFacts};
use crate::index::keys::WrappedKeyRow;
use crate::index::Index;

use super::audit::audit_cli;

/// What `kastell keys rotate-master` did.
#[derive(Debug, Default)]
pub struct MasterRotation {
    pub moved: usize,
    pub already: usize,
    /// Changed by another process between read and write: left as it is now.
    pub raced: usize,
    pub failed: Vec<(String, String)>,
}

/// Which master a wrapped key belongs under now.
fn intended<'a>(masters: &'a crate::crypto::MasterKeys, row: &WrappedKeyRow) -> &'a str {
    if row.tenant.is_empty() {
        masters.active_name()
    } else {
        masters.name_for_tenant(&row.tenant)
    }
}

fn context(row: &WrappedKeyRow) -> Vec<u8> {
    if row.tenant.is_empty() {
        crate::audit::chain::chain_key_context(row.version)
    } else {
        KeyId {
            tenant: row.tenant.clone(),
            version: row.version as u32,
        }
        .wrapping_context()
    }
}

fn label(row: &WrappedKeyRow) -> String {
    if row.tenant.is_empty() {
        "the audit chain key".into()
    } else {
        format!("tenant key {}/{}", row.tenant, row.version)
    }
}

/// Re-wraps every wrapped key (tenant keys, the audit chain key) that is not
/// under the master the configuration assigns it — `keys.active_master`, or
/// the tenant's own in `keys.tenant_masters` — one row at a time: each row is
/// replaced in one statement only if it is still what was read, so a run
/// killed half-way leaves every key wrapped by one master or the other (both
/// readable while both are configured) and running it again finishes the
/// work. At most `rate` keys per second (an HSM may limit its callers).
/// `progress` is told of each key moved. Audited.
pub fn rotate_master(
    config: &Config,
    rate: Option<u32>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<MasterRotation> {
    let index = open_index(config)?;
    let result = (|| {
        let masters = master_keys(config)?;
        let retired = index.retired_masters()?;
        for name in std::iter::once(masters.active_name())
            .chain(masters.tenant_masters().values().map(String::as_str))
        {
            if retired.iter().any(|r| r == name) {
                anyhow::bail!(
                    "master key {name} was retired: keys cannot be moved to it; name another \
                     in keys.active_master / keys.tenant_masters"
                );
            }
        }
        let mut report = MasterRotation::default();
        let pause = rate.map(|per_second| Duration::from_secs(1) / per_second.max(1));
        for row in index.wrapped_keys()? {
            let to = intended(&masters, &row);
            if row.master_key == to {
                report.already += 1;
                continue;
            }
            let started = Instant::now();
            let what = label(&row);
            let context = context(&row);
            let moved = masters
                .unwrap(&row.master_key, &row.wrapped_key, &context)
                .and_then(|key| {
                    let wrapped = masters.wrap(to, &key, &context)?;
                    // Read back before the old wrapping is replaced: a master
                    // that wraps what it cannot open must not cost a key.
                    let check = masters.unwrap(to, &wrapped, &context)?;
                    if check.expose() != key.expose() {
                        return Err(crate::crypto::CryptoError::Integrity(
                            "the new master does not give back the key it wrapped",
                        ));
                    }
                    Ok(wrapped)
                })
                .map_err(anyhow::Error::new)
                .and_then(|wrapped| Ok(index.rewrap_key(&row, &wrapped, to)?));
            match moved {
                Ok(true) => {
                    report.moved += 1;
                    progress(&format!("{what}: {} → {to}", row.master_key));
                }
                Ok(false) => report.raced += 1,
                Err(error) => report.failed.push((what, format!("{error:#}"))),
            }
            if let Some(pause) = pause {
                std::thread::sleep(pause.saturating_sub(started.elapsed()));
            }
        }
        anyhow::Ok(report)
    })();
    let event = match &result {
        Ok(report) => AuditEvent::cli("*", Action::MasterRotate, if report.failed.is_empty() {
            Outcome::Success
        } else {
            Outcome::Failure
        })
        .status(i64::from(!report.failed.is_empty()))
        .detail(format!(
            "{} wrapped keys moved to their master, {} already there, {} changed meanwhile, {} failed",
            report.moved,
            report.already,
            report.raced,
            report.failed.len()
        )),
        Err(error) => AuditEvent::cli("*", Action::MasterRotate, Outcome::Failure)
            .status(1)
            .detail(format!("{error:#}")),
    };
    audit_cli(config, &index, event, result)
}

/// Makes master key `name` where it is configured: a new key inside the HSM
/// (generated there, never extractable) or a new key file (mode 600). Audited.
pub fn create_master(config: &Config, name: &str) -> anyhow::Result<String> {
    let index = open_index(config)?;
    let master = config
        .keys
        .masters
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("there is no master key {name} in keys.masters"))?;
    let result = (|| {
        if let Some(path) = master.url.strip_prefix("file:") {
            let path = std::path::Path::new(path);
            let key = crate::crypto::SecretKey::generate()?;
            crate::private_files::write_new(path, key.expose())?;
            return anyhow::Ok(format!("a new key file {}", path.display()));
        }
        match crate::app::open_master(name, master)? {
            Holder::Pkcs11(hsm) => {
                hsm.create_key()?;
                Ok("a non-extractable AES-256 key generated inside the HSM".to_string())
            }
            _ => anyhow::bail!(
                "a Transit key is made at the KMS (`vault write -f transit/keys/<name>`), \
                 by whoever holds it"
            ),
        }
    })();
    let event = match &result {
        Ok(what) => AuditEvent::cli("*", Action::MasterCreate, Outcome::Success)
            .status(0)
            .detail(format!("master key {name}: {what}")),
        Err(error) => AuditEvent::cli("*", Action::MasterCreate, Outcome::Failure)
            .status(1)
            .detail(format!("master key {name}: {error:#}")),
    };
    audit_cli(config, &index, event, result)
}

/// One master key as `kastell keys masters` and the sovereignty report show it.
#[derive(Debug)]
pub struct MasterSummary {
    pub name: String,
    pub kind: &'static str,
    pub description: String,
    pub active: bool,
    pub tenants: Vec<String>,
    pub references: i64,
    pub retired: bool,
    /// What the holder says of the key, or why it could not be asked.
    pub facts: Result<KeyFacts, String>,
}

/// Every configured master key, what references it and what its holder says.
pub fn masters(config: &Config) -> anyhow::Result<Vec<MasterSummary>> {
    let index = open_index(config)?;
    summaries(config, &index)
}

pub fn summaries(config: &Config, index: &Index) -> anyhow::Result<Vec<MasterSummary>> {
    let retired = index.retired_masters()?;
    let mut out = Vec::new();
    for (name, custodian) in custodians(config)? {
        use crate::crypto::KeyProvider;
        out.push(MasterSummary {
            kind: custodian.kind(),
            description: custodian.describe(),
            active: config.keys.active_master == name,
            tenants: config
                .keys
                .tenant_masters
                .iter()
                .filter(|(_, master)| **master == name)
                .map(|(tenant, _)| tenant.clone())
                .collect(),
            references: index.master_key_references(&name)?,
            retired: retired.contains(&name),
            facts: custodian.facts().map_err(|e| e.to_string()),
            name,
        });
    }
    Ok(out)
}

/// Why master `name` cannot be retired now, if it cannot.
pub fn retire_refusal(
    config: &Config,
    index: &Index,
    name: &str,
) -> anyhow::Result<Option<String>> {
    if config.keys.active_master == name {
        return Ok(Some(format!(
            "master key {name} is keys.active_master: new keys are wrapped by it"
        )));
    }
    if let Some((tenant, _)) = config.keys.tenant_masters.iter().find(|(_, m)| *m == name) {
        return Ok(Some(format!(
            "master key {name} holds the keys of tenant {tenant} (keys.tenant_masters)"
        )));
    }
    let references = index.master_key_references(name)?;
    if references > 0 {
        return Ok(Some(format!(
            "master key {name} still wraps {references} keys: run `kastell keys rotate-master` first"
        )));
    }
    if index.retired_masters()?.iter().any(|r| r == name) {
        return Ok(Some(format!("master key {name} was retired already")));
    }
    Ok(None)
}

/// Retires master `name`: refused while anything references it; the key is
/// destroyed at its holder where Kastell can (an HSM object), and the operator
/// is told what is left to do elsewhere. `actor` is who approved it. Audited.
pub fn retire_master(config: &Config, name: &str, actor: Option<&str>) -> anyhow::Result<String> {
    let index = open_index(config)?;
    let result = (|| {
        if let Some(refusal) = retire_refusal(config, &index, name)? {
            anyhow::bail!(refusal);
        }
        let holder = custodians(config)?
            .remove(name)
            .ok_or_else(|| anyhow::anyhow!("there is no master key {name} configured"))?;
        let detail = match holder.holder() {
            Holder::Pkcs11(hsm) => {
                hsm.destroy_key()?;
                "the key object was destroyed in the HSM".to_string()
            }
            Holder::Local { origin, .. } => format!(
                "nothing references it any more; destroy its copy ({origin}) and remove it from \
                 the configuration"
            ),
            Holder::Transit(_) => "nothing references it any more; delete or disable the key at \
                                   the KMS and remove it from the configuration"
                .to_string(),
        };
        if !index.retire_master(name, &detail)? {
            anyhow::bail!("master key {name} was referenced again meanwhile");
        }
        anyhow::Ok(detail)
    })();
    let event = |outcome| match actor {
        Some(actor) => AuditEvent::new(
            actor.to_string(),
            crate::audit::ActorKind::ApiKey,
            "*",
            Action::MasterRetire,
            outcome,
        ),
        None => AuditEvent::cli("*", Action::MasterRetire, outcome),
    };
    let event = match &result {
        Ok(detail) => event(Outcome::Success)
            .status(0)
            .detail(format!("master key {name} retired: {detail}")),
        Err(error) => event(Outcome::Failure)
            .status(1)
            .detail(format!("master key {name}: {error:#}")),
    };
    audit_cli(config, &index, event, result)
}
